//! The HTTP client instant-acme talks to the CA with: hyper's HTTP/1.1 client connection over
//! tokio-rustls (ring), trusting either the system's roots or only the configured `ca_bundle`.
//!
//! Ours rather than instant-acme's `hyper-rustls` feature: that one pulls hyper-rustls and
//! rustls-platform-verifier, and its custom-root constructor takes a single certificate. A
//! connection per request is plenty: an order is a dozen requests every couple of months.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One request to the CA, connection included, may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AcmeHttp {
    tls: TlsConnector,
}

impl AcmeHttp {
    /// A client trusting `ca_bundle`'s certificates only, or the system's roots.
    pub fn new(ca_bundle: Option<&Path>) -> Result<AcmeHttp, String> {
        let mut roots = RootCertStore::empty();
        match ca_bundle {
            Some(path) => {
                for cert in crate::tls::load_certs(path).map_err(|e| e.to_string())? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no system root certificates to verify the ACME server with (install ca-certificates, or set [acme] ca_bundle)".to_string());
                }
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AcmeHttp {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let url = req.uri().to_string();
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(Error::Other(format!("{url}: {e}").into())),
                Err(_) => Err(Error::Other(
                    format!("{url}: no answer within {REQUEST_TIMEOUT:?}").into(),
                )),
            }
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn send(
    tls: TlsConnector,
    req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, BoxError> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme_str() != Some("https") {
        return Err("ACME servers are spoken to over https only".into());
    }
    let host = parts.uri.host().ok_or("no host in the URL")?.to_string();
    let port = parts.uri.port_u16().unwrap_or(443);
    let authority = parts.uri.authority().ok_or("no host in the URL")?.clone();
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Origin form on the wire, the authority in Host.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    parts
        .headers
        .insert(HOST, http::HeaderValue::from_str(authority.as_str())?);
    let body = Full::new(body.collect().await?.to_bytes());
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(BytesResponse::from(http::Response::from_parts(
        parts,
        Full::new(body),
    )))
}
