//! DNS discovery (`discovery = "dns"`): every `targets` entry (`name:port`) is resolved on an
//! interval; each address is a target of its own, with its own pool and health. A name that
//! fails to resolve keeps its last good addresses (the failure is reported, `dns_error`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Discovered, Readiness, Report, Source};
use crate::config::DnsDiscovery;

/// Resolves an upstream's names on an interval.
pub struct DnsSource {
    upstream: String,
    names: Vec<String>,
    config: DnsDiscovery,
}

impl DnsSource {
    pub fn new(upstream: &str, names: Vec<String>, config: DnsDiscovery) -> Self {
        DnsSource {
            upstream: upstream.to_string(),
            names,
            config,
        }
    }
}

impl Source for DnsSource {
    fn run(self: Box<Self>, tx: mpsc::Sender<Report>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            // Last good addresses per name.
            let mut known: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
            loop {
                let mut failures = Vec::new();
                for name in &self.names {
                    match resolve(name).await {
                        Ok(addrs) if !addrs.is_empty() => {
                            known.insert(name.clone(), addrs);
                        }
                        Ok(_) => failures.push(format!("{name}: no addresses")),
                        Err(e) => failures.push(format!("{name}: {e}")),
                    }
                }
                let set: Vec<Discovered> = known
                    .values()
                    .flatten()
                    .map(|a| Discovered {
                        addr: a.to_string(),
                        readiness: Readiness::Ready,
                    })
                    .collect();
                if !set.is_empty() && tx.send(Report::Targets(set)).await.is_err() {
                    return;
                }
                if !failures.is_empty() {
                    let reason = format!("dns_error: {}", failures.join("; "));
                    if tx.send(Report::Failed(reason)).await.is_err() {
                        return;
                    }
                }
                tracing::trace!(upstream = %self.upstream, "dns resolved");
                tokio::select! {
                    () = tokio::time::sleep(self.config.interval) => {}
                    () = tx.closed() => return,
                }
            }
        })
    }
}

async fn resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    let lookup = tokio::net::lookup_host(name);
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(addrs) => Ok(addrs?.collect()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )),
    }
}
