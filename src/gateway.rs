//! Assembling a running gateway from a [`Config`]: upstreams, route tables per listener, the
//! access log, bound sockets; then serving them all.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{Config, ListenerConfig};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::proxy::forward::{ListenerState, Route};
use crate::proxy::retry::RetryBudget;
use crate::routing::RouteTable;
use crate::server::drain::Drain;
use crate::upstream::Upstream;

/// State shared by the whole gateway (the admin listener reads it).
pub struct Shared {
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub routes: Vec<Arc<Route>>,
    pub metrics: Metrics,
    /// Set when shutdown began: `/ready` answers 503 from then on.
    pub draining: AtomicBool,
}

impl Shared {
    /// `None` when every route has a target that can take traffic; otherwise why not.
    pub fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining: gatewise is shutting down".to_string());
        }
        self.routes
            .iter()
            .find(|r| !r.upstream.has_routable_target())
            .map(|r| {
                format!(
                    "route {} has no healthy target in {}",
                    r.name, r.upstream.name
                )
            })
    }
}

/// A gateway with its sockets bound, ready to serve.
pub struct Gateway {
    listeners: Vec<(ListenerConfig, TcpListener, Arc<ListenerState>)>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
}

impl Gateway {
    /// Builds the runtime state and binds every socket (port 0 picks a free port).
    pub async fn bind(config: &Config, access_log: AccessLog) -> anyhow::Result<Gateway> {
        let upstreams: BTreeMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, cfg)| (name.clone(), Arc::new(Upstream::new(name, cfg.clone()))))
            .collect();
        let mut metrics = Metrics::new(upstreams.values());
        metrics.register_access_log(&access_log);
        let mut all_routes = Vec::new();
        let mut listeners = Vec::new();
        for lc in &config.listeners {
            let mut entries = Vec::new();
            for (i, rc) in config.routes.iter().enumerate() {
                if rc.listener != lc.name {
                    continue;
                }
                let upstream = upstreams
                    .get(&rc.upstream)
                    .with_context(|| format!("route {i}: unknown upstream {}", rc.upstream))?
                    .clone();
                let name: Arc<str> = Arc::from(format!("{}#{i}", lc.name));
                let route = Arc::new(Route {
                    metrics: metrics.route(&name, &upstream),
                    name,
                    budget: RetryBudget::for_route(rc, tokio::time::Instant::now()),
                    config: rc.clone(),
                    upstream,
                });
                all_routes.push(route.clone());
                entries.push((rc.host.clone(), rc.path_prefix.clone(), route));
            }
            let socket = TcpListener::bind(lc.listen)
                .await
                .with_context(|| format!("listener {}: cannot listen on {}", lc.name, lc.listen))?;
            let state = Arc::new(ListenerState {
                routes: RouteTable::new(entries),
                access_log: access_log.clone(),
                unrouted: metrics.unrouted(),
                expose_details: lc.expose_details,
                allow_trace: lc.allow_trace,
            });
            listeners.push((lc.clone(), socket, state));
        }
        let admin = match config.admin.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin: cannot listen on {addr}"))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            upstreams,
            routes: all_routes,
            metrics,
            draining: AtomicBool::new(false),
        });
        Ok(Gateway {
            listeners,
            admin,
            shared,
            drain_delay: config.drain_delay,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// Addresses the listeners are bound to, in config order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(_, l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves every listener and the admin listener until the returned future is dropped.
    pub async fn serve(self) {
        self.serve_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` resolves, then drains (`server/drain.rs`): `/ready` 503 at once,
    /// still serving for `drain_delay`; then listeners close and open connections finish their
    /// requests, for up to `shutdown_timeout`. Returns when that is done, with the number of
    /// connections still open at the timeout (0 when all finished).
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> usize {
        let drain = Drain::default();
        let mut tasks = JoinSet::new();
        for (config, socket, state) in self.listeners {
            tracing::info!(
                listener = %config.name,
                addr = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "listening"
            );
            tasks.spawn(crate::server::listener::serve(
                socket,
                config,
                state,
                drain.signal(),
            ));
        }
        for upstream in self.shared.upstreams.values() {
            tasks.spawn(upstream.clone().run_health());
        }
        if let Some(admin) = self.admin {
            tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
            tasks.spawn(crate::observe::admin::serve(admin, self.shared.clone()));
        }
        for route in &self.shared.routes {
            tracing::info!(
                route = %route.name,
                host = %route.config.host,
                path_prefix = %route.config.path_prefix,
                upstream = %route.upstream.name,
                targets = ?route.upstream.config.targets,
                "routing"
            );
        }
        tokio::select! {
            () = shutdown => {}
            () = async { while tasks.join_next().await.is_some() {} } => return 0,
        }
        self.shared.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_delay_ms = self.drain_delay.as_millis() as u64,
            "draining: /ready answers 503; still serving until the delay ends"
        );
        tokio::time::sleep(self.drain_delay).await;
        tracing::info!(
            shutdown_timeout_ms = self.shutdown_timeout.as_millis() as u64,
            "closing listeners; waiting for in-flight requests"
        );
        let open = drain.close_and_wait(self.shutdown_timeout).await;
        match open {
            0 => tracing::info!("drained: every connection finished"),
            open => tracing::warn!(open, "shutdown timeout: closing connections still open"),
        }
        open
    }
}
