//! TLS termination on a listener: the certificate store with our own SNI resolver, the accept
//! step (handshake timeout, plain HTTP on the TLS port answered with a 400), and the reload of
//! certificate files that change on disk.
//!
//! The store is an `ArcSwap` of the loaded certificates: a handshake reads the current set
//! without a lock, a reload swaps in a new set, and connections already established keep the
//! session they negotiated (a certificate is only used during a handshake).
//!
//! Reload polls the files every `reload_interval` and compares their bytes (a hash), rather
//! than watching them: it works the same on every file system, including the symlink swaps of
//! Kubernetes secrets and certbot's `live/` directory, needs no extra crate, and costs two small
//! reads per certificate every few seconds. A set that fails to load (a half-written file, a key
//! that no longer matches) is logged and the previous one kept; it is tried again next time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertKeyPaths, ListenerTlsConfig};
use crate::tls::{self, CertInfo, LoadedCert, PemError};

/// The certificates a listener serves now.
pub struct CertStore {
    current: ArcSwap<Vec<LoadedCert>>,
    paths: Vec<CertKeyPaths>,
    acme: Option<AcmeSide>,
}

/// A listener's automatic certificate (`tls = { acme = ... }`) and the gateway's open
/// TLS-ALPN-01 challenges.
pub struct AcmeSide {
    pub managed: Arc<crate::acme::Managed>,
    pub challenges: Arc<crate::acme::Challenges>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("paths", &self.paths)
            .field("acme", &self.acme.as_ref().map(|a| &a.managed.name))
            .finish()
    }
}

impl CertStore {
    /// Loads every pair; the first error (naming its file) fails the whole load.
    pub fn load(paths: &[CertKeyPaths]) -> Result<CertStore, PemError> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(load_all(paths)?),
            paths: paths.to_vec(),
            acme: None,
        })
    }

    /// The certificate for `sni`: the automatic one if it matches, else the first file whose
    /// names match it, else the first file (default), else the automatic one. `acme_alpn`: the
    /// client offered ALPN `acme-tls/1` (a CA validating TLS-ALPN-01), which gets the open
    /// challenge's certificate for the name.
    fn pick(&self, sni: Option<&str>, acme_alpn: bool) -> Option<Arc<CertifiedKey>> {
        let sni = sni.map(|name| name.to_ascii_lowercase());
        let managed = self.acme.as_ref().and_then(|a| a.managed.current());
        if let (Some(acme), true) = (&self.acme, acme_alpn) {
            let challenge = sni.as_deref().and_then(|n| acme.challenges.tls_alpn01(n));
            if challenge.is_some() {
                return challenge;
            }
        }
        if let (Some(m), Some(name)) = (&managed, &sni) {
            if m.info.matches(name) {
                return Some(m.key.clone());
            }
        }
        let certs = self.current.load();
        let chosen = sni
            .and_then(|name| certs.iter().find(|c| c.info.matches(&name)))
            .or_else(|| certs.first());
        match (chosen, managed) {
            (Some(c), _) => Some(c.key.clone()),
            (None, Some(m)) => Some(m.key.clone()),
            (None, None) => {
                if let Some(acme) = &self.acme {
                    tracing::debug!(certificate = %acme.managed.name, "TLS handshake refused: no ACME certificate yet");
                }
                None
            }
        }
    }

    /// What each certificate says about itself: the files in config order, then the
    /// automatic one (once obtained).
    pub fn infos(&self) -> Vec<CertInfo> {
        let mut infos: Vec<CertInfo> = self.current.load().iter().map(|c| c.info.clone()).collect();
        infos.extend(self.acme.as_ref().and_then(|a| a.managed.info()));
        infos
    }

    /// The automatic certificate of this listener, if it has one configured.
    pub fn acme(&self) -> Option<&Arc<crate::acme::Managed>> {
        self.acme.as_ref().map(|a| &a.managed)
    }

    /// Loads the files again if their bytes changed; returns whether a new set was swapped in.
    pub fn reload_if_changed(&self) -> Result<bool, PemError> {
        let old = self.current.load();
        let mut changed = false;
        for (pair, loaded) in self.paths.iter().zip(old.iter()) {
            let (cert, key) = (read(&pair.cert)?, read(&pair.key)?);
            changed |= tls::fingerprint(&[&cert, &key]) != loaded.fingerprint;
        }
        if !changed {
            return Ok(false);
        }
        self.current.store(Arc::new(load_all(&self.paths)?));
        Ok(true)
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|err| PemError::Read {
        path: path.to_path_buf(),
        err,
    })
}

