//! Kubernetes discovery: the targets of an upstream are the endpoints of a Service, read from
//! its EndpointSlices with one list and then a watch, kept as a set of slices (`slices`).
//!
//! A lean client of our own (`api`: one hyper HTTP/1.1 connection per request over the
//! upstream connector and our rustls setup, JSON through serde) rather than kube-rs: kube-rs
//! and k8s-openapi take minutes to compile and we need list + watch of one resource.
//!
//! The loop: list (`labelSelector=kubernetes.io/service-name=<service>`), report the set, then
//! watch from the list's `resourceVersion` with bookmarks, applying ADDED / MODIFIED / DELETED
//! and moving the version on with each event and bookmark. A stream the server ends is watched
//! again at once from the last version; a broken connection after a pause (backoff); a 410
//! Gone (as the response status or as an ERROR event) lists again. A report is sent only when
//! the set changed, so a re-list that finds the same slices changes nothing. A request that
//! fails (API unreachable, 403) is [`Report::Failed`]; the upstream keeps its last set.

mod api;
mod auth;
mod slices;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

pub use slices::{readiness, Conditions, PortSpec};

use super::{Discovered, Report, Source};
use api::{ApiError, ApiServer, Lines};
use slices::{Event, SliceSet};

pub use crate::config::KubernetesDiscovery as KubernetesSettings;

/// What is wrong with the settings, each as a message for the key named (config validation).
pub fn problems(s: &KubernetesSettings) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !is_dns_label(&s.service) {
        out.push((
            "service",
            format!(
                "{:?} is not a Service name (a DNS label: a-z, 0-9, '-')",
                s.service
            ),
        ));
    }
    if let Some(ns) = &s.namespace {
        if !is_dns_label(ns) {
            out.push(("namespace", format!("{ns:?} is not a namespace name")));
        }
    }
    if let Some(url) = &s.api_server {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            out.push(("api_server", format!("{url:?}: use http:// or https://")));
        }
    }
    out
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Ask the server to end a watch after this long (it then starts again from the last version);
/// a stream silent for longer than this plus a margin is taken as dead.
const WATCH_SECONDS: u64 = 290;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The EndpointSlices of one Service as a discovery source.
pub struct Kubernetes {
    pub settings: KubernetesSettings,
    /// The upstream it feeds, for logs.
    pub upstream: String,
}

impl Source for Kubernetes {
    fn run(self: Box<Self>, tx: mpsc::Sender<Report>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            tokio::select! {
                _ = self.watch(&tx) => {}
                _ = tx.closed() => {}
            }
        })
    }
}

/// Where the loop stands.
struct Watcher<'a> {
    upstream: &'a str,
    tx: &'a mpsc::Sender<Report>,
    set: SliceSet,
    /// What was last reported, to report changes only.
    reported: Option<Vec<Discovered>>,
    /// The last misconfiguration reported, to say it once.
    problem: Option<String>,
    backoff: Duration,
}

impl Kubernetes {
    async fn watch(&self, tx: &mpsc::Sender<Report>) {
        let s = &self.settings;
        let mut w = Watcher {
            upstream: &self.upstream,
            tx,
            set: SliceSet::new(PortSpec::parse(&s.port)),
            reported: None,
            problem: None,
            backoff: FIRST_BACKOFF,
        };
        // Credentials first: a file missing now may be mounted later.
        let (server, namespace) = loop {
            match auth::resolve(s.api_server.as_deref(), s.kubeconfig.as_deref()) {
                Ok(r) => {
                    let ns = s
                        .namespace
                        .clone()
                        .or(r.namespace)
                        .unwrap_or_else(|| "default".to_string());
                    if is_dns_label(&ns) {
                        break (r.server, ns);
                    }
                    w.failed(format!("Kubernetes: {ns:?} is not a namespace name"))
                        .await;
                }
                Err(e) => w.failed(format!("Kubernetes API: {e}")).await,
            }
        };
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
            s.service
        );
        tracing::info!(upstream = %self.upstream, api = %server.url, %namespace, service = %s.service, "watching EndpointSlices");
        loop {
            let version = match server.list(&path).await {
                Ok(list) => {
                    w.set.replace(list.items);
                    w.report().await;
                    list.metadata.resource_version
                }
                Err(ApiError::Gone) => {
                    w.failed(format!("{}: list answered 410 Gone", server.url))
                        .await;
                    continue;
                }
                Err(ApiError::Failed(e)) => {
                    w.failed(e).await;
                    continue;
                }
            };
            if w.watch_from(&server, &path, version).await == Relist::AfterPause {
                // 410 before any event: the server's versions move faster than we list;
                // do not spin on it.
                w.pause().await;
            }
        }
    }
}

