//! The request path, top to bottom: check the request → match a route → read a small body so it
//! can be replayed → attempts (pick a target → pooled or new connection → send → response head),
//! retrying by the one retry rule → stream the response back → log it with every attempt.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{self, Progress};
use super::headers;
use super::outcome::{Finish, RequestLog};
use super::relay::{BodyEnd, ClientBody, Relay};
use super::request::{self, RequestBody};
use super::response::PROXY_STATUS;
use super::response::{error_response, public_detail, received_status, trusted_client};
use super::retry;
use crate::cause::Cause;
use crate::config::RouteConfig;
use crate::observe::access_log::{AccessLog, Attempt};
use crate::observe::metrics::RouteMetrics;
use crate::routing::RouteTable;
use crate::upstream::balancer::Tried;
use crate::upstream::{Target, Upstream};

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
    pub routes: RouteTable<Arc<Route>>,
    pub access_log: AccessLog,
    /// Counts requests rejected before a route matched.
    pub unrouted: Arc<RouteMetrics>,
    /// The listener's `expose_details`: every client may read upstream details in errors.
    pub expose_details: bool,
    /// The listener's `allow_trace`.
    pub allow_trace: bool,
}

/// Handles one client request; never fails: every error becomes a response with its cause.
pub async fn handle(
    state: &ListenerState,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ClientBody> {
    let (mut head, body) = req.into_parts();
    let invalid = request::validate(&head).err();
    // One authority for everything below: routing, Host upstream, X-Forwarded-Host,
    // Forwarded host= and the access log.
    request::authority_as_host(&mut head);
    let mut log = RequestLog {
        log: state.access_log.clone(),
        start: Instant::now(),
        request_id: headers::prepare_request(&mut head.headers, client),
        client,
        method: head.method.clone(),
        host: head.headers.get(HOST).cloned(),
        uri: head.uri.clone(),
        route: None,
        upstream: None,
        target: None,
        status: 0,
        bytes_in: 0,
        cause: None,
        retry_stop: None,
        attempts: Vec::new(),
        metrics: None,
        emitted: false,
        trusted_client: trusted_client(state.expose_details, client.ip()),
    };
    if let Some(reason) = invalid {
        log.metrics = Some(state.unrouted.clone());
        return fail(log, Cause::HttpRequestError, reason);
    }
    if head.method == http::Method::TRACE && !state.allow_trace {
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
    let Some(route) = state.routes.find(host, head.uri.path()) else {
        let detail = format!("no route for host {host:?} path {:?}", head.uri.path());
        log.metrics = Some(state.unrouted.clone());
        return fail(log, Cause::DestinationNotFound, &detail);
    };
    log.route = Some(route.name.clone());
    log.upstream = Some(route.upstream.name.clone());
    log.metrics = Some(route.metrics.clone());

    let deadline = log.start + route.config.timeout;
    let mut body = match RequestBody::read(body, &head, route.config.replay_buffer, deadline).await
    {
        Ok(body) => body,
        Err((cause, detail)) => return fail(log, cause, &detail),
    };
    log.bytes_in = body.known_len(&head);
    let length = body.length(&head);
    super::framing::request(&mut head.headers, length);
    forward(route, request::upstream_head(head), &mut body, log).await
}

/// The attempt loop of one routed request.
async fn forward(
    route: &Route,
    head: http::request::Parts,
    body: &mut RequestBody,
    mut log: RequestLog,
) -> Response<ClientBody> {
    let upstream = &route.upstream;
    let deadline = log.start + route.config.timeout;
    let idempotency_key = retry::has_idempotency_key(&head.headers);
    let host_from_target = !head.headers.contains_key(HOST);
    route.budget.on_request(log.start);
    let mut rng = fastrand::Rng::new();
    let mut tried = Tried::default();
    // A request an attempt handed back unsent: the next attempt sends it as it is.
    let mut unsent: Option<Request<crate::body::UpstreamBody>> = None;

    loop {
        let (target, in_flight) = match upstream.acquire(tried, deadline).await {
            Ok(picked) => picked,
            Err(err) => return fail(log, err.cause, &err.detail),
        };
        tried.insert(target.index);
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

        let started = Instant::now();
        let per_try = route
            .config
            .per_try_timeout
            .min(deadline.saturating_duration_since(started));
        let mut progress = Progress::default();
        let sent = tokio::time::timeout(per_try, attempt::send(&target, req, &mut progress)).await;
        let result = match sent {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err((err, back))) => {
                unsent = back;
                Err(err)
            }
            Err(_) => {
                let detail = format!("{} after {}ms", target.addr, per_try.as_millis());
                Err(progress.timeout_error(detail))
            }
        };
        let status = result.as_ref().ok().map(|(resp, _)| resp.status());
        upstream.observe(&target, result.as_ref().err(), status);
        log.attempts.push(Attempt {
            target: target.addr.clone(),
            cause: result.as_ref().err().map(|e| e.cause),
            status: status.map(|s| s.as_u16()),
            request_sent: result.as_ref().map_or_else(|e| e.request_sent, |_| true),
            reused: progress.reused,
            duration_ms: started.elapsed(),
        });
        let cause = result.as_ref().err().map(|e| e.cause);
        route.metrics.attempt(target.index, status, cause);

        // A response that is not a retryable status goes straight back to the client; a failure
        // or a retryable status asks the retry rule.
        let retryable_status = matches!(&result, Ok((resp, _))
            if route.config.retry_on_status.contains(&resp.status().as_u16()));
        let retry_in = if result.is_err() || retryable_status {
            let now = Instant::now();
            let input = retry::RetryInput {
                method: &head.method,
                has_idempotency_key: idempotency_key,
                route_allows_non_idempotent: route.config.retry_non_idempotent,
                body_replayable: body.replayable() || unsent.is_some(),
                outcome: match &result {
                    Ok((resp, _)) => retry::Outcome::Status(resp.status()),
                    Err(e) => retry::Outcome::Failed(e),
                },
                retry_on_status: &route.config.retry_on_status,
                attempts_made: log.attempts.len() as u32,
                max_retries: route.config.retries,
                time_left: deadline.saturating_duration_since(now),
                next_delay: retry::backoff(log.attempts.len() as u32, &mut rng),
            };
            decide_retry(route, &input, now, &mut log)
        } else {
            None
        };

        match (result, retry_in) {
            (Ok((resp, conn)), None) => {
                log.target = Some(target.addr.clone());
                let upload_streamed = !body.replayable();
                return relay(resp, conn, target, in_flight, route, log, upload_streamed);
            }
            (Err(err), None) => {
                log.target = Some(target.addr.clone());
                return fail(log, err.cause, &err.detail);
            }
            (_, Some(delay)) => {
                tracing::debug!(target = %target.addr, "retrying on another target");
                drop(in_flight);
                tokio::time::sleep(delay).await;
            }
        }
    }
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

/// Ends a request with a response gatewise generates, and logs it.
fn fail(log: RequestLog, cause: Cause, detail: &str) -> Response<ClientBody> {
    let shown = public_detail(cause, detail, log.trusted_client);
    let resp = error_response(cause, shown, log.attempts.len(), &log.request_id);
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
