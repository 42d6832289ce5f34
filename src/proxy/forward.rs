//! The request path, top to bottom: check the request → match a route → read a small body so it
//! can be replayed → attempts (pick a target → pooled or new connection → send → response head),
//! retrying by the one retry rule → stream the response back → log it with every attempt.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::headers;
use super::hedge;
use super::outcome::{Finish, RequestLog};
use super::relay::{BodyEnd, ClientBody, Relay};
use super::request::{self, RequestBody};
use super::response::PROXY_STATUS;
use super::response::{error_response, public_detail, received_status, trusted_client};
use super::retry;
use super::upgrade::{self, Upgrade};
use crate::cause::Cause;
use crate::config::RouteConfig;
use crate::gateway::snapshot::Snapshot;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::RouteMetrics;
use crate::upstream::{Target, TriedTargets, Upstream};
use arc_swap::ArcSwap;

/// A route with what it needs at run time.
pub struct Route {
    pub name: Arc<str>,
    pub config: RouteConfig,
    pub upstream: Arc<Upstream>,
    pub budget: retry::RetryBudget,
    pub metrics: Arc<RouteMetrics>,
}

/// What one listener's connections share.
pub struct ListenerState {
    /// The listener's name: its routes are found in the snapshot under it.
    pub name: String,
    /// The configuration serving now; a reload swaps it.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub access_log: AccessLog,
    /// Counts requests rejected before a route matched.
    pub unrouted: Arc<RouteMetrics>,
    /// Counts client connections by protocol (h1/h2).
    pub connections: crate::observe::metrics::ClientConnections,
    /// `"https"` on a TLS listener, else `"http"`: for `X-Forwarded-Proto`, `Forwarded` and the log.
    pub scheme: &'static str,
    /// The listener's `expose_details`: every client may read upstream details in errors.
    pub expose_details: std::sync::atomic::AtomicBool,
    /// The listener's `allow_trace`.
    pub allow_trace: std::sync::atomic::AtomicBool,
    /// Open ACME HTTP-01 challenges, answered before routing (`acme/challenge.rs`).
    pub acme: Arc<crate::acme::Challenges>,
}

