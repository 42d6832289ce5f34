//! Probes one target the way the gateway would use it and turns what it saw into facts and
//! findings: DNS → TCP → TLS → HTTP → health (`check`), plus header size, the measured idle
//! timeout and latency against the configured limits (`doctor`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::listening;
use super::probe::{self, ConnectFailure, Dial, DialFailure, ExchangeError, Speaks};
use super::report::{Layer, Report};
use crate::cause::Cause;
use crate::config::{UpstreamProtocol, UpstreamTlsConfig};
use crate::upstream::connect::Stream;
use crate::upstream::tls::TlsClient;

/// What the gateway's config expects of a target.
#[derive(Debug, Clone)]
pub struct Expect {
    /// `upstream NAME`, for the sentences.
    pub upstream: String,
    /// The config says TLS (`https://` URL, `protocol = "https"`).
    pub tls: bool,
    /// The TLS client the gateway would use for this target (CA, SNI, client certificate,
    /// ALPN), or why it cannot be built; `None` for plain targets.
    pub tls_client: Option<Result<Arc<TlsClient>, String>>,
    /// `protocol = "h2c"`: the port must speak HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// `GET path` with the accepted status range, when the upstream has an HTTP health check.
    pub health: Option<(String, (u16, u16))>,
    /// Path of the full exchange (`doctor URL`'s path, `/` otherwise).
    pub path: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub per_try_timeout: Duration,
    pub max_response_header_bytes: usize,
}

/// How far to go: `check` stops after the health path; `doctor` measures.
#[derive(Debug, Clone, Copy)]
pub enum Depth {
    Check,
    Doctor {
        /// Sequential requests for the latency sample.
        requests: usize,
        /// Longest wait for the upstream to close an idle connection.
        idle_wait: Duration,
    },
}

/// Deadline of a check's probe steps: short, so a whole config is checked in seconds.
const CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// The client of an `https://` URL given to `doctor`: the system's roots, the host as server
/// name; `insecure` accepts any certificate (what nginx does unless `proxy_ssl_verify on`).
pub fn default_tls_client(insecure: bool) -> Result<Arc<TlsClient>, String> {
    tls_client(
        &UpstreamTlsConfig {
            ca_file: None,
            sni: None,
            client_cert: None,
            insecure_skip_verify: insecure,
        },
        UpstreamProtocol::Https,
    )
}

/// The upstream TLS client for `cfg`, as the gateway builds it.
pub fn tls_client(
    cfg: &UpstreamTlsConfig,
    protocol: UpstreamProtocol,
) -> Result<Arc<TlsClient>, String> {
    TlsClient::new(cfg, protocol).map(Arc::new)
}

