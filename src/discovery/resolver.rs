//! A small stub resolver for DNS discovery: asks a recursive nameserver (the system's from
//! `/etc/resolv.conf`, or the configured `dns_nameserver`) over UDP, and over TCP when the answer
//! is truncated. It tells NXDOMAIN from "no answer" from a timeout, and gives the records' TTLs.
//!
//! Why not a resolver crate: hickory-resolver (the usual choice) adds ~56 crates to the lock
//! file for what is three record types, and its API changed in each of its last releases;
//! this is the part of it discovery needs, behind the [`super::Source`] seam.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::dns_wire::{self, Response, Srv, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_SRV};

/// Why a name gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (authoritative).
    NxDomain,
    /// The name exists but has no record of the types asked.
    NoAnswer,
    /// No nameserver answered in time.
    Timeout,
    /// A nameserver answered SERVFAIL, REFUSED or similar, or something unreadable.
    Failed(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NxDomain => f.write_str("NXDOMAIN (the name does not exist)"),
            DnsError::NoAnswer => f.write_str("no records of the type asked"),
            DnsError::Timeout => f.write_str("no nameserver answered in time"),
            DnsError::Failed(why) => f.write_str(why),
        }
    }
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct Resolver {
    nameservers: Vec<SocketAddr>,
    /// Suffixes tried for names with fewer than `ndots` dots (resolv.conf `search`).
    search: Vec<String>,
    ndots: usize,
    /// Per query and nameserver.
    timeout: Duration,
    attempts: usize,
}

/// Addresses with the shortest TTL among their records.
pub type Addrs = (Vec<IpAddr>, Duration);

