//! The probe steps of `check` and `doctor`, each on its own: resolve → TCP connect → what the port
//! speaks → one HTTP/1.1 exchange. Findings are built from their results elsewhere
//! (`doctor::target`); this file only observes.
//!
//! A target is dialled with [`Dial`]: the gateway's own connector ([`Connector`], as the pool and
//! the health checks use it), so DNS, TCP and — for an `https` upstream — the TLS handshake with
//! the upstream's TLS settings (CA, SNI, client certificate, ALPN) fail here the way they would
//! fail for a request, and the exchange runs over the TLS session. For a plain upstream the TLS
//! layer is observed from bytes: a TLS record answering a plain request (`0x15`/`0x16`, then
//! `0x03 0x0X`), or a TLS record answering the ClientHello of [`CLIENT_HELLO`]; `HTTP/` answering
//! either is plain HTTP. ([`connect`], a bare TCP connect, remains for `doctor --nginx` and for
//! those sniffs.)

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::cause::{Cause, UpstreamError};
use crate::upstream::connect::{Connector, Endpoint, Stream};
use crate::upstream::tls::TlsClient;

/// One resolved address of a target, dialled through the gateway's connector.
#[derive(Debug, Clone)]
pub struct Dial {
    connector: Connector,
    endpoint: Endpoint,
    /// The address, for sentences.
    pub addr: SocketAddr,
}

/// Why a dial failed: at TCP, or (TCP connected) in the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialFailure {
    Tcp(ConnectFailure),
    /// The connector's words for the handshake failure; `plain_http` when the target answered
    /// our ClientHello with an HTTP response.
    Tls {
        cause: Cause,
        words: String,
        plain_http: bool,
    },
}

impl Dial {
    /// `target` (`host:port`) at `addr`; with `tls`, the handshake uses the upstream's client.
    pub fn new(
        target: &str,
        addr: SocketAddr,
        tls: Option<&Arc<TlsClient>>,
        deadline: Duration,
    ) -> Dial {
        Dial {
            connector: Connector::new(deadline),
            endpoint: Endpoint::at(target, addr, tls),
            addr,
        }
    }

    /// The server name verified in the handshake (TLS only).
    pub fn server_name(&self) -> Option<String> {
        self.endpoint.server_name()
    }

    pub async fn connect(&self) -> Result<Stream, DialFailure> {
        self.connector
            .connect(&self.endpoint)
            .await
            .map_err(|e| dial_failure(&self.endpoint.addr, self.connector.timeout, e))
    }
}

/// Sorts the connector's error into the layer it happened at.
fn dial_failure(target: &str, deadline: Duration, e: UpstreamError) -> DialFailure {
    let words = e
        .detail
        .strip_prefix(target)
        .and_then(|w| w.strip_prefix(": "))
        .unwrap_or(&e.detail)
        .to_string();
    match e.cause {
        Cause::TlsProtocolError | Cause::TlsCertificateError => DialFailure::Tls {
            cause: e.cause,
            plain_http: words.contains("speaks plain HTTP"),
            words,
        },
        Cause::ConnectionTimeout if words.starts_with("TLS handshake") => DialFailure::Tls {
            cause: e.cause,
            words,
            plain_http: false,
        },
        Cause::ConnectionTimeout => DialFailure::Tcp(ConnectFailure::TimedOut(deadline)),
        // A plain refusal carries no words (cause::connect_detail).
        Cause::ConnectionRefused if e.detail == target => DialFailure::Tcp(ConnectFailure::Refused),
        _ => DialFailure::Tcp(ConnectFailure::Unreachable(words)),
    }
}

/// Why a TCP connect failed, in the words an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// RST: nothing listens there.
    Refused,
    /// No answer in time: a firewall drops packets, or the host is down.
    TimedOut(Duration),
    /// No route, network down, address not available on this host.
    Unreachable(String),
}

