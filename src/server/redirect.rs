//! `redirect_https = true` on a plain listener: every request is answered with a 308 to the same
//! host and path over `https` (308, not 301: the method and body are kept on the second try).

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::{Request, Response, StatusCode};

use crate::cause::Cause;
use crate::observe::access_log::Record;
use crate::proxy::forward::ListenerState;
use crate::proxy::relay::ClientBody;

/// The 308 for `req`, logged and counted like any answer of the listener. Without a usable
/// `Host` there is nowhere to send the client: 400.
pub fn to_https<B>(
    state: &ListenerState,
    peer: SocketAddr,
    req: &Request<B>,
) -> Response<ClientBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(HOST)?.to_str().ok()?;
            // The plain port means nothing for https: drop it (as nginx's `$host` does).
            let name = match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            };
            Some(name.to_string())
        })
        .filter(|h| !h.is_empty());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = host.and_then(|h| HeaderValue::from_str(&format!("https://{h}{path}")).ok());
    let (status, cause, resp) = match location {
        Some(location) => {
            let mut resp = Response::new(ClientBody::empty());
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(LOCATION, location);
            (308, None, resp)
        }
        None => {
            let mut resp = Response::new(ClientBody::full(
                "400 Bad Request\nno Host to redirect to https\n",
            ));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            (400, Some(Cause::HttpRequestError), resp)
        }
    };
    state.unrouted.request(status, cause, Duration::ZERO);
    state.access_log.write(&Record {
        method: req.method().as_str(),
        host: req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
        path: req.uri().path(),
        ..Record::unrouted(
            peer,
            state.scheme,
            crate::proxy::request::protocol(req.version()),
            status,
            cause,
        )
    });
    resp
}