/// Probes `target` (`host:port`) and returns what it found.
pub async fn probe(target: &str, expect: &Expect, depth: Depth) -> Report {
    let mut r = Report::default();
    let addrs = match probe::resolve(target, CHECK_DEADLINE).await {
        Ok(a) => a,
        Err(e) => {
            let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
            r.finding(
                Layer::Dns,
                target,
                format!("{target} (upstream {}) does not resolve: {e}", expect.upstream),
                format!("correct the name if it is a typo, or fix its record or the resolver; `getent ahosts {host}` shows what this host resolves"),
            );
            return r;
        }
    };
    let families = match (
        addrs.iter().any(|a| a.is_ipv4()),
        addrs.iter().any(|a| a.is_ipv6()),
    ) {
        (true, true) => "IPv4 and IPv6",
        (false, true) => "IPv6 only",
        _ => "IPv4 only",
    };
    r.fact(
        Layer::Dns,
        target,
        format!("resolves to {} ({families})", list(&addrs)),
    );

    let connect_deadline = expect.connect_timeout.min(CHECK_DEADLINE);
    let client =
        match &expect.tls_client {
            None => None,
            Some(Ok(client)) => Some(client.clone()),
            Some(Err(e)) => {
                r.finding(
                Layer::Tls,
                target,
                format!("the TLS settings of upstream {} cannot be loaded: {e}", expect.upstream),
                "fix ca_file / client_cert of the upstream (gatewise refuses to start with them)",
            );
                return r;
            }
        };
    // Dialled as the gateway dials: its connector, with the upstream's TLS client.
    let mut answering: Vec<(Dial, Stream)> = Vec::new();
    let mut failed: Vec<(SocketAddr, ConnectFailure)> = Vec::new();
    let mut handshakes: Vec<(Dial, DialFailure)> = Vec::new();
    for addr in &addrs {
        let dial = Dial::new(target, *addr, client.as_ref(), connect_deadline);
        match dial.connect().await {
            Ok(s) => answering.push((dial, s)),
            Err(DialFailure::Tcp(f)) => failed.push((*addr, f)),
            Err(tls) => handshakes.push((dial, tls)),
        }
    }
    let connected = answering
        .iter()
        .map(|(d, _)| d.addr)
        .chain(handshakes.iter().map(|(d, _)| d.addr))
        .next();
    for (addr, fail) in &failed {
        tcp_finding(&mut r, target, expect, *addr, fail, connected);
    }
    for (dial, failure) in &handshakes {
        r.fact(
            Layer::Tcp,
            target,
            format!("{} accepts connections", dial.addr),
        );
        handshake_finding(&mut r, target, expect, dial, failure);
    }
    let Some((dial, stream)) = answering.into_iter().next() else {
        return r;
    };
    r.fact(
        Layer::Tcp,
        target,
        format!("{} accepts connections", dial.addr),
    );
    if let Some((version, alpn)) = stream.tls_session() {
        let version = version.map_or("TLS".to_string(), |v| format!("{v:?}").replace('_', "."));
        let alpn = match alpn {
            Some(p) => format!("ALPN {}", String::from_utf8_lossy(&p)),
            None => "no ALPN protocol chosen by the server (HTTP/1.1 is spoken)".to_string(),
        };
        r.fact(
            Layer::Tls,
            target,
            format!(
                "{} speaks TLS, as configured: {version} handshake with server name {}, {alpn}",
                dial.addr,
                dial.server_name().unwrap_or_default()
            ),
        );
    }
    http_layers(&mut r, target, expect, &dial, stream, depth).await;
    r
}

