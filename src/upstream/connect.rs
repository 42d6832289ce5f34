//! The one way gatewise reaches a target: an [`Endpoint`] says where and how (address, plain or
//! TLS, server name, ALPN through the TLS client), a [`Connector`] dials it — DNS, TCP, then the
//! TLS handshake — and gives back a [`Stream`] or an [`UpstreamError`] classified where it
//! happened. The request pool, the active health checks and `check`/`doctor` all use it, so a
//! target that fails its handshake fails the same way for all of them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::{handshake_failure, TlsClient};
use crate::cause::{connect_cause, connect_detail, Cause, Phase, UpstreamError};

/// One target as the connector sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: Arc<str>,
    /// Set when `addr` is an IP literal: no resolution on connect.
    literal: Option<SocketAddr>,
    tls: Option<TlsTarget>,
    /// `protocol = "h2c"`: HTTP/2 with prior knowledge on a plain connection.
    h2c: bool,
}

#[derive(Debug, Clone)]
struct TlsTarget {
    client: Arc<TlsClient>,
    /// Sent as SNI and verified against the certificate.
    name: ServerName<'static>,
}

impl Endpoint {
    /// `addr` is `host:port`; with `tls`, the server name is the `sni` override or the host.
    pub fn new(addr: &str, tls: Option<&Arc<TlsClient>>) -> Endpoint {
        let literal: Option<SocketAddr> = addr.parse().ok();
        let tls = tls.map(|client| TlsTarget {
            name: client.sni.clone().unwrap_or_else(|| match literal {
                Some(sa) => ServerName::IpAddress(sa.ip().into()),
                None => {
                    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                    // Config validation admits only DNS names and IPs as hosts, so this does
                    // not fail; were it to, the handshake fails with a name mismatch naming
                    // "invalid" rather than the connector panicking.
                    ServerName::try_from(host.to_string())
                        .unwrap_or_else(|_| ServerName::try_from("invalid").expect("valid name"))
                }
            }),
            client: client.clone(),
        });
        Endpoint {
            addr: Arc::from(addr),
            literal,
            tls,
            h2c: false,
        }
    }

    /// This endpoint speaks HTTP/2 without asking (`protocol = "h2c"`).
    pub fn h2_prior_knowledge(mut self) -> Endpoint {
        self.h2c = true;
        self
    }

    /// Whether a connection to this endpoint speaks HTTP/2: `h2c`, or ALPN chose `h2`.
    pub fn speaks_h2(&self, stream: &Stream) -> bool {
        match stream {
            Stream::Plain(_) => self.h2c,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// `addr` (`host:port`) dialled at one address it resolved to: no resolution on connect, and
    /// the TLS server name is still the host's (or the `sni` override). For `check` and `doctor`,
    /// which probe every address of a name.
    pub fn at(addr: &str, resolved: SocketAddr, tls: Option<&Arc<TlsClient>>) -> Endpoint {
        let mut ep = Endpoint::new(addr, tls);
        ep.literal = Some(resolved);
        ep
    }

    /// The server name sent as SNI and verified, for TLS endpoints.
    pub fn server_name(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.name.to_str().into_owned())
    }

    /// Whether connections to this endpoint speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Dials endpoints, the whole of DNS + TCP + TLS within `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    pub timeout: Duration,
}

impl Connector {
    pub fn new(timeout: Duration) -> Connector {
        Connector { timeout }
    }

    /// A connected (and, for TLS, handshaken) stream, or why not. Nothing of a request has been
    /// written when this fails, so every error is `before_send`.
    pub async fn connect(&self, ep: &Endpoint) -> Result<Stream, UpstreamError> {
        let tcp_done = AtomicBool::new(false);
        let attempt = async {
            let tcp = connect_tcp(ep).await?;
            // Small requests and responses must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            tcp_done.store(true, Ordering::Relaxed);
            match &ep.tls {
                None => Ok(Stream::Plain(tcp)),
                Some(tls) => handshake(ep, tls, tcp).await,
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                let ms = self.timeout.as_millis();
                let detail = if tcp_done.load(Ordering::Relaxed) {
                    format!("{}: TLS handshake not done after {ms}ms", ep.addr)
                } else {
                    format!("{} after {ms}ms", ep.addr)
                };
                Err(UpstreamError::before_send(
                    Cause::ConnectionTimeout,
                    Phase::Connect,
                    detail,
                ))
            }
        }
    }
}

async fn connect_tcp(ep: &Endpoint) -> Result<TcpStream, UpstreamError> {
    let addrs: Vec<SocketAddr> = match ep.literal {
        Some(addr) => vec![addr],
        None => tokio::net::lookup_host(&*ep.addr)
            .await
            .map_err(|e| {
                UpstreamError::before_send(
                    Cause::DnsError,
                    Phase::Connect,
                    format!("{}: {e}", ep.addr),
                )
            })?
            .collect(),
    };
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => {
            tracing::debug!(target = %ep.addr, err = %e, "connect failed");
            UpstreamError::before_send(
                connect_cause(&e),
                Phase::Connect,
                connect_detail(&ep.addr, &e),
            )
        }
        None => UpstreamError::before_send(
            Cause::DnsError,
            Phase::Connect,
            format!("{}: no addresses", ep.addr),
        ),
    })
}

async fn handshake(
    ep: &Endpoint,
    tls: &TlsTarget,
    tcp: TcpStream,
) -> Result<Stream, UpstreamError> {
    let connector = TlsConnector::from(tls.client.config.clone());
    let sniffed = Sniff::new(tcp);
    match connector
        .connect(tls.name.clone(), sniffed)
        .into_fallible()
        .await
    {
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
        Err((err, io)) => {
            let name = tls.name.to_str();
            let (cause, words) = handshake_failure(&err, io.first(), &name);
            tracing::debug!(target = %ep.addr, %err, "TLS handshake failed");
            Err(UpstreamError::before_send(
                cause,
                Phase::Connect,
                format!("{}: {words}", ep.addr),
            ))
        }
    }
}

/// A connection to a target, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<Sniff>>),
}

impl Stream {
    /// The TLS version and the ALPN protocol the target chose (`None` for plain connections).
    pub fn tls_session(&self) -> Option<(Option<rustls::ProtocolVersion>, Option<Vec<u8>>)> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => {
                let conn = s.get_ref().1;
                Some((
                    conn.protocol_version(),
                    conn.alpn_protocol().map(<[u8]>::to_vec),
                ))
            }
        }
    }
}

/// A TCP stream that keeps the first bytes the target sent, so a failed handshake can tell
/// `HTTP/1.1 400` (a plain server) from a broken TLS peer.
#[derive(Debug)]
pub struct Sniff {
    inner: TcpStream,
    first: [u8; 8],
    len: u8,
}

impl Sniff {
    fn new(inner: TcpStream) -> Sniff {
        Sniff {
            inner,
            first: [0; 8],
            len: 0,
        }
    }

    fn first(&self) -> &[u8] {
        &self.first[..self.len as usize]
    }
}

impl AsyncRead for Sniff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let before = buf.filled().len();
        let res = Pin::new(&mut me.inner).poll_read(cx, buf);
        let have = me.len as usize;
        if have < me.first.len() {
            let new = &buf.filled()[before..];
            let take = new.len().min(me.first.len() - have);
            me.first[have..have + take].copy_from_slice(&new[..take]);
            me.len += take as u8;
        }
        res
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
