//! HTTP/1.1 Upgrade (WebSocket) on the request path.
//!
//! An upgrade request goes through the attempt loop like any other (its body is empty, so a
//! request that was never sent may go to another target); `Connection: upgrade` and `Upgrade` are
//! put back after the hop-by-hop removal. The upstream's 101 opens a tunnel: both upgraded
//! sockets handed to [`tunnel::relay`] in a task of its own, registered with the drain, logged
//! when it closes. Any other answer goes back to the client as a response. The upstream
//! connection of a tunnel never returns to the pool.
//!
//! `Upgrade: h2c` is not forwarded (the request goes on as plain HTTP/1.1, which RFC 9110 §7.8
//! allows): a proxy that passed it on would let a client speak HTTP/2 to the upstream past the
//! proxy's routes ("h2c smuggling").

use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::forward::{fail, Route};
use super::headers;
use super::outcome::{RequestLog, TunnelLog};
use super::relay::{BodyEnd, ClientBody};
use super::tunnel::{self, ClosedBy, TunnelEnd};
use crate::cause::{Cause, UpstreamError};
use crate::server::drain::{TunnelGuard, Tunnels};
use crate::server::h1::ClientUpgrade;
use crate::upstream::{InFlight, Target};

static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The protocols a request asks to switch to: its `Upgrade` value when `Connection` lists
/// `upgrade` (an `Upgrade` that `Connection` does not name is not a request to upgrade). Read
/// before the hop-by-hop headers are removed.
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(UPGRADE)?;
    let listed = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    listed.then(|| upgrade.clone())
}

/// An accepted upgrade request: the client's connection once we answer 101, and the drain's
/// registration of the tunnel it may become.
pub struct Upgrade {
    client: ClientUpgrade,
    guard: TunnelGuard,
}

/// Accepts or refuses an upgrade request whose hop-by-hop headers were removed: on acceptance,
/// `Connection: upgrade` and `Upgrade` are put back for the upstream. `Ok(None)`: nothing is left
/// to upgrade to (only `h2c` was asked for); the request goes on as plain HTTP/1.1.
pub fn accept(
    head: &mut Parts,
    protocols: HeaderValue,
    has_body: bool,
) -> Result<Option<Upgrade>, (Cause, String)> {
    let Some(protocols) = without_h2c(&protocols) else {
        return Ok(None);
    };
    if head.version != Version::HTTP_11 {
        let detail = format!(
            "Upgrade on {:?}: protocol upgrades need HTTP/1.1",
            head.version
        );
        return Err((Cause::HttpRequestError, detail));
    }
    if has_body {
        // The bytes after the head would be both a body and the first bytes of the new protocol.
        let detail = "Upgrade request with a body: an upgrade request must not carry one";
        return Err((Cause::HttpRequestError, detail.to_string()));
    }
    let (Some(client), Some(tunnels)) = (
        head.extensions.remove::<ClientUpgrade>(),
        head.extensions.remove::<Tunnels>(),
    ) else {
        let detail = "this connection cannot be upgraded";
        return Err((Cause::ProxyInternalError, detail.to_string()));
    };
    let Some(guard) = tunnels.register() else {
        let detail = "gatewise is shutting down: no new tunnel";
        return Err((Cause::DestinationUnavailable, detail.to_string()));
    };
    head.headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
    head.headers.insert(UPGRADE, protocols);
    Ok(Some(Upgrade { client, guard }))
}