impl Watcher<'_> {
    /// Watches from `version` until the version is gone (then the caller lists again).
    async fn watch_from(&mut self, server: &ApiServer, path: &str, mut version: String) -> Relist {
        let mut events = 0;
        loop {
            let url = format!(
                "{path}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}"
            );
            let mut lines = match server.watch(&url).await {
                Ok(lines) => {
                    if self.reported.is_none() {
                        // Back after a failure: say the set is good again.
                        self.report().await;
                    }
                    lines
                }
                Err(ApiError::Gone) if events == 0 => return Relist::AfterPause,
                Err(ApiError::Gone) => return Relist::Now,
                Err(ApiError::Failed(e)) => {
                    self.failed(e).await;
                    continue;
                }
            };
            match self.follow(&mut lines, &mut version, &mut events).await {
                Ended::Gone => {
                    tracing::info!(upstream = %self.upstream, "resource version expired (410): listing again");
                    return if events == 0 {
                        Relist::AfterPause
                    } else {
                        Relist::Now
                    };
                }
                Ended::Clean => {}
                Ended::Broken(why) => {
                    // A reconnect is not a failure; a reconnect that fails is reported then.
                    tracing::info!(upstream = %self.upstream, %why, "EndpointSlice watch dropped: watching again");
                    self.pause().await;
                }
            }
        }
    }

    /// Applies the events of one watch response.
    /// Applies the events of one watch response; `events` counts them over the whole watch.
    async fn follow(
        &mut self,
        lines: &mut Lines,
        version: &mut String,
        events: &mut usize,
    ) -> Ended {
        let silence = Duration::from_secs(WATCH_SECONDS + 30);
        let start = *events;
        loop {
            let line = match tokio::time::timeout(silence, lines.next()).await {
                Err(_) => return Ended::Broken("no event or bookmark for too long".to_string()),
                Ok(Err(e)) => return Ended::Broken(e),
                // A stream ended before it said anything is not trusted to be a timeout.
                Ok(Ok(None)) if *events == start => {
                    return Ended::Broken("the watch ended at once".to_string())
                }
                Ok(Ok(None)) => return Ended::Clean,
                Ok(Ok(Some(line))) => line,
            };
            let event = match slices::parse_event(&line) {
                Ok(e) => e,
                Err(e) => return Ended::Broken(e),
            };
            let changed = match event {
                Event::Gone => return Ended::Gone,
                Event::Error(e) => return Ended::Broken(e),
                Event::Bookmark(v) => {
                    *version = v;
                    false
                }
                Event::Upsert(slice) => {
                    *version = slice.metadata.resource_version.clone();
                    self.set.upsert(slice);
                    true
                }
                Event::Delete(slice) => {
                    *version = slice.metadata.resource_version.clone();
                    self.set.delete(&slice.metadata.name);
                    true
                }
            };
            // A stream that delivers is healthy again.
            self.backoff = FIRST_BACKOFF;
            *events += 1;
            if !changed {
                continue;
            }
            self.report().await;
        }
    }

    /// Sends the set if it changed; a set emptied by a misconfiguration is a failure instead.
    async fn report(&mut self) {
        let problem = self.set.problem();
        if problem != self.problem {
            self.problem = problem.clone();
            self.reported = None;
            if let Some(p) = problem {
                tracing::debug!(upstream = %self.upstream, problem = %p, "Kubernetes discovery: unusable slices");
                let _ = self
                    .tx
                    .send(Report::Failed(format!("Kubernetes: {p}")))
                    .await;
            }
        }
        if self.problem.is_some() {
            return;
        }
        let targets: Vec<Discovered> = self
            .set
            .targets()
            .into_iter()
            .map(|(addr, readiness)| Discovered { addr, readiness })
            .collect();
        if self.reported.as_ref() == Some(&targets) {
            return;
        }
        tracing::debug!(upstream = %self.upstream, targets = targets.len(), "EndpointSlices changed");
        self.reported = Some(targets.clone());
        let _ = self.tx.send(Report::Targets(targets)).await;
    }

    async fn failed(&mut self, why: String) {
        // The seam logs it (warn), shows it in /status and counts it.
        tracing::debug!(upstream = %self.upstream, %why, "Kubernetes discovery failed");
        let _ = self.tx.send(Report::Failed(why)).await;
        // The next good answer is reported even if it is the same set: it ends the failure.
        self.reported = None;
        self.pause().await;
    }

    /// Waits the backoff, then doubles it (with jitter, so many instances do not march).
    async fn pause(&mut self) {
        let jitter = self.backoff.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(self.backoff + jitter).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Relist {
    Now,
    AfterPause,
}

enum Ended {
    /// The server ended the stream (its timeout): watch again at once.
    Clean,
    /// The connection broke or the stream made no sense: watch again after a pause.
    Broken(String),
    /// 410 in the stream: list again.
    Gone,
}