/// A TLS handshake through the gateway's connector failed after TCP connected.
fn handshake_finding(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    dial: &Dial,
    failure: &DialFailure,
) {
    let addr = dial.addr;
    let DialFailure::Tls {
        cause,
        words,
        plain_http,
    } = failure
    else {
        return;
    };
    if *plain_http {
        r.finding(
            Layer::Tls,
            target,
            format!(
                "{addr} speaks plain HTTP but {} expects TLS",
                expect.upstream
            ),
            "use http:// (protocol = \"http1\") for this target, or point it at the app's TLS port",
        );
        return;
    }
    let name = dial.server_name().unwrap_or_default();
    let message = format!("the TLS handshake with {addr} (server name {name}) failed: {words}; gatewise answers such requests 502 {cause}");
    let fix = match cause {
        Cause::TlsCertificateError => format!("make the target's certificate valid for {name} and trusted by the upstream's ca_file (or the system roots), or correct sni / ca_file / client_cert of upstream {}", expect.upstream),
        Cause::ConnectionTimeout => format!("find why the target does not finish the handshake (overloaded, or not TLS on this port); connect_timeout of upstream {} bounds DNS + TCP + TLS", expect.upstream),
        _ => "make sure this port serves TLS 1.2 or 1.3 (not another protocol), or use http:// (protocol = \"http1\") if it is plain".to_string(),
    };
    r.finding(Layer::Tls, target, message, fix);
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tcp_finding(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    addr: SocketAddr,
    fail: &ConnectFailure,
    other: Option<SocketAddr>,
) {
    match fail {
        ConnectFailure::Refused => {
            let mut message = format!("nothing listens on {addr}");
            if let Some(ok) = other.filter(|o| o.is_ipv4() != addr.is_ipv4()) {
                message.push_str(&format!(
                    "; {ok} answers: the app listens on {} only",
                    if ok.is_ipv4() { "IPv4" } else { "IPv6" }
                ));
                let fix = format!("bind the app to both families (or `::`), or use {ok} as the target: each request tried on {addr} first costs a refused connect");
                r.finding(Layer::Tcp, target, message, fix);
                return;
            }
            if listening::is_local(addr.ip()) {
                let near = listening::neighbours(&listening::sockets(), addr.ip(), addr.port(), 2);
                if let Some(n) = near.first() {
                    let also = near.get(1).map(|m| format!(" (also {m})")).unwrap_or_default();
                    message.push_str(&format!("; {n} is listening{also} — wrong port?"));
                }
            }
            r.finding(
                Layer::Tcp,
                target,
                message,
                format!("start the app of upstream {} on {addr}, or point the target at the port it listens on", expect.upstream),
            );
        }
        ConnectFailure::TimedOut(d) => r.finding(
            Layer::Tcp,
            target,
            format!("connecting to {addr} timed out after {}: packets are dropped (firewall, security group, network policy) or the host is down", ms(*d)),
            "open the port from this host to the target (the gateway connects from here), or correct the address",
        ),
        ConnectFailure::Unreachable(e) => r.finding(
            Layer::Tcp,
            target,
            format!("cannot reach {addr}: {e}"),
            "check the route to that network from this host, or correct the address",
        ),
    }
}

/// TLS vs plain, the health path, and (doctor) the full exchange, idle timeout and latency.
async fn http_layers(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    dial: &Dial,
    mut stream: Stream,
    depth: Depth,
) {
    let addr = dial.addr;
    let host = target;
    let deadline = match depth {
        Depth::Check => CHECK_DEADLINE,
        Depth::Doctor { .. } => {
            (expect.per_try_timeout * 2).clamp(CHECK_DEADLINE, Duration::from_secs(30))
        }
    };
    let path = expect
        .health
        .as_ref()
        .map_or(expect.path.as_str(), |(p, _)| p.as_str());
    let alpn_h2 = stream
        .tls_session()
        .is_some_and(|(_, alpn)| alpn.as_deref() == Some(&b"h2"[..]));
    if expect.h2c || alpn_h2 {
        let label = if alpn_h2 { "h2" } else { "h2c" };
        h2_layer(r, target, expect, addr, stream, path, deadline, label).await;
        return;
    }
    let first = probe::exchange(&mut stream, host, path, deadline).await;
    let first = match first {
        Ok(ex) => ex,
        Err(ExchangeError::NotHttp(Speaks::Closed | Speaks::Silent))
        | Err(ExchangeError::Io(_))
            if expect.tls =>
        {
            r.finding(
                Layer::Http,
                target,
                format!("{addr} completed the TLS handshake but closed the connection without answering GET {path}"),
                "make sure this port serves HTTP/1.1 over TLS (not another protocol, nor h2 only)",
            );
            return;
        }
        Err(ExchangeError::NotHttp(Speaks::Closed | Speaks::Silent))
        | Err(ExchangeError::Io(_)) => {
            // Closed without a word: a TLS server waiting for a ClientHello does that.
            match probe::sniff(addr, probe::CLIENT_HELLO, CHECK_DEADLINE).await {
                Speaks::Tls => tls_answer(r, target, expect, addr),
                _ => r.finding(
                    Layer::Http,
                    target,
                    format!("{addr} accepted the connection but closed it without answering an HTTP request or a TLS ClientHello"),
                    "make sure this port is the app's HTTP port (not a database, a metrics or admin port)",
                ),
            }
            return;
        }
        Err(ExchangeError::NotHttp(Speaks::Tls)) => {
            tls_answer(r, target, expect, addr);
            return;
        }
        Err(ExchangeError::NotHttp(other)) => {
            let first = match other {
                Speaks::Other(bytes) => format!(": \"{}\"", bytes.escape_ascii()),
                _ => String::new(),
            };
            r.finding(
                Layer::Http,
                target,
                format!("{addr} answered an HTTP request with bytes that are not HTTP{first}"),
                "point the target at the app's HTTP port",
            );
            return;
        }
        Err(ExchangeError::TimedOut(d)) => {
            // A TLS server may wait for the rest of a "record" that never comes.
            if !expect.tls
                && probe::sniff(addr, probe::CLIENT_HELLO, CHECK_DEADLINE).await == Speaks::Tls
            {
                tls_answer(r, target, expect, addr);
                return;
            }
            r.mark(Layer::Tls);
            r.finding(
                Layer::Timeouts,
                target,
                format!("{addr} accepted the connection but sent no response head to GET {path} within {}", ms(d)),
                "find why the app does not answer (stuck, overloaded, waiting on a dependency); gatewise answers such requests 504 http_response_timeout",
            );
            return;
        }
        Err(ExchangeError::HeadTooLarge { read }) => {
            r.mark(Layer::Tls);
            r.finding(
                Layer::Http,
                target,
                format!("{addr} sent a response head larger than {read} bytes to GET {path}"),
                "shrink the response headers; gatewise refuses heads above max_response_header_bytes",
            );
            return;
        }
        Err(ExchangeError::Malformed(e)) => {
            r.finding(
                Layer::Http,
                target,
                format!("{addr} sent a broken HTTP response to GET {path}: {e}"),
                "fix the app's HTTP response; gatewise answers such requests 502 http_protocol_error",
            );
            return;
        }
    };
    if !expect.tls {
        r.fact(Layer::Tls, target, "plain HTTP, as configured");
    }
    r.fact(
        Layer::Http,
        target,
        format!(
            "GET {path}: {} {}, head {} bytes, Keep-Alive: {}{}",
            first.version,
            first.status,
            first.header_bytes,
            first.keep_alive.as_deref().unwrap_or("not advertised"),
            if first.closes {
                ", closes the connection"
            } else {
                ""
            }
        ),
    );
    if let Some((hpath, (lo, hi))) = &expect.health {
        if (*lo..=*hi).contains(&first.status) {
            r.fact(
                Layer::Health,
                target,
                format!("GET {hpath}: {} (expected {lo}-{hi})", first.status),
            );
        } else {
            r.finding(
                Layer::Health,
                target,
                format!("the health check GET {hpath} on {addr} answers {}, outside the expected {lo}-{hi}: the target is marked unhealthy and gets no traffic", first.status),
                format!("make {hpath} answer {lo}-{hi} when the app is ready, or correct health.path / health.expected_status of upstream {}", expect.upstream),
            );
        }
    }
    if let Depth::Doctor {
        requests,
        idle_wait,
    } = depth
    {
        // The health path's answer says little about real responses: measure on the path.
        let (stream, first) = match &expect.health {
            Some((hpath, _)) if *hpath != expect.path => {
                match main_exchange(stream, first.closes, target, expect, dial, deadline).await {
                    Some(pair) => pair,
                    None => return,
                }
            }
            _ => (stream, first),
        };
        super::measure::doctor_layers(r, target, expect, dial, stream, first, requests, idle_wait)
            .await;
    }
}

/// `GET expect.path` on the connection (or a new one when the last response closed it).
async fn main_exchange(
    mut stream: Stream,
    closed: bool,
    target: &str,
    expect: &Expect,
    dial: &Dial,
    deadline: Duration,
) -> Option<(Stream, probe::Exchange)> {
    if closed {
        stream = dial.connect().await.ok()?;
    }
    let ex = probe::exchange(&mut stream, target, &expect.path, deadline)
        .await
        .ok()?;
    Some((stream, ex))
}

/// An HTTP/2 target (`h2c` with prior knowledge, or `h2` chosen by ALPN over TLS): `GET path`
/// as HTTP/2, and the health range. The HTTP/1.1 measurements (idle timeout, latency sample) are
/// not made over HTTP/2 yet.
#[allow(clippy::too_many_arguments)]
async fn h2_layer(
    r: &mut Report,
    target: &str,
    expect: &Expect,
    addr: SocketAddr,
    stream: Stream,
    path: &str,
    deadline: Duration,
    label: &str,
) {
    let scheme = if label == "h2" { "https" } else { "http" };
    use http_body_util::Empty;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("{scheme}://{target}{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .expect("a valid check request");
        sender.send_request(req).await
    };
    let status = match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(resp)) => resp.status().as_u16(),
        Ok(Err(e)) => {
            r.finding(
                Layer::Http,
                target,
                if label == "h2" {
                    format!("{addr} chose h2 by ALPN but the HTTP/2 exchange failed (GET {path}: {e})")
                } else {
                    format!("{addr} does not speak HTTP/2 with prior knowledge (GET {path}: {e}) but upstream {} has protocol = \"h2c\"", expect.upstream)
                },
                "use protocol = \"http1\" if the app speaks HTTP/1.1, or point the target at its h2c port",
            );
            return;
        }
        Err(_) => {
            r.finding(
                Layer::Http,
                target,
                format!(
                    "{addr} did not answer GET {path} over {label} within {}ms",
                    deadline.as_millis()
                ),
                "check that the app answers on this port",
            );
            return;
        }
    };
    r.fact(
        Layer::Http,
        target,
        format!("GET {path} over {label}: {status}"),
    );
    if let Some((hpath, (lo, hi))) = &expect.health {
        if !(*lo..=*hi).contains(&status) {
            r.finding(
                Layer::Health,
                target,
                format!("the health check GET {hpath} on {addr} answers {status}, outside the expected {lo}-{hi}: the target is marked unhealthy and gets no traffic"),
                format!("make {hpath} answer {lo}-{hi} when the app is ready, or correct health.path / health.expected_status of upstream {}", expect.upstream),
            );
        }
    }
}

