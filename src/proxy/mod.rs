//! The request path: [`forward`] (route → pick → connect → send → stream), the retry rule and
//! error classification.

pub mod attempt;
pub mod error;
pub mod forward;
pub mod headers;
pub mod outcome;
pub mod relay;
pub mod request;
pub mod response;
pub mod retry;