fn load_all(paths: &[CertKeyPaths]) -> Result<Vec<LoadedCert>, PemError> {
    paths
        .iter()
        .map(|p| tls::load_pair(&p.cert, &p.key))
        .collect()
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_alpn = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == crate::acme::ACME_TLS_ALPN));
        self.pick(hello.server_name(), acme_alpn)
    }
}

/// A listener's TLS side: the rustls server config over its [`CertStore`].
pub struct Terminator {
    acceptor: TlsAcceptor,
    pub store: Arc<CertStore>,
    config: ListenerTlsConfig,
}

impl Terminator {
    /// Loads the certificates and builds the server config: TLS 1.3 and 1.2, ALPN `h2` then
    /// `http/1.1` (the client's order decides among those it offers, rustls picks ours first),
    /// session resumption by tickets whose keys rotate (rustls' ring ticketer: a new key every
    /// 6 hours, the previous one still accepted) and by a session cache.
    pub fn new(config: &ListenerTlsConfig) -> Result<Terminator, String> {
        Self::with_acme(config, None)
    }

    /// [`Terminator::new`] with the listener's automatic certificate; ALPN then also offers
    /// `acme-tls/1`, last, for the CA's TLS-ALPN-01 validation (only a client offering nothing
    /// else gets it).
    pub fn with_acme(
        config: &ListenerTlsConfig,
        acme: Option<AcmeSide>,
    ) -> Result<Terminator, String> {
        let with_acme = acme.is_some();
        let mut store = CertStore::load(&config.certificates).map_err(|e| e.to_string())?;
        store.acme = acme;
        let store = Arc::new(store);
        let mut server = ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if with_acme {
            server
                .alpn_protocols
                .push(crate::acme::ACME_TLS_ALPN.to_vec());
        }
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        Ok(Terminator {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            store,
            config: config.clone(),
        })
    }

    /// Warns about every certificate that has expired or expires within `expiry_warning`.
    pub fn warn_expiry(&self, listener: &str) {
        let now = SystemTime::now();
        for info in self.store.infos() {
            let left = info.seconds_left(now);
            if left < 0 {
                tracing::warn!(listener, subject = %info.subject, names = ?info.names, "TLS certificate has EXPIRED; clients will refuse it");
            } else if (left as u64) < self.config.expiry_warning.as_secs() {
                tracing::warn!(listener, subject = %info.subject, names = ?info.names, days_left = left / 86_400, "TLS certificate expires soon");
            }
        }
    }

    /// Checks the certificate files every `reload_interval`, forever (abort the task to stop).
    pub async fn watch(self: Arc<Self>, listener: String) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let store = self.store.clone();
            // File reads and parsing are blocking work: off the async workers.
            let result = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
            match result {
                Ok(Ok(true)) => {
                    tracing::info!(listener = %listener, "TLS certificates reloaded");
                    self.warn_expiry(&listener);
                }
                Ok(Ok(false)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(listener = %listener, %err, "TLS certificates not reloaded; still serving the previous ones")
                }
                Err(err) => tracing::warn!(listener = %listener, %err, "TLS reload task failed"),
            }
        }
    }

    /// The TLS side of one accepted connection, within the handshake timeout. `None` when the
    /// client stalled, sent something that is not TLS (plain HTTP gets a 400 first), or failed
    /// the handshake: the connection is then closed.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let handshake = async {
            let mut first = [0u8; 1];
            // Peek, so the bytes stay for rustls: 0x16 is a TLS handshake record.
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == 0x16 => {}
                Ok(1) if first[0].is_ascii_uppercase() => {
                    refuse_plain_http(stream).await;
                    return None;
                }
                _ => return None,
            }
            match self.acceptor.accept(stream).await {
                // A TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 §3).
                Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) => {
                    tracing::debug!("answered a TLS-ALPN-01 validation");
                    None
                }
                Ok(tls) => Some(tls),
                Err(err) => {
                    tracing::debug!(%err, "TLS handshake failed");
                    None
                }
            }
        };
        match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(done) => done,
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }
}

/// Body of the answer to plain HTTP on a TLS port (nginx answers the same way, with a 400).
const PLAIN_HTTP_BODY: &str =
    "400 Bad Request: this port speaks HTTPS; the request was sent as plain HTTP. Use https://\n";

/// Answers a plain-HTTP request on the TLS port with a plain-text 400, then closes.
async fn refuse_plain_http(mut stream: TcpStream) {
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        PLAIN_HTTP_BODY.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(PLAIN_HTTP_BODY.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read (and drop) what the client still sends, briefly, so closing with unread request
    // bytes does not turn into a reset that destroys the answer before the client reads it.
    let mut sink = [0u8; 4096];
    let drain = async {
        use tokio::io::AsyncReadExt;
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}
