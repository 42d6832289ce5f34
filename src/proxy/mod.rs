//! The request path: [`forward`] (route → pick → connect → send → stream), the retry rule and
//! error classification.

pub mod error;
pub mod retry;