/// Every address `host:port` resolves to, in the resolver's order (v4 and v6 alike).
pub async fn resolve(target: &str, deadline: Duration) -> Result<Vec<SocketAddr>, String> {
    match timeout(deadline, tokio::net::lookup_host(target)).await {
        Ok(Ok(addrs)) => {
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            if out.is_empty() {
                Err("the name has no address".to_string())
            } else {
                Ok(out)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from the resolver within {deadline:?}")),
    }
}

/// One TCP connect, classified.
pub async fn connect(addr: SocketAddr, deadline: Duration) -> Result<TcpStream, ConnectFailure> {
    match timeout(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ConnectFailure::Refused),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
            Err(ConnectFailure::TimedOut(deadline))
        }
        Ok(Err(e)) => Err(ConnectFailure::Unreachable(e.to_string())),
        Err(_) => Err(ConnectFailure::TimedOut(deadline)),
    }
}

/// What a port answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaks {
    /// An HTTP/1.x response.
    Http,
    /// A TLS record (alert or handshake).
    Tls,
    /// Closed without a byte.
    Closed,
    /// Nothing within the deadline.
    Silent,
    /// Bytes that are neither (first bytes kept for the report).
    Other(Vec<u8>),
}

/// Classifies the first bytes a port sent.
pub fn classify(first: &[u8]) -> Speaks {
    match first {
        [] => Speaks::Closed,
        [b'H', b'T', b'T', b'P', b'/', ..] => Speaks::Http,
        [0x15 | 0x16, 0x03, minor, ..] if *minor <= 0x04 => Speaks::Tls,
        // Two bytes are enough to call it: a TLS record never starts any other way.
        [0x15 | 0x16, 0x03] => Speaks::Tls,
        other => Speaks::Other(other.iter().take(16).copied().collect()),
    }
}

/// A TLS 1.2 ClientHello offering common suites, with SNI-less, minimal extensions: any TLS
/// server answers it with a record (ServerHello or an alert), a plain HTTP server with `HTTP/`
/// (400) or by closing.
pub const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x47, // record: handshake, TLS 1.0 compat, 71 bytes
    0x01, 0x00, 0x00, 0x43, // ClientHello, 67 bytes
    0x03, 0x03, // TLS 1.2
    0x67, 0x61, 0x74, 0x65, 0x77, 0x69, 0x73, 0x65, 0x2d, 0x64, 0x6f, 0x63, 0x74, 0x6f, 0x72, 0x2d,
    0x70, 0x72, 0x6f, 0x62, 0x65, 0x2d, 0x72, 0x61, 0x6e, 0x64, 0x6f, 0x6d, 0x2d, 0x33, 0x32,
    0x62, // 32 bytes of "random"
    0x00, // no session id
    0x00, 0x08, 0xc0, 0x2f, 0xc0, 0x2b, 0x00, 0x9c, 0x00, 0x2f, // 4 cipher suites
    0x01, 0x00, // null compression
    0x00, 0x12, // extensions: 18 bytes
    0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
    0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
    0x00, 0x17, 0x00, 0x00, // extended_master_secret
];

/// Sends `hello` on a fresh connection and classifies the first bytes of the answer.
pub async fn sniff(addr: SocketAddr, hello: &[u8], deadline: Duration) -> Speaks {
    let Ok(mut s) = connect(addr, deadline).await else {
        return Speaks::Closed;
    };
    if s.write_all(hello).await.is_err() {
        return Speaks::Closed;
    }
    let mut buf = [0u8; 16];
    match timeout(deadline, s.read(&mut buf)).await {
        Ok(Ok(n)) => classify(&buf[..n]),
        Ok(Err(_)) => Speaks::Closed,
        Err(_) => Speaks::Silent,
    }
}

/// One HTTP/1.1 response as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub status: u16,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: &'static str,
    /// Bytes of the status line and header fields, final CRLF included.
    pub header_bytes: usize,
    /// The `Keep-Alive` header, when sent.
    pub keep_alive: Option<String>,
    /// The server said `Connection: close` (or HTTP/1.0 without keep-alive).
    pub closes: bool,
    /// Request written → response head read.
    pub latency: Duration,
}

/// What an exchange ran into instead of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// The first bytes were not HTTP (TLS, or something else).
    NotHttp(Speaks),
    /// No complete head within the deadline.
    TimedOut(Duration),
    /// The head exceeded `max` bytes (read up to the cap).
    HeadTooLarge {
        read: usize,
    },
    Io(String),
    Malformed(String),
}

