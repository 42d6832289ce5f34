//! The answers to the CA's challenges while an order is open: HTTP-01 key authorizations by
//! token (answered on `/.well-known/acme-challenge/TOKEN` before routing, `server/listener.rs`)
//! and TLS-ALPN-01 certificates by name (served by the SNI resolver when the ClientHello offers
//! ALPN `acme-tls/1` and nothing else matters, `server/tls.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::proxy::relay::ClientBody;

/// ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 (RFC 8555 §8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Open challenges of one gateway. Entries live only while their order is open.
#[derive(Default, Debug)]
pub struct Challenges {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 request path, if its token is open.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        lock(&self.http01).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if a challenge for it is open.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn01)
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    pub(super) fn add_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http01).insert(token.to_string(), key_authorization.to_string());
    }

    pub(super) fn remove_http01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    /// Makes and publishes the validation certificate for `name` (RFC 8737 §3): self-signed,
    /// the name as its only SAN, the SHA-256 of the key authorization in a critical
    /// `acmeIdentifier` extension.
    pub(super) fn add_tls_alpn01(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let cert =
            validation_cert(name, digest).map_err(|e| format!("TLS-ALPN-01 certificate: {e}"))?;
        lock(&self.tls_alpn01).insert(name.to_ascii_lowercase(), Arc::new(cert));
        Ok(())
    }

    pub(super) fn remove_tls_alpn01(&self, name: &str) {
        lock(&self.tls_alpn01).remove(&name.to_ascii_lowercase());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn validation_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// The answer to an HTTP-01 validation request, when `req` is one for an open token. Asked on
/// every listener before routing: the CA's request must not reach an upstream (nor be
/// redirected to https, where no token is answered).
pub fn answer_http01<B>(challenges: &Challenges, req: &Request<B>) -> Option<Response<ClientBody>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return None;
    }
    let key_authorization = challenges.http01(req.uri().path())?;
    tracing::debug!(path = req.uri().path(), "answering an HTTP-01 challenge");
    let mut resp = Response::new(ClientBody::full(key_authorization));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_open_tokens_to_get_and_head_only() {
        let c = Challenges::default();
        c.add_http01("tok", "tok.thumb");
        let req = |method: &str, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        let resp = answer_http01(&c, &req("GET", "/.well-known/acme-challenge/tok")).unwrap();
        assert_eq!(resp.status(), 200);
        assert!(answer_http01(&c, &req("HEAD", "/.well-known/acme-challenge/tok")).is_some());
        assert!(answer_http01(&c, &req("POST", "/.well-known/acme-challenge/tok")).is_none());
        assert!(answer_http01(&c, &req("GET", "/.well-known/acme-challenge/other")).is_none());
        assert!(answer_http01(&c, &req("GET", "/tok")).is_none());
        assert_eq!(
            c.http01("/.well-known/acme-challenge/tok").unwrap(),
            "tok.thumb"
        );
        c.remove_http01("tok");
        assert!(answer_http01(&c, &req("GET", "/.well-known/acme-challenge/tok")).is_none());
    }

    #[test]
    fn tls_alpn01_certificate_carries_the_digest_in_a_critical_acme_identifier() {
        let c = Challenges::default();
        let digest = [7u8; 32];
        c.add_tls_alpn01("shop.example.com", &digest).unwrap();
        let cert = c
            .tls_alpn01("SHOP.example.com")
            .expect("found by name, any case");
        let (_, x509) = x509_parser::parse_x509_certificate(&cert.cert[0]).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING (0x04, length 32) holding the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let info = crate::tls::cert_info(&cert.cert[0]).unwrap();
        assert_eq!(info.names, vec!["shop.example.com"]);
        c.remove_tls_alpn01("shop.example.com");
        assert!(c.tls_alpn01("shop.example.com").is_none());
    }
}
