//! `[[listener]]` and `[[route]]` tables → [`ListenerConfig`] and [`RouteConfig`], with the
//! checks that span sections: duplicate listener names and addresses, a route's listener and
//! upstream existing, and two routes that would shadow each other.

use std::net::SocketAddr;

use toml::Spanned;

use super::file::{RawListener, RawRoute};
use super::validate::{socket_addr, Cx};
use super::{
    defaults, validate_http2, validate_tls, values, HostPattern, ListenerConfig, RouteConfig,
};

/// Listeners, and whether every one was read with a valid name (route checks rely on it).
pub(super) fn listener_configs(
    cx: &mut Cx<'_>,
    raw: Vec<Spanned<Option<RawListener>>>,
) -> (Vec<ListenerConfig>, bool) {
    let mut out: Vec<ListenerConfig> = Vec::new();
    let mut complete = true;
    let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
    for (i, l) in raw.into_iter().enumerate() {
        let span = l.span();
        let Some(l) = l.into_inner() else {
            complete = false;
            continue;
        };
        let RawListener {
            name,
            listen,
            header_read_timeout,
            max_header_bytes,
            max_headers,
            tls,
            redirect_https,
            expose_details,
            allow_trace,
            h2_max_concurrent_streams,
            h2_initial_stream_window,
            h2_initial_connection_window,
            h2_keepalive_interval,
            h2_keepalive_timeout,
            h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams,
        } = l;
        let h2 = validate_http2::RawHttp2 {
            max_concurrent_streams: h2_max_concurrent_streams,
            initial_stream_window: h2_initial_stream_window,
            initial_connection_window: h2_initial_connection_window,
            keepalive_interval: h2_keepalive_interval,
            keepalive_timeout: h2_keepalive_timeout,
            max_pending_accept_reset_streams: h2_max_pending_accept_reset_streams,
            max_local_error_reset_streams: h2_max_local_error_reset_streams,
        };
        let f = |key: &str| format!("listener[{i}].{key}");
        let has_tls = tls.is_some();
        let name = match name {
            None => {
                cx.missing(
                    span.clone(),
                    &f("name"),
                    "required: a name routes can refer to",
                );
                None
            }
            Some(n) => cx
                .check(values::check_name(n.get_ref()), n.span(), &f("name"))
                .map(|_| n),
        };
        if let Some(n) = &name {
            if out.iter().any(|l| &l.name == n.get_ref()) {
                cx.err(
                    n.span(),
                    &f("name"),
                    format!("duplicate listener name {:?}", n.get_ref()),
                );
            }
        } else {
            complete = false;
        }
        let listen = match listen {
            None => {
                cx.missing(
                    span.clone(),
                    &f("listen"),
                    "required: the IP:PORT to accept connections on",
                );
                unspecified
            }
            Some(v) => {
                let addr = cx
                    .check(socket_addr(v.get_ref()), v.span(), &f("listen"))
                    .unwrap_or(unspecified);
                if addr.port() != 0 && out.iter().any(|l| l.listen == addr) {
                    cx.err(
                        v.span(),
                        &f("listen"),
                        format!("{addr} is already used by another listener"),
                    );
                }
                addr
            }
        };
        out.push(ListenerConfig {
            name: name.map(Spanned::into_inner).unwrap_or_default(),
            listen,
            header_read_timeout: cx.duration(
                header_read_timeout,
                &f("header_read_timeout"),
                defaults::HEADER_READ_TIMEOUT,
                true,
            ),
            max_header_bytes: cx.size(
                max_header_bytes,
                &f("max_header_bytes"),
                defaults::MAX_HEADER_BYTES,
            ),
            max_headers: cx.nonzero(max_headers, &f("max_headers"), defaults::MAX_HEADERS),
            tls: tls.and_then(|t| validate_tls::listener_tls(cx, t, &f("tls"))),
            redirect_https: redirect_https.is_some_and(|r| {
                if *r.get_ref() && has_tls {
                    cx.err(
                        r.span(),
                        &f("redirect_https"),
                        "is for a plain listener; this one already serves TLS",
                    );
                }
                r.into_inner()
            }),
            expose_details: expose_details.unwrap_or(defaults::EXPOSE_DETAILS),
            allow_trace: allow_trace.unwrap_or(defaults::ALLOW_TRACE),
            h2: validate_http2::limits(cx, h2, &f),
        });
    }
    if out.is_empty() && complete {
        cx.err(
            0..0,
            "listener",
            "no [[listener]] table: at least one listener is required",
        );
    }
    (out, complete)
}