/// A plain target whose port answered in TLS.
fn tls_answer(r: &mut Report, target: &str, expect: &Expect, addr: SocketAddr) {
    {
        r.finding(
            Layer::Tls,
            target,
            format!("{addr} speaks TLS but upstream {} is configured as plain HTTP", expect.upstream),
            "point the target at the app's plain HTTP port, or configure the upstream for TLS (protocol = \"https\"); gatewise answers 502 tls_protocol_error otherwise",
        );
    }
}

/// `1.5 s`, `250 ms`.
pub fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            upstream: "app".into(),
            tls: false,
            tls_client: None,
            h2c: false,
            health: None,
            path: "/".into(),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            per_try_timeout: Duration::from_secs(5),
            max_response_header_bytes: 65536,
        }
    }

    /// `localhost` resolving to ::1 and 127.0.0.1 while the app listens on IPv4 only.
    #[test]
    fn a_refused_family_next_to_an_answering_one_names_the_family() {
        let mut r = Report::default();
        let v6: SocketAddr = "[::1]:3000".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        tcp_finding(
            &mut r,
            "localhost:3000",
            &expect(),
            v6,
            &ConnectFailure::Refused,
            Some(v4),
        );
        let f = &r.findings[0];
        assert_eq!(f.layer, Layer::Tcp);
        assert_eq!(
            f.message,
            "nothing listens on [::1]:3000; 127.0.0.1:3000 answers: the app listens on IPv4 only"
        );
        assert!(f.fix.contains("bind the app to both families"), "{}", f.fix);
    }

    #[test]
    fn a_timeout_is_told_apart_from_a_refusal() {
        let mut r = Report::default();
        let addr: SocketAddr = "10.0.0.7:80".parse().unwrap();
        let timed_out = ConnectFailure::TimedOut(Duration::from_secs(1));
        tcp_finding(&mut r, "10.0.0.7:80", &expect(), addr, &timed_out, None);
        assert!(r.findings[0]
            .message
            .starts_with("connecting to 10.0.0.7:80 timed out after 1.0 s: packets are dropped"));
    }
}