impl Resolver {
    /// Asks `nameserver` only; names are asked as written (no search list).
    pub fn with_nameserver(nameserver: SocketAddr) -> Self {
        Resolver {
            nameservers: vec![nameserver],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }

    /// The system's: nameservers, search list, `ndots`, `timeout` and `attempts` of
    /// `/etc/resolv.conf` (nameserver 127.0.0.1:53 when it names none, as the C library does).
    pub fn system() -> Self {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Self::from_resolv_conf(&text)
    }

    pub fn from_resolv_conf(text: &str) -> Self {
        let mut r = Resolver {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(2),
            attempts: 2,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        r.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search") | Some("domain") => {
                    r.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for opt in words {
                        let (key, value) = opt.split_once(':').unwrap_or((opt, ""));
                        let n = value.parse::<usize>().ok();
                        match (key, n) {
                            ("ndots", Some(n)) => r.ndots = n.min(15),
                            ("timeout", Some(n)) => {
                                r.timeout = Duration::from_secs(n.clamp(1, 30) as u64)
                            }
                            ("attempts", Some(n)) => r.attempts = n.clamp(1, 5),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if r.nameservers.is_empty() {
            r.nameservers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        r
    }

    /// The names to ask for `name`, in order (resolv.conf rules: as written first when it has
    /// at least `ndots` dots or ends with one, else the search list first).
    fn candidates(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') || self.search.is_empty() {
            return vec![name.to_string()];
        }
        let searched = self.search.iter().map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }

    /// A and AAAA addresses of `host` (an IP literal is its own answer, TTL unbounded).
    pub async fn lookup_ip(&self, host: &str) -> Result<Addrs, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((vec![ip], Duration::MAX));
        }
        let mut first_error = None;
        for name in self.candidates(host) {
            let (a, aaaa) = tokio::join!(self.ask(&name, TYPE_A), self.ask(&name, TYPE_AAAA));
            let mut addrs = Vec::new();
            let mut ttl = u32::MAX;
            for r in [&a, &aaaa].into_iter().flatten() {
                for (ip, t) in &r.addrs {
                    addrs.push(*ip);
                    ttl = ttl.min(*t);
                }
            }
            if !addrs.is_empty() {
                return Ok((addrs, Duration::from_secs(ttl.into())));
            }
            let error = match (a, aaaa) {
                (Err(e), _) => e,
                (_, Err(e)) => e,
                (Ok(_), Ok(_)) => DnsError::NoAnswer,
            };
            first_error.get_or_insert(error);
        }
        Err(first_error.unwrap_or(DnsError::NoAnswer))
    }

    /// The SRV records of `name` with the shortest TTL.
    pub async fn lookup_srv(&self, name: &str) -> Result<(Vec<Srv>, Duration), DnsError> {
        let mut first_error = None;
        for candidate in self.candidates(name) {
            match self.ask(&candidate, TYPE_SRV).await {
                Ok(r) if !r.srv.is_empty() => {
                    let ttl = r.srv.iter().map(|(_, t)| *t).min().unwrap_or(u32::MAX);
                    let records = r.srv.into_iter().map(|(s, _)| s).collect();
                    return Ok((records, Duration::from_secs(ttl.into())));
                }
                Ok(_) => {
                    first_error.get_or_insert(DnsError::NoAnswer);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(DnsError::NoAnswer))
    }

    /// One question to the nameservers in turn, `attempts` rounds; NXDOMAIN and a good answer
    /// end it, other failures try the next server.
    async fn ask(&self, name: &str, qtype: u16) -> Result<Response, DnsError> {
        let mut last = DnsError::Timeout;
        for _ in 0..self.attempts {
            for server in &self.nameservers {
                match self.ask_one(*server, name, qtype).await {
                    Ok(r) if r.rcode == 0 => return Ok(r),
                    Ok(r) if r.rcode == RCODE_NXDOMAIN => return Err(DnsError::NxDomain),
                    Ok(r) => {
                        last = DnsError::Failed(format!(
                            "nameserver {server} answered {}",
                            rcode_name(r.rcode)
                        ))
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn ask_one(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: u16,
    ) -> Result<Response, DnsError> {
        let id = fastrand::u16(..);
        let query = dns_wire::query(id, name, qtype).map_err(DnsError::Failed)?;
        let io = |e: std::io::Error| DnsError::Failed(format!("nameserver {server}: {e}"));
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(server).await.map_err(io)?;
        socket.send(&query).await.map_err(io)?;
        let mut buf = vec![0u8; dns_wire::UDP_PAYLOAD as usize];
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => return Err(DnsError::Timeout),
                Ok(r) => r.map_err(io)?,
            };
            // A stray or late datagram (another id) is not our answer: keep waiting.
            match dns_wire::parse(&buf[..n]) {
                Ok(r) if r.id == id => break r,
                _ => continue,
            }
        };
        if !response.truncated {
            return Ok(response);
        }
        // Too many records for a datagram: the same question over TCP.
        tokio::time::timeout_at(deadline + self.timeout, ask_tcp(server, &query, id))
            .await
            .map_err(|_| DnsError::Timeout)?
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<Response, DnsError> {
    let io = |e: std::io::Error| DnsError::Failed(format!("nameserver {server} (TCP): {e}"));
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(io)?;
    match dns_wire::parse(&buf) {
        Ok(r) if r.id == id => Ok(r),
        Ok(_) => Err(DnsError::Failed(format!(
            "nameserver {server}: answer to another query"
        ))),
        Err(e) => Err(DnsError::Failed(format!("nameserver {server}: {e}"))),
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("rcode {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_search_order() {
        let r = Resolver::from_resolv_conf(
            "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch ns.svc.cluster.local svc.cluster.local\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(r.nameservers, vec!["10.0.0.2:53".parse().unwrap()]);
        assert_eq!(r.ndots, 5);
        assert_eq!(r.timeout, Duration::from_secs(1));
        assert_eq!(
            r.candidates("app"),
            vec!["app.ns.svc.cluster.local", "app.svc.cluster.local", "app"]
        );
        assert_eq!(r.candidates("app.example.com."), vec!["app.example.com."]);
        let empty = Resolver::from_resolv_conf("");
        assert_eq!(empty.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
        assert_eq!(empty.candidates("a.b"), vec!["a.b"]);
    }
}
