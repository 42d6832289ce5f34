//! Certificates and keys on disk, shared by both TLS sides: the listener (termination, in
//! `server/tls.rs`), the upstream connector (`upstream/tls.rs`) and config validation, which
//! loads every file once so that `check` reports a missing file or a mismatched key with the
//! line that names it.
//!
//! The crypto provider is *ring*, chosen for every rustls object here: it builds with a C
//! compiler alone (aws-lc-rs needs cmake and takes minutes longer on a 2-core CI machine), and
//! for the ECDSA P-256 and RSA-2048 handshakes a proxy does, ring's speed is on par.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The one crypto provider every rustls config in gatewise is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A problem with a certificate or key file, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {err}", path.display())]
    BadKey { path: PathBuf, err: rustls::Error },
    #[error("{}: the key does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: cannot parse the certificate: {err}", path.display())]
    BadCertificate { path: PathBuf, err: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|err| PemError::Read {
        path: path.to_path_buf(),
        err,
    })
}

/// Every certificate in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| PemError::NoKey {
        path: path.to_path_buf(),
    })
}

/// A certificate chain and its key, checked to belong together, with the leaf's facts.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// What the files held when loaded, to tell a real change from a touched file.
    pub fingerprint: u64,
}

/// What the leaf certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (lower-case, `*.` kept for wildcards) and IP addresses it is valid for.
    pub names: Vec<String>,
    pub not_after: SystemTime,
    pub subject: String,
}

impl CertInfo {
    /// Seconds from `now` until the certificate expires; negative once it has.
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }

    /// Whether this certificate is valid for `name` (exact, or one-label wildcard).
    pub fn matches(&self, name: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => n == name,
        })
    }
}

/// Loads `cert` and `key`, checks that the key signs for the certificate, and reads the leaf.
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedCert, PemError> {
    let chain = load_certs(cert)?;
    let der_key = load_key(key)?;
    let fingerprint = fingerprint(&[&read(cert)?, &read(key)?]);
    let signing = provider()
        .key_provider
        .load_private_key(der_key)
        .map_err(|err| PemError::BadKey {
            path: key.to_path_buf(),
            err,
        })?;
    let info = cert_info(&chain[0]).map_err(|err| PemError::BadCertificate {
        path: cert.to_path_buf(),
        err,
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // A key type rustls cannot compare is let through; the handshake still proves it.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(PemError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
        fingerprint,
    })
}

/// Names, expiry and subject of a DER certificate.
pub fn cert_info(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        // No SAN: clients ignore the CN today, but it is still the best name to select by.
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    Ok(CertInfo {
        names,
        not_after,
        subject: cert.subject().to_string(),
    })
}

/// A cheap content hash (not for security: only to notice that a file's bytes changed).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(names: &[&str]) -> CertInfo {
        CertInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after: SystemTime::UNIX_EPOCH,
            subject: String::new(),
        }
    }

    #[test]
    fn wildcards_match_one_label_only() {
        let c = info(&["*.example.com", "example.org"]);
        assert!(c.matches("a.example.com"));
        assert!(!c.matches("a.b.example.com"));
        assert!(!c.matches("example.com"));
        assert!(!c.matches(".example.com"));
        assert!(c.matches("example.org"));
        assert!(!c.matches("www.example.org"));
    }

    #[test]
    fn seconds_left_is_negative_once_expired() {
        let mut c = info(&[]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        c.not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1600);
        assert_eq!(c.seconds_left(now), 600);
        c.not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(400);
        assert_eq!(c.seconds_left(now), -600);
    }
}