/// Handles one client request; never fails: every error becomes a response with its cause.
pub async fn handle(
    state: &ListenerState,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ClientBody> {
    let (mut head, body) = req.into_parts();
    request::from_h2(&mut head);
    // Read before the hop-by-hop headers go.
    let upgrade_asked = upgrade::requested(&head.headers);
    let accepts_trailers = request::accepts_trailers(&head);
    let invalid = request::validate(&head).err();
    // One authority for everything below: routing, Host upstream, X-Forwarded-Host,
    // Forwarded host= and the access log.
    request::authority_as_host(&mut head);
    let mut log = RequestLog {
        log: state.access_log.clone(),
        start: Instant::now(),
        request_id: headers::prepare_request(&mut head.headers, client, state.scheme),
        client,
        method: head.method.clone(),
        host: head.headers.get(HOST).cloned(),
        uri: head.uri.clone(),
        route: None,
        upstream: None,
        target: None,
        status: 0,
        scheme: state.scheme,
        protocol: request::protocol(head.version),
        upstream_protocol: None,
        grpc: super::grpc::is_grpc(&head.headers),
        grpc_status: None,
        bytes_in: 0,
        cause: None,
        retry_stop: None,
        held: Default::default(),
        attempts: Vec::new(),
        metrics: None,
        emitted: false,
        tunnel: None,
        trusted_client: trusted_client(
            state
                .expose_details
                .load(std::sync::atomic::Ordering::Relaxed),
            client.ip(),
        ),
    };
    if let Some(reason) = invalid {
        log.metrics = Some(state.unrouted.clone());
        return fail(log, Cause::HttpRequestError, reason);
    }
    if head.method == http::Method::TRACE
        && !state.allow_trace.load(std::sync::atomic::Ordering::Relaxed)
    {
        // TRACE echoes the request back, cookies and credentials included (cross-site tracing):
        // refused as nginx does, unless the listener allows it.
        log.metrics = Some(state.unrouted.clone());
        let mut resp = error_response(
            Cause::HttpRequestError,
            "TRACE is refused on this listener (allow_trace = false)",
            0,
            &log.request_id,
        );
        *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
        return generated(log, Cause::HttpRequestError, resp);
    }
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    // The snapshot is read once per request; a reload during the request does not move it.
    let snapshot = state.snapshot.load();
    let route = snapshot.route(&state.name, host, head.uri.path()).cloned();
    if route.is_none() && !snapshot.has_listener(&state.name) {
        // A keep-alive connection of a listener a reload removed: not "no route" (a 404 the
        // client would believe) but "go elsewhere", and the connection closes after this.
        drop(snapshot);
        log.metrics = Some(state.unrouted.clone());
        let detail = format!("listener {} was removed by a reload", state.name);
        let mut resp = fail(log, Cause::DestinationUnavailable, &detail);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    drop(snapshot);
    let Some(route) = route else {
        let detail = format!("no route for host {host:?} path {:?}", head.uri.path());
        log.metrics = Some(state.unrouted.clone());
        return fail(log, Cause::DestinationNotFound, &detail);
    };
    log.route = Some(route.name.clone());
    log.upstream = Some(route.upstream.name.clone());
    log.metrics = Some(route.metrics.clone());
    let upgrade = match upgrade_asked {
        None => None,
        Some(protocols) => {
            let has_body = !http_body::Body::is_end_stream(&body);
            if route.upstream.config.protocol.always_h2() {
                let detail = format!(
                    "upstream {} speaks HTTP/2: upgrades (WebSocket) need an HTTP/1.1 upstream",
                    route.upstream.name
                );
                return fail(log, Cause::HttpUpgradeFailed, &detail);
            }
            match upgrade::accept(&mut head, protocols, has_body) {
                Ok(upgrade) => upgrade,
                Err((cause, detail)) => return fail(log, cause, &detail),
            }
        }
    };

    let deadline = log.start + super::grpc::route_timeout(route.config.timeout, &head.headers);
    let mut body = match RequestBody::read(body, &head, route.config.replay_buffer, deadline).await
    {
        Ok(body) => body,
        Err((cause, detail)) => return fail(log, cause, &detail),
    };
    log.bytes_in = body.known_len(&head);
    let length = body.length(&head);
    super::framing::request(&mut head.headers, length);
    let mut head = request::upstream_head(head);
    if accepts_trailers {
        // Our hop's own `TE` (the client's was hop-by-hop): we relay trailers, so may get them.
        head.headers
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    forward(&route, head, &mut body, log, upgrade).await
}

/// The attempt loop of one routed request.
async fn forward(
    route: &Route,
    head: http::request::Parts,
    body: &mut RequestBody,
    mut log: RequestLog,
    mut upgrade: Option<Upgrade>,
) -> Response<ClientBody> {
    // A reload may replace the upstream while this request waits (held, queued): it then moves
    // to the successor rather than waiting on targets nobody checks any more.
    let mut upstream: Arc<Upstream> = route.upstream.clone();
    let deadline = log.start + super::grpc::route_timeout(route.config.timeout, &head.headers);
    let idempotency_key = retry::has_idempotency_key(&head.headers);
    let host_from_target = !head.headers.contains_key(HOST);
    route.budget.on_request(log.start);
    let mut rng = fastrand::Rng::new();
    let mut tried = TriedTargets::default();
    // Attempts made before the latest outage hold: a request back from the hold starts its
    // retries afresh (what came before was refused, nothing was sent).
    let mut before_hold = 0;
    // A request an attempt handed back unsent: the next attempt sends it as it is.
    let mut unsent: Option<Request<crate::body::UpstreamBody>> = None;

    loop {
        if let Some(next) = upstream.successor() {
            upstream = next;
        }
        let (target, mut in_flight) = match upstream.acquire(tried, deadline, &mut log.held).await {
            Ok(picked) => picked,
            Err(_) if upstream.successor().is_some() => continue,
            Err(err) => return fail(log, err.cause, &err.detail),
        };
        tried.insert(target.id);
        let mut req = match unsent.take() {
            Some(req) => req,
            None => match body.for_attempt() {
                Some(up_body) => Request::from_parts(clone_head(&head), up_body),
                // Only a streamed body is ever used up, and only by an attempt that failed.
                None => return fail(log, Cause::ProxyInternalError, "request body already sent"),
            },
        };
        if host_from_target {
            // An HTTP/1.0 client may send no Host; HTTP/1.1 upstreams require one: this target's.
            if let Ok(v) = http::HeaderValue::from_str(&target.addr) {
                req.headers_mut().insert(HOST, v);
            }
        }

        let per_try = route
            .config
            .per_try_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let hedge = hedge_for(
            route,
            &head,
            body,
            tried,
            deadline,
            host_from_target,
            // A hedged upgrade would open two tunnels: only plain requests are hedged.
            log.attempts.is_empty() && upgrade.is_none(),
        );
        // Rare paths are boxed (here the hedged pair, which holds two attempts): a request's
        // future is as large as its largest state, and hyper moves it once per request.
        let (outcome, back, hedged) = match hedge {
            None => {
                let (outcome, back) = super::attempt::run(target, req, per_try).await;
                (outcome, back, None)
            }
            hedge => Box::pin(hedge::run(target, req, per_try, hedge)).await,
        };
        unsent = back;
        // Released from the outage hold: the next held request may go now.
        log.held.end_turn();
        outcome.report(&upstream, &route.metrics, &route.config.retry_on_status);
        match hedged {
            None => log.attempts.push(outcome.log_entry()),
            Some(h) => {
                log.attempts.extend(h.log);
                tried.insert(h.hedge_target);
                in_flight = h.won.unwrap_or(in_flight);
            }
        }

        // A response that is not a retryable status goes straight back to the client; a failure
        // or a retryable status asks the outage hold and the retry rule.
        let refused = outcome.error().is_some_and(retry::refused_before_send);
        // With `outage_hold = "0s"` a refusal stays the 502 that names it.
        let refused = refused && !upstream.config.outage_hold.is_zero();
        // Only a request that can be sent again is worth holding.
        let refused = refused && (body.replayable() || unsent.is_some());
        // Only a refusal needs to know (this walks the targets).
        let untried = refused && upstream.has_untried_routable(tried);
        let hold = retry::hold_instead(refused, untried, false);
        let retry_in = if !hold && outcome.asks_retry(&route.config.retry_on_status) {
            let now = Instant::now();
            let input = retry::RetryInput {
                method: &head.method,
                has_idempotency_key: idempotency_key,
                route_allows_non_idempotent: route.config.retry_non_idempotent,
                body_replayable: body.replayable() || unsent.is_some(),
                outcome: outcome.retry_outcome(),
                retry_on_status: &route.config.retry_on_status,
                attempts_made: (log.attempts.len() - before_hold) as u32,
                max_retries: route.config.retries,
                time_left: deadline.saturating_duration_since(now),
                next_delay: retry::backoff((log.attempts.len() - before_hold) as u32, &mut rng),
            };
            decide_retry(route, &input, now, &mut log)
        } else {
            None
        };

        let hold = hold || (retry_in.is_none() && retry::hold_instead(refused, untried, true));
        if hold {
            // Every target refused: wait for one to come back (R6) rather than answer 502.
            drop(in_flight);
            log.retry_stop = None;
            let last = outcome.error().map(|e| e.detail.clone());
            let back = Box::pin(upstream.wait_for_return(&mut log.held, deadline)).await;
            if let Err(err) = back {
                // Say what the targets last answered, not only that the hold ran out.
                let detail = match last {
                    Some(last) if !last.is_empty() => {
                        format!("{}; last attempt: {last}", err.detail)
                    }
                    _ => err.detail,
                };
                return fail(log, err.cause, &detail);
            }
            // Each target may be tried again after the wait, with the retries of a new request.
            tried = TriedTargets::default();
            before_hold = log.attempts.len();
            continue;
        }
        let target = outcome.target;
        match (outcome.result, retry_in) {
            (Ok((resp, conn)), None) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                log.target = Some(target.addr.clone());
                // The socket now belongs to the tunnel: this connection never goes back (it is
                // dropped once the upgrade has taken the socket over).
                return match upgrade.take() {
                    Some(upgrade) => {
                        Box::pin(upgrade.open(resp, conn, target, in_flight, route, log)).await
                    }
                    None => {
                        let detail = format!(
                            "{}: 101 to a request that asked for no upgrade",
                            target.addr
                        );
                        fail(log, Cause::HttpProtocolError, &detail)
                    }
                };
            }
            (Ok((resp, conn)), None) => {
                log.target = Some(target.addr.clone());
                let upload_streamed = !body.replayable();
                return relay(resp, conn, target, in_flight, route, log, upload_streamed);
            }
            (Err(err), None) => {
                log.target = Some(target.addr.clone());
                let cause = match upgrade {
                    Some(_) => upgrade::failure_cause(&err),
                    None => err.cause,
                };
                return fail(log, cause, &err.detail);
            }
            (_, Some(delay)) => {
                tracing::debug!(target = %target.addr, "retrying on another target");
                drop(in_flight);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The hedge of this attempt, when the route asks for one and it is safe: the first attempt of an
/// idempotent (or keyed) request with a replayable body, and a retry left to spend on it.
fn hedge_for<'a>(
    route: &'a Route,
    head: &http::request::Parts,
    body: &mut RequestBody,
    tried: TriedTargets,
    deadline: Instant,
    host_from_target: bool,
    first: bool,
) -> Option<hedge::Hedge<'a>> {
    let after = route.config.hedge_after?;
    // Idempotent methods only: an Idempotency-Key makes a repeat *after* the first safe, not two
    // copies at once (a keyed server answers the second 409 while the first runs).
    let safe = retry::is_idempotent(&head.method);
    if !(first && safe && body.replayable() && route.config.retries > 0) {
        return None;
    }
    Some(hedge::Hedge {
        after,
        req: Request::from_parts(clone_head(head), body.for_attempt()?),
        host_from_target,
        upstream: &route.upstream,
        tried,
        deadline,
        budget: &route.budget,
        metrics: &route.metrics,
        retry_on_status: &route.config.retry_on_status,
    })
}

/// Asks the retry rule (budget included) about a failed attempt; counts and logs its answer.
/// Returns the backoff before the next attempt, or `None` to stop.
fn decide_retry(
    route: &Route,
    input: &retry::RetryInput<'_>,
    now: Instant,
    log: &mut RequestLog,
) -> Option<std::time::Duration> {
    match retry::decide_with_budget(input, &route.budget, now) {
        retry::Decision::Retry(reason) => {
            route.metrics.retry(reason);
            Some(input.next_delay)
        }
        retry::Decision::Stop(reason) => {
            log.retry_stop = Some(reason.as_str());
            route.metrics.retry_stop(reason);
            None
        }
    }
}

fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.uri = head.uri.clone();
    parts.version = head.version;
    parts.headers = head.headers.clone();
    parts
}

/// Streams an upstream response back to the client. `upload_streamed`: the request body was
/// streamed (not buffered), so it may not be fully sent yet.
fn relay(
    resp: Response<Incoming>,
    conn: crate::upstream::pool::Conn,
    target: Arc<Target>,
    in_flight: crate::upstream::InFlight,
    route: &Route,
    mut log: RequestLog,
    upload_streamed: bool,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    let (keep_alive, close) = headers::prepare_response(&mut parts.headers);
    if let Err(detail) = super::framing::response(&log.method, parts.status, &mut parts.headers) {
        // The body is never read: this connection is not reused.
        log.target = Some(target.addr.clone());
        return fail(
            log,
            Cause::HttpProtocolError,
            &format!("{}: {detail}", target.addr),
        );
    }
    parts.version = http::Version::HTTP_11;
    if parts.status.is_server_error() {
        parts.headers.insert(
            PROXY_STATUS.clone(),
            received_status(
                parts.status.as_u16(),
                log.trusted_client.then_some(&*target.addr),
            ),
        );
    }
    log.status = parts.status.as_u16();
    log.upstream_protocol = Some(if conn.is_h2() { "h2" } else { "h1" });
    if log.grpc {
        // A trailers-only answer carries its status in the head.
        log.grpc_status = super::grpc::status_of(&parts.headers);
    }
    let finish = Finish {
        conn,
        upstream: route.upstream.clone(),
        target,
        in_flight,
        keep_alive,
        // A streamed upload may still be going when the response has ended (an early 413 or
        // 401): such a connection is not reused.
        reusable: !close && !upload_streamed,
        log,
    };
    let idle = route.upstream.config.body_idle_timeout;
    let body = ClientBody::Relay(Box::new(Relay::new(body, idle, finish)));
    Response::from_parts(parts, body)
}

/// Ends a request with a response gatewise generates, and logs it. A gRPC request gets it in
/// gRPC form (see [`super::grpc::answer`]).
pub(super) fn fail(mut log: RequestLog, cause: Cause, detail: &str) -> Response<ClientBody> {
    let shown = public_detail(cause, detail, log.trusted_client);
    let mut resp = error_response(cause, shown, log.attempts.len(), &log.request_id);
    if log.grpc {
        let status = super::grpc::status_for(cause);
        log.grpc_status = Some(status);
        resp = super::grpc::answer(resp, status, cause, shown);
    }
    generated(log, cause, resp)
}

/// Logs a response gatewise generated and returns it.
fn generated(
    mut log: RequestLog,
    cause: Cause,
    resp: Response<ClientBody>,
) -> Response<ClientBody> {
    log.status = resp.status().as_u16();
    log.cause = Some(cause);
    let len = match resp.body() {
        ClientBody::Full(Some(b)) => b.len() as u64,
        _ => 0,
    };
    log.emit(len, BodyEnd::Complete);
    resp
}