pub(super) fn route_configs(
    cx: &mut Cx<'_>,
    raw: Vec<Spanned<Option<RawRoute>>>,
    listeners: &[ListenerConfig],
    listeners_complete: bool,
    upstreams: &[String],
) -> Vec<RouteConfig> {
    if raw.is_empty() {
        cx.err(
            0..0,
            "route",
            "no [[route]] table: at least one route is required",
        );
    }
    let mut out: Vec<RouteConfig> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for l in listeners {
        if !names.contains(&l.name.as_str()) {
            names.push(&l.name);
        }
    }
    for (i, r) in raw.into_iter().enumerate() {
        let span = r.span();
        let Some(r) = r.into_inner() else { continue };
        let RawRoute {
            name,
            listener,
            host,
            path_prefix,
            upstream,
            timeout,
            per_try_timeout,
            hedge_after,
            retries,
            retry_non_idempotent,
            retry_on_status,
            replay_buffer,
            retry_budget_ratio,
            retry_budget_per_second,
            tunnel_idle_timeout,
        } = r;
        let f = |key: &str| format!("route[{i}].{key}");
        let listener = match listener {
            Some(l) => {
                if listeners_complete && !names.contains(&l.get_ref().as_str()) {
                    cx.err(
                        l.span(),
                        &f("listener"),
                        format!(
                            "no listener named {:?} (listeners: {})",
                            l.get_ref(),
                            names.join(", ")
                        ),
                    );
                }
                l.into_inner()
            }
            None if names.len() == 1 => names[0].to_string(),
            None => {
                if listeners_complete && names.len() > 1 {
                    cx.err(
                        span.clone(),
                        &f("listener"),
                        format!(
                            "required when there are several listeners ({})",
                            names.join(", ")
                        ),
                    );
                }
                String::new()
            }
        };
        let upstream = match upstream {
            None => {
                cx.missing(
                    span.clone(),
                    &f("upstream"),
                    "required: the name of an [upstream.NAME] table",
                );
                String::new()
            }
            Some(u) => {
                if !upstreams.contains(u.get_ref()) {
                    cx.err(
                        u.span(),
                        &f("upstream"),
                        format!(
                            "no [upstream.{}] table (upstreams: {})",
                            u.get_ref(),
                            upstreams.join(", ")
                        ),
                    );
                }
                u.into_inner()
            }
        };
        let host = match host {
            None => HostPattern::Any,
            Some(h) => cx
                .check(
                    values::parse_host_pattern(h.get_ref()),
                    h.span(),
                    &f("host"),
                )
                .unwrap_or(HostPattern::Any),
        };
        let path_prefix = match path_prefix {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.into_inner(),
            Some(p) => {
                cx.err(
                    p.span(),
                    &f("path_prefix"),
                    format!("must start with '/', got {:?}", p.get_ref()),
                );
                "/".to_string()
            }
        };
        let timeout_span = timeout.as_ref().map(|t| t.span());
        let timeout = cx.duration(timeout, &f("timeout"), defaults::ROUTE_TIMEOUT, true);
        let per_try_span = per_try_timeout.as_ref().map(|t| t.span());
        let per_try_timeout = cx.duration(
            per_try_timeout,
            &f("per_try_timeout"),
            defaults::PER_TRY_TIMEOUT,
            true,
        );
        if per_try_timeout > timeout {
            let at = per_try_span.or(timeout_span).unwrap_or(span.clone());
            cx.err(at, &f("per_try_timeout"), format!("{per_try_timeout:?} is longer than the route timeout {timeout:?}, so it could never fire"));
        }
        let hedge_span = hedge_after.as_ref().map(|t| t.span());
        let hedge_after = hedge_after
            .map(|h| cx.duration(Some(h), &f("hedge_after"), per_try_timeout, true))
            .filter(|h| {
                let fires = *h < per_try_timeout;
                if !fires {
                    let at = hedge_span.clone().unwrap_or(span.clone());
                    cx.err(at, &f("hedge_after"), format!("{h:?} is not shorter than per_try_timeout {per_try_timeout:?}, so a hedge could never start"));
                }
                fires
            });
        if let (Some(_), Some(0)) = (hedge_after, retries) {
            let at = hedge_span.clone().unwrap_or(span.clone());
            cx.err(
                at,
                &f("hedge_after"),
                "needs retries of at least 1: a hedge is an extra attempt",
            );
        }
        let ratio = match retry_budget_ratio {
            Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
                cx.err(
                    r.span(),
                    &f("retry_budget_ratio"),
                    format!("expected a fraction 0.0-1.0, got {}", r.get_ref()),
                );
                defaults::RETRY_BUDGET_RATIO
            }
            Some(r) => *r.get_ref(),
            None => defaults::RETRY_BUDGET_RATIO,
        };
        let explicit_name = name.map(|n| {
            let at = n.span();
            cx.check(values::check_name(n.get_ref()), at.clone(), &f("name"));
            (n.into_inner(), at)
        });
        let route = RouteConfig {
            name: match &explicit_name {
                Some((n, _)) => n.clone(),
                None => super::default_route_name(&host, &path_prefix),
            },
            listener,
            host,
            path_prefix,
            upstream,
            timeout,
            per_try_timeout,
            hedge_after,
            retries: retries.unwrap_or(defaults::RETRIES),
            retry_non_idempotent: retry_non_idempotent.unwrap_or(false),
            retry_on_status: cx.statuses(
                retry_on_status,
                &f("retry_on_status"),
                &defaults::RETRY_ON_STATUS,
            ),
            replay_buffer: cx.size(replay_buffer, &f("replay_buffer"), defaults::REPLAY_BUFFER),
            retry_budget_ratio: ratio,
            retry_budget_per_second: retry_budget_per_second
                .unwrap_or(defaults::RETRY_BUDGET_PER_SECOND),
            tunnel_idle_timeout: cx.duration(
                tunnel_idle_timeout,
                &f("tunnel_idle_timeout"),
                defaults::TUNNEL_IDLE_TIMEOUT,
                true,
            ),
        };
        let same = |o: &RouteConfig| {
            o.listener == route.listener
                && o.host == route.host
                && o.path_prefix == route.path_prefix
        };
        if let Some(j) = out.iter().position(same) {
            cx.err(
                span,
                &format!("route[{i}]"),
                format!("same listener, host and path_prefix as route[{j}]; it could never match"),
            );
        }
        let mut route = route;
        if let Some(j) = out.iter().position(|o| o.name == route.name) {
            match &explicit_name {
                Some((n, at)) => cx.err(
                    at.clone(),
                    &f("name"),
                    format!("duplicate route name {n:?} (also route[{j}])"),
                ),
                // Derived names collide only across listeners: say which listener.
                None => route.name = format!("{}@{}", route.name, route.listener),
            }
        }
        out.push(route);
    }
    out
}
