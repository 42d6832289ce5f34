//! The request path: [`forward`] (route → pick → connect → send → stream) and the retry rule.
//! The cause vocabulary they speak is [`crate::cause`].

pub mod attempt;
pub mod forward;
pub mod framing;
pub mod headers;
pub mod hedge;
pub mod outcome;
pub mod relay;
pub mod request;
pub mod response;
pub mod retry;
pub mod tunnel;
pub mod upgrade;
