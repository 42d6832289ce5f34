//! The request path, top to bottom: check the request → match a route → read a small body so it
//! can be replayed → attempts (pick a target → pooled or new connection → send → response head),
//! retrying by the one retry rule → stream the response back → log it with every attempt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::{self, Progress};
use super::error::{Cause, UpstreamError};
use super::headers;
use super::outcome::{Finish, RequestLog};
use super::relay::{BodyEnd, ClientBody, Relay};
use super::request::{self, RequestBody};
use super::response::{error_response, received_status, PROXY_STATUS};
use super::retry;
use crate::config::RouteConfig;
use crate::observe::access_log::{AccessLog, Attempt};
use crate::routing::RouteTable;
use crate::upstream::balancer::Tried;
use crate::upstream::Upstream;

/// A route with what it needs at run time.
pub struct Route {
    pub name: Arc<str>,
    pub config: RouteConfig,
    pub upstream: Arc<Upstream>,
    pub budget: retry::RetryBudget,
}

/// What one listener's connections share.
pub struct ListenerState {
    pub routes: RouteTable<Arc<Route>>,
    pub access_log: AccessLog,
}

/// Handles one client request; never fails: every error becomes a response with its cause.
pub async fn handle(
    state: &ListenerState,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Response<ClientBody> {
    let (mut head, body) = req.into_parts();
    let mut log = RequestLog {
        log: state.access_log.clone(),
        start: Instant::now(),
        time: SystemTime::now(),
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
    };
    if let Err(reason) = request::validate(&head) {
        return fail(log, Cause::HttpRequestError, reason);
    }
    let host = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let Some(route) = state.routes.find(host, head.uri.path()) else {
        let detail = format!("no route for host {host:?} path {:?}", head.uri.path());
        return fail(log, Cause::DestinationNotFound, &detail);
    };
    log.route = Some(route.name.clone());
    log.upstream = Some(route.upstream.name.clone());

    let mut body = match RequestBody::read(body, &head, route.config.replay_buffer).await {
        Ok(body) => body,
        Err((cause, detail)) => return fail(log, cause, &detail),
    };
    log.bytes_in = body.known_len(&head);
    let up_head = request::upstream_head(&head);
    forward(route, up_head, &mut body, log).await
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
    route.budget.on_request(log.start);
    let mut tried = Tried::default();
    let mut last_error: Option<UpstreamError> = None;

    loop {
        let now = Instant::now();
        let Some(index) = upstream.pick(tried) else {
            let (cause, detail) = match &last_error {
                Some(e) => (e.cause, e.detail.clone()),
                None => (
                    Cause::DestinationUnavailable,
                    format!("no target of {} can take traffic", upstream.name),
                ),
            };
            return fail(log, cause, &detail);
        };
        tried.insert(index);
        let target = upstream.targets[index].clone();
        let Some(up_body) = body.for_attempt() else {
            // A streamed body was already sent once: it cannot be sent again.
            let e = last_error.expect("a streamed body is only consumed by an attempt");
            return fail(log, e.cause, &e.detail);
        };
        let req = Request::from_parts(clone_head(&head), up_body);

        let per_try = route
            .config
            .per_try_timeout
            .min(deadline.saturating_duration_since(now));
        let in_flight = target.start_request();
        let mut progress = Progress::default();
        let sent = tokio::time::timeout(per_try, attempt::send(&target, req, &mut progress)).await;
        let result = sent.unwrap_or_else(|_| {
            Err(progress.timeout_error(format!("{} after {}ms", target.addr, per_try.as_millis())))
        });
        let mut attempt = Attempt {
            target: target.addr.clone(),
            cause: None,
            status: None,
            request_sent: true,
            reused: progress.reused,
            duration_ms: now.elapsed(),
        };

        let outcome = match &result {
            Ok((resp, _)) => retry::Outcome::Status(resp.status()),
            Err(e) => retry::Outcome::Failed(e),
        };
        let input = retry::RetryInput {
            method: &head.method,
            has_idempotency_key: idempotency_key,
            route_allows_non_idempotent: route.config.retry_non_idempotent,
            body_replayable: body.replayable(),
            outcome,
            retry_on_status: &route.config.retry_on_status,
            attempts_made: log.attempts.len() as u32 + 1,
            max_retries: route.config.retries,
        };
        let decision = retry::decide(&input);
        let retry_now = match decision {
            retry::Decision::Retry if Instant::now() >= deadline => {
                log.retry_stop = Some(retry::StopReason::DeadlineExceeded.as_str());
                false
            }
            retry::Decision::Retry if !route.budget.try_spend(Instant::now()) => {
                log.retry_stop = Some(retry::StopReason::BudgetExhausted.as_str());
                false
            }
            retry::Decision::Retry => true,
            retry::Decision::Stop(reason) => {
                if result.is_err() || input_is_retry_status(&input) {
                    log.retry_stop = Some(reason.as_str());
                }
                false
            }
        };

        match result {
            Ok((resp, conn)) => {
                attempt.status = Some(resp.status().as_u16());
                log.attempts.push(attempt);
                if retry_now {
                    // A retryable status from this target: try another one.
                    continue;
                }
                log.target = Some(target.addr.clone());
                return relay(resp, conn, target, in_flight, route, log);
            }
            Err(err) => {
                attempt.cause = Some(err.cause);
                attempt.request_sent = err.request_sent;
                log.attempts.push(attempt);
                tracing::debug!(target = %target.addr, error = %err, "attempt failed");
                last_error = Some(err);
                if !retry_now {
                    let e = last_error.take().expect("just set");
                    log.target = Some(target.addr.clone());
                    return fail(log, e.cause, &e.detail);
                }
                drop(in_flight);
                let wait = retry::backoff(log.attempts.len() as u32, &mut fastrand::Rng::new());
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
    }
}

fn input_is_retry_status(input: &retry::RetryInput<'_>) -> bool {
    matches!(input.outcome, retry::Outcome::Status(s) if input.retry_on_status.contains(&s.as_u16()))
}

fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.uri = head.uri.clone();
    parts.version = head.version;
    parts.headers = head.headers.clone();
    parts
}

/// Streams an upstream response back to the client.
fn relay(
    resp: Response<Incoming>,
    conn: crate::upstream::pool::Conn,
    target: Arc<crate::upstream::Target>,
    in_flight: crate::upstream::InFlight,
    route: &Route,
    mut log: RequestLog,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    let (keep_alive, close) = headers::prepare_response(&mut parts.headers);
    parts.version = http::Version::HTTP_11;
    if parts.status.is_server_error() {
        parts.headers.insert(
            PROXY_STATUS.clone(),
            received_status(parts.status.as_u16(), &target.addr),
        );
    }
    log.status = parts.status.as_u16();
    let finish = Finish {
        conn,
        target,
        in_flight,
        keep_alive,
        reusable: !close,
        log,
    };
    let idle = route.upstream.config.body_idle_timeout;
    let body = ClientBody::Relay(Box::new(Relay::new(body, idle, Box::new(finish))));
    Response::from_parts(parts, body)
}

/// Ends a request with a response gatewise generates, and logs it.
fn fail(mut log: RequestLog, cause: Cause, detail: &str) -> Response<ClientBody> {
    let resp = error_response(cause, detail, log.attempts.len(), &log.request_id);
    log.status = resp.status().as_u16();
    log.cause = Some(cause);
    let len = match resp.body() {
        ClientBody::Full(Some(b)) => b.len() as u64,
        _ => 0,
    };
    log.emit(len, BodyEnd::Complete);
    resp
}
