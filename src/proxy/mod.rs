//! The request path: [`forward`] (route → pick → connect → send → stream) and the retry rule.
//! The cause vocabulary they speak is [`crate::cause`].

pub mod attempt;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod headers;
pub mod hedge;
pub mod outcome;
pub mod relay;
pub mod request;
pub mod response;
pub mod retry;
pub mod tunnel;
pub mod upgrade;

/// A header map from `(name, value)` pairs, in order (tests of the header rewrites).
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}
