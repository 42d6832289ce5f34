//! DNS discovery (`discovery = "dns"`): every `targets` entry is resolved on an interval —
//! `name:port` by its A and AAAA records, `_service._proto.name` by its SRV records (hosts and
//! ports; the lowest priority only, each host's addresses resolved in turn) — and each address
//! is a target of its own, with its own pool and health.
//!
//! A name that fails (NXDOMAIN, no records, timeout, SERVFAIL) keeps its last good addresses:
//! the set sent still holds them, and a `dns_error` failure is reported next to it. A name
//! that has never resolved contributes nothing. The next round comes after `dns_interval`, or
//! sooner when a record's TTL ends first (a TTL counts as at least [`MIN_REFRESH`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use super::resolver::{DnsError, Resolver};
use super::{Discovered, Readiness, Report, Source};
use crate::config::DnsDiscovery;

/// A zero or tiny TTL must not turn the source into a busy loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Resolves an upstream's names on an interval.
pub struct DnsSource {
    upstream: String,
    entries: Vec<String>,
    config: DnsDiscovery,
}

impl DnsSource {
    pub fn new(upstream: &str, entries: Vec<String>, config: DnsDiscovery) -> Self {
        DnsSource {
            upstream: upstream.to_string(),
            entries,
            config,
        }
    }
}

/// One `targets` entry, as DNS discovery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `host:port`: A and AAAA of `host`, each with `port`.
    Host { host: String, port: u16 },
    /// `_service._proto.name`: SRV records.
    Srv(String),
}

fn entry(s: &str) -> Option<Entry> {
    if crate::config::is_srv_name(s) {
        return Some(Entry::Srv(s.to_string()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some(Entry::Host {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

impl Source for DnsSource {
    fn run(self: Box<Self>, tx: mpsc::Sender<Report>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let resolver = match self.config.nameserver {
                Some(ns) => Resolver::with_nameserver(ns),
                None => Resolver::system(),
            };
            // Last good addresses per entry.
            let mut known: BTreeMap<&str, Vec<SocketAddr>> = BTreeMap::new();
            loop {
                let mut failures = Vec::new();
                let mut next = self.config.interval;
                for raw in &self.entries {
                    let Some(e) = entry(raw) else {
                        failures.push(format!("{raw}: not HOST:PORT nor an SRV name"));
                        continue;
                    };
                    match resolve(&resolver, &e).await {
                        Ok((addrs, ttl)) => {
                            // A TTL shorter than the interval brings the next round forward.
                            next = next.min(ttl.max(MIN_REFRESH));
                            known.insert(raw.as_str(), addrs);
                        }
                        Err(err) => failures.push(format!("{raw}: {err}")),
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
                // Nothing known yet: only the failure is reported.
                if !set.is_empty() && tx.send(Report::Targets(set)).await.is_err() {
                    return;
                }
                if !failures.is_empty() {
                    let reason = format!("dns_error: {}", failures.join("; "));
                    tracing::debug!(upstream = %self.upstream, %reason, "dns discovery round failed");
                    if tx.send(Report::Failed(reason)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = tx.closed() => return,
                }
            }
        })
    }
}

/// The addresses of one entry, with the shortest TTL seen.
async fn resolve(resolver: &Resolver, e: &Entry) -> Result<(Vec<SocketAddr>, Duration), DnsError> {
    match e {
        Entry::Host { host, port } => {
            let (ips, ttl) = resolver.lookup_ip(host).await?;
            Ok((
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, *port))
                    .collect(),
                ttl,
            ))
        }
        Entry::Srv(name) => {
            let (records, mut ttl) = resolver.lookup_srv(name).await?;
            // RFC 2782: "." means the service is decidedly not available here.
            let usable: Vec<_> = records
                .into_iter()
                .filter(|r| !r.target.is_empty())
                .collect();
            let Some(best) = usable.iter().map(|r| r.priority).min() else {
                return Err(DnsError::NoAnswer);
            };
            let mut addrs = Vec::new();
            let mut last_error = None;
            for r in usable.iter().filter(|r| r.priority == best) {
                match resolver.lookup_ip(&format!("{}.", r.target)).await {
                    Ok((ips, t)) => {
                        ttl = ttl.min(t);
                        addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, r.port)));
                    }
                    Err(e) => {
                        last_error = Some(DnsError::Failed(format!("SRV target {}: {e}", r.target)))
                    }
                }
            }
            match (addrs.is_empty(), last_error) {
                (true, Some(e)) => Err(e),
                (true, None) => Err(DnsError::NoAnswer),
                (false, _) => Ok((addrs, ttl)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert_eq!(
            entry("app.internal:8080"),
            Some(Entry::Host {
                host: "app.internal".into(),
                port: 8080
            })
        );
        assert_eq!(
            entry("[::1]:80"),
            Some(Entry::Host {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(
            entry("_http._tcp.app.internal"),
            Some(Entry::Srv("_http._tcp.app.internal".into()))
        );
        assert_eq!(entry("app.internal"), None);
    }
}