/// The `Upgrade` list without `h2c`; `None` when nothing else was asked for.
fn without_h2c(protocols: &HeaderValue) -> Option<HeaderValue> {
    let text = protocols.to_str().ok()?;
    let is_h2c = |p: &str| p.trim().eq_ignore_ascii_case("h2c");
    if !text.split(',').any(is_h2c) {
        return Some(protocols.clone());
    }
    let kept: Vec<&str> = text
        .split(',')
        .filter(|p| !is_h2c(p) && !p.trim().is_empty())
        .map(str::trim)
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// The cause of an upgrade request's last failed attempt: one the upstream dropped after it was
/// sent, without an answer, failed the upgrade; a failure to connect keeps its own cause.
pub fn failure_cause(err: &UpstreamError) -> Cause {
    match err.cause {
        Cause::ConnectionTerminated | Cause::HttpResponseIncomplete if err.request_sent => {
            Cause::HttpUpgradeFailed
        }
        cause => cause,
    }
}

impl Upgrade {
    /// Opens the tunnel for the upstream's 101: takes the upstream's socket, answers the client
    /// 101 with the upstream's headers, and relays in a task of its own until the tunnel closes.
    pub async fn open(
        self,
        mut resp: Response<Incoming>,
        conn: crate::upstream::pool::Conn,
        target: Arc<Target>,
        in_flight: InFlight,
        route: &Route,
        log: RequestLog,
    ) -> Response<ClientBody> {
        let Some(protocol) = resp.headers().get(UPGRADE).cloned() else {
            let detail = format!("{}: 101 without an Upgrade header", target.addr);
            return fail(log, Cause::HttpUpgradeFailed, &detail);
        };
        let upstream_io = hyper::upgrade::on(&mut resp).await;
        // Only now: dropping it earlier would end its driver before the socket was handed over.
        drop(conn);
        let upstream_io = match upstream_io {
            Ok(io) => io,
            Err(err) => {
                let detail = format!(
                    "{}: taking over the connection after 101: {err}",
                    target.addr
                );
                return fail(log, Cause::HttpUpgradeFailed, &detail);
            }
        };
        let (mut parts, _) = resp.into_parts();
        headers::prepare_response(&mut parts.headers);
        parts.headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
        parts.headers.insert(UPGRADE, protocol);
        parts.version = Version::HTTP_11;
        debug_assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);

        let metrics = route.metrics.clone();
        let idle = route.config.tunnel_idle_timeout;
        metrics.tunnel_opened();
        let Upgrade { client, mut guard } = self;
        let mut log = log;
        log.status = StatusCode::SWITCHING_PROTOCOLS.as_u16();
        let handshake = log.elapsed();
        tokio::spawn(async move {
            let end = match client.connection().await {
                Ok(client_io) => {
                    let upstream_io = TokioIo::new(upstream_io);
                    tunnel::relay(client_io, upstream_io, idle, guard.cut()).await
                }
                // The client went away before the 101 reached it.
                Err(err) => {
                    tracing::debug!(%err, "client connection not upgraded");
                    TunnelEnd {
                        closed_by: ClosedBy::Client,
                        client_to_upstream: 0,
                        upstream_to_client: 0,
                    }
                }
            };
            drop(in_flight);
            metrics.tunnel_closed(end.closed_by.as_str());
            log.bytes_in = end.client_to_upstream;
            log.tunnel = Some(TunnelLog {
                closed_by: end.closed_by.as_str(),
                handshake,
            });
            log.emit(end.upstream_to_client, BodyEnd::Complete);
            // Last: the drain may finish (and the process exit) once the line is written.
            drop(guard);
        });
        Response::from_parts(parts, ClientBody::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_headers as headers;

    #[test]
    fn an_upgrade_needs_both_headers() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(requested(&ws).unwrap(), "websocket");
        assert!(requested(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(requested(&headers(&[("connection", "upgrade")])).is_none());
        let two_lines = headers(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(requested(&two_lines).is_some());
    }

    #[test]
    fn h2c_is_never_forwarded() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(without_h2c(&v("h2c")), None);
        assert_eq!(without_h2c(&v(" H2C ")), None);
        assert_eq!(without_h2c(&v("websocket")), Some(v("websocket")));
        assert_eq!(without_h2c(&v("h2c, websocket")), Some(v("websocket")));
    }

    fn upgrade_head(version: Version) -> Parts {
        let mut head = http::Request::get("/chat")
            .version(version)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        head.headers.insert("host", HeaderValue::from_static("a"));
        head
    }

    #[test]
    fn http10_and_bodies_are_refused_with_a_cause() {
        let ws = HeaderValue::from_static("websocket");
        let mut head = upgrade_head(Version::HTTP_10);
        let (cause, detail) = accept(&mut head, ws.clone(), false).err().unwrap();
        assert_eq!(cause, Cause::HttpRequestError);
        assert!(detail.contains("HTTP/1.1"), "{detail}");
        let mut head = upgrade_head(Version::HTTP_11);
        let (cause, detail) = accept(&mut head, ws, true).err().unwrap();
        assert_eq!(cause, Cause::HttpRequestError);
        assert!(detail.contains("body"), "{detail}");
        // Only h2c asked for: not an upgrade at all, whatever the version.
        let mut head = upgrade_head(Version::HTTP_10);
        assert!(matches!(
            accept(&mut head, HeaderValue::from_static("h2c"), true),
            Ok(None)
        ));
    }

    #[test]
    fn an_upgrade_after_the_sent_request_was_dropped_failed() {
        use crate::cause::Phase;
        let mut err = UpstreamError::before_send(Cause::ConnectionRefused, Phase::Connect, "x");
        assert_eq!(failure_cause(&err), Cause::ConnectionRefused);
        err.cause = Cause::ConnectionTerminated;
        assert_eq!(
            failure_cause(&err),
            Cause::ConnectionTerminated,
            "never sent"
        );
        err.request_sent = true;
        assert_eq!(failure_cause(&err), Cause::HttpUpgradeFailed);
        err.cause = Cause::HttpResponseTimeout;
        assert_eq!(failure_cause(&err), Cause::HttpResponseTimeout);
    }
}
