//! TLS to upstreams: the client settings of one `protocol = "https"` upstream, and the naming of
//! handshake failures as causes.
//!
//! Trust: the system's roots by default (read once with `rustls-native-certs`, so the host's own
//! trust store, including private CAs added with `update-ca-certificates`, is what counts, as
//! with curl or nginx), or only the `ca_file` bundle when one is set (a private CA's upstream
//! should not also be trusted on a public CA's word).

use std::io;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::cause::Cause;
use crate::config::{UpstreamProtocol, UpstreamTlsConfig};
use crate::tls;

/// The TLS client of one upstream, shared by its targets' pools and its health checks.
#[derive(Debug)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    /// The `sni` override; `None` uses each target's own host.
    pub sni: Option<ServerName<'static>>,
}

impl TlsClient {
    /// Builds the client from validated settings (files are read again: they may have changed).
    /// `protocol` picks the ALPN offer: `h2` → `h2`; `auto` → `h2`, `http/1.1`; else `http/1.1`.
    pub fn new(cfg: &UpstreamTlsConfig, protocol: UpstreamProtocol) -> Result<TlsClient, String> {
        let UpstreamTlsConfig {
            ca_file,
            sni,
            client_cert,
            insecure_skip_verify,
        } = cfg;
        let builder = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if *insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(tls::provider())))
        } else {
            let roots = match ca_file {
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    for cert in tls::load_certs(path).map_err(|e| e.to_string())? {
                        roots
                            .add(cert)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    Arc::new(roots)
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match client_cert {
            Some(pair) => {
                let chain = tls::load_certs(&pair.cert).map_err(|e| e.to_string())?;
                let key = tls::load_key(&pair.key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", pair.key.display()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let sni = match sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("sni {name:?} is not a DNS name or IP address"))?,
            ),
            None => None,
        };
        Ok(TlsClient {
            config: Arc::new(config),
            sni,
        })
    }
}

/// The system's trust store, read once per process (it takes milliseconds and does not change
/// under a running gateway often enough to matter).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system root certificates found{why}: install the ca-certificates \
                     package or set ca_file"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// A handshake failure as a cause and the words for `details`. `first_bytes` are the first
/// bytes the target sent, which tell a plain-HTTP server from a broken TLS one.
pub fn handshake_failure(err: &io::Error, first_bytes: &[u8], sni: &str) -> (Cause, String) {
    if first_bytes.starts_with(b"HTTP/") {
        return (
            Cause::TlsProtocolError,
            "target speaks plain HTTP; protocol = \"https\" is set".to_string(),
        );
    }
    let Some(tls_err) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        // The socket failed mid-handshake (reset, closed): the target hung up on our hello.
        return (
            Cause::TlsProtocolError,
            format!("TLS handshake failed: {err}"),
        );
    };
    tls_error_words(tls_err, sni)
}

/// The rustls error behind a failed exchange, if there is one: with TLS 1.3 a target that
/// refuses our client certificate says so only after our side finished the handshake, so the
/// alert arrives while the response is awaited, wrapped in hyper's and the socket's errors.
pub fn rustls_error_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        next = e.source();
    }
    None
}

/// A rustls error as a cause and words for `details`; `sni` is the name that was verified.
pub fn tls_error_words(tls_err: &rustls::Error, sni: &str) -> (Cause, String) {
    match tls_err {
        rustls::Error::InvalidCertificate(cert) => {
            (Cause::TlsCertificateError, certificate_words(cert, sni))
        }
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateRequired
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::AccessDenied => (
                    Cause::TlsCertificateError,
                    format!("target refused our client certificate (alert {alert:?})"),
                ),
                _ => (
                    Cause::TlsProtocolError,
                    format!("target ended the handshake (alert {alert:?})"),
                ),
            }
        }
        other => (Cause::TlsProtocolError, format!("TLS handshake: {other}")),
    }
}

/// "certificate expired", "unknown issuer", "name mismatch: ..." — the reason in an operator's
/// words, with the name that was checked.
fn certificate_words(err: &CertificateError, sni: &str) -> String {
    match err {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".to_string()
        }
        CertificateError::UnknownIssuer => {
            "unknown issuer (self-signed or a private CA: set ca_file)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("name mismatch: certificate is not valid for {sni:?}")
        }
        CertificateError::Revoked => "certificate revoked".to_string(),
        other => format!("bad certificate: {other:?}"),
    }
}

/// `insecure_skip_verify = true`: any certificate is accepted, but the handshake signatures are
/// still checked (so the session is at least with whoever holds the presented key).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