/// The largest response head [`exchange`] reads; beyond it the size is "more than this".
pub const HEAD_CAP: usize = 1 << 20;

/// `GET path` on `stream` (kept open when the response allows reuse); reads the whole response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    path: &str,
    deadline: Duration,
) -> Result<Exchange, ExchangeError> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatewise-doctor\r\nAccept: */*\r\n\r\n"
    );
    let start = Instant::now();
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ExchangeError::Io(e.to_string()))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let end = Instant::now() + deadline;
    let head_len = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return Err(ExchangeError::NotHttp(classify(&buf)));
        }
        if buf.len() > HEAD_CAP {
            return Err(ExchangeError::HeadTooLarge { read: buf.len() });
        }
        let mut chunk = [0u8; 16384];
        let n = match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => return Err(ExchangeError::TimedOut(deadline)),
            Err(_) => return Err(ExchangeError::TimedOut(deadline)),
            Ok(Err(e)) => return Err(ExchangeError::Io(e.to_string())),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(match classify(&buf) {
                Speaks::Http => ExchangeError::Malformed("closed inside the response head".into()),
                other => ExchangeError::NotHttp(other),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let latency = start.elapsed();
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf[..head_len])
        .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
    let status = resp.code.unwrap_or(0);
    let version = if resp.version == Some(0) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let keep_alive = header("keep-alive");
    let closes = connection.contains("close")
        || (resp.version == Some(0) && !connection.contains("keep-alive"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = buf.split_off(head_len);
    let framed = read_body(stream, &mut body, length, chunked, status, end).await;
    Ok(Exchange {
        status,
        version,
        header_bytes: head_len,
        keep_alive,
        closes: closes || !framed,
        latency,
    })
}

/// Reads the body to its end; `false` when the connection cannot be reused after it (no framing,
/// or the body did not arrive in time).
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    have: &mut Vec<u8>,
    length: Option<usize>,
    chunked: bool,
    status: u16,
    end: Instant,
) -> bool {
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return true;
    }
    let complete = |b: &[u8]| -> bool {
        if chunked {
            b.ends_with(b"0\r\n\r\n") || memchr::memmem::find(b, b"\r\n0\r\n\r\n").is_some()
        } else {
            length.is_some_and(|n| b.len() >= n)
        }
    };
    if !chunked && length.is_none() {
        return false;
    }
    let mut chunk = [0u8; 16384];
    while !complete(have) {
        match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => have.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// Waits for the server to close an idle connection: `Some(after)`, or `None` when it was still
/// open at `bound`.
pub async fn idle_close<S: AsyncRead + Unpin>(mut stream: S, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match timeout(bound.saturating_sub(start.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue, // stray bytes: keep waiting for the close
            Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_say_what_a_port_speaks() {
        assert_eq!(classify(b"HTTP/1.1 400 Bad Request"), Speaks::Http);
        assert_eq!(
            classify(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]),
            Speaks::Tls
        );
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x00]), Speaks::Tls);
        assert_eq!(classify(&[]), Speaks::Closed);
        assert!(matches!(classify(b"SSH-2.0-OpenSSH"), Speaks::Other(_)));
        assert!(matches!(classify(&[0x16, 0x09, 0x01]), Speaks::Other(_)));
    }

    #[test]
    fn client_hello_lengths_add_up() {
        let record = u16::from_be_bytes([CLIENT_HELLO[3], CLIENT_HELLO[4]]) as usize;
        assert_eq!(record, CLIENT_HELLO.len() - 5);
        let hs = u32::from_be_bytes([0, CLIENT_HELLO[6], CLIENT_HELLO[7], CLIENT_HELLO[8]]);
        assert_eq!(hs as usize, CLIENT_HELLO.len() - 9);
        let ext_at = CLIENT_HELLO.len() - 20;
        let ext = u16::from_be_bytes([CLIENT_HELLO[ext_at], CLIENT_HELLO[ext_at + 1]]);
        assert_eq!(ext as usize, 18);
    }
}
