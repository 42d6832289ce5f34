//! TLS fixtures: a test CA made with rcgen at test time, certificate files in a temporary
//! directory, a TLS mock upstream, and a rustls client that reports which certificate it got.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gatewise-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `contents` to `name` in this directory (atomically: a temp file renamed over it,
    /// as certbot and Kubernetes do) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and its key, as PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority made for one test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server (and client) certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Pem {
        let (params, key) = leaf(names);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Like [`TestCa::issue`], but already expired.
    pub fn issue_expired(&self, names: &[&str]) -> Pem {
        let (mut params, key) = leaf(names);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn leaf(names: &[&str]) -> (CertificateParams, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    (params, KeyPair::generate().unwrap())
}

/// A self-signed certificate for `names` (no CA anyone trusts).
pub fn self_signed(names: &[&str]) -> Pem {
    let (params, key) = leaf(names);
    let cert = params.self_signed(&key).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

/// A TLS upstream serving HTTP/1.1: answers 200 (or NNN on a path `/status/NNN`) with `x-client-cert: yes|no` (whether the
/// client presented a certificate) and the request's path as body. With `client_ca`, a client
/// certificate signed by it is required.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn tls_upstream(server: &Pem, client_ca: Option<&str>) -> TlsUpstream {
    tls_upstream_alpn(server, client_ca, &[b"http/1.1"]).await
}

/// [`tls_upstream`] offering `alpn` (none: no ALPN); it speaks HTTP/2 on a connection where
/// ALPN chose `h2`, else HTTP/1.1, and says which in `x-version`.
pub async fn tls_upstream_alpn(
    server: &Pem,
    client_ca: Option<&str>,
    alpn: &[&[u8]],
) -> TlsUpstream {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let mut config = builder.with_single_cert(certs(&server.cert), key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let presented = tls.get_ref().1.peer_certificates().is_some();
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("-"));
                    let version = format!("{:?}", req.version());
                    let _ = req.into_body().collect().await;
                    let status = path
                        .strip_prefix("/status/")
                        .and_then(|s| s.parse::<u16>().ok())
                        .unwrap_or(200);
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("x-version", version)
                            .header("x-client-cert", if presented { "yes" } else { "no" })
                            .header("x-echo-x-forwarded-proto", proto)
                            .body(Full::new(Bytes::from(path)))
                            .unwrap(),
                    )
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                }
            });
        }
    });
    TlsUpstream {
        addr,
        handshakes,
        task,
    }
}

/// A rustls client connection to `addr` with `sni`, trusting `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_with(addr, sni, client_config(ca)).await
}

/// A connection with a given client config (one config keeps its session cache, so a second
/// connection can resume).
pub async fn tls_connect_with(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// A client trusting `ca`, offering ALPN http/1.1 only (an HTTP/1 client; the HTTP/2 tests
/// offer h2 with [`client_config_alpn`]).
pub fn client_config(ca: &str) -> Arc<rustls::ClientConfig> {
    client_config_versions(ca, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] offering only the ALPN protocols `alpn`.
pub fn client_config_alpn(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = Arc::unwrap_or_clone(client_config(ca));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// [`client_config`] speaking only `versions`.
pub fn client_config_versions(
    ca: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The DNS names of the certificate the server presented on `tls`.
pub fn served_names(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<String> {
    let cert = &tls.get_ref().1.peer_certificates().expect("a certificate")[0];
    let info = gatewise::tls::cert_info(cert).unwrap();
    info.names
}

/// Sends `GET path` with `Host: host` on an open TLS connection; returns status, headers, body.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn over(tls: tokio_rustls::client::TlsStream<TcpStream>) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1 { sender }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> (http::response::Parts, Bytes) {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }
}

/// Writes `pem` as `name.pem` + `name.key` in `dir`; returns (cert path, key path).
pub fn write_pair(dir: &TempDir, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
    (
        dir.write(&format!("{name}.pem"), &pem.cert),
        dir.write(&format!("{name}.key"), &pem.key),
    )
}

pub fn pair(cert: &Path, key: &Path) -> gatewise::config::CertKeyPaths {
    gatewise::config::CertKeyPaths {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }
}
