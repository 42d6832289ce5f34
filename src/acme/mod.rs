//! Automatic certificates from an ACME CA (RFC 8555): obtained at start when none is stored,
//! renewed before expiry, swapped into the listener's SNI resolver without a restart.
//!
//! One [`Managed`] certificate per distinct `tls = { acme = ... }` setting (listeners with the
//! same one share it), each with a task that runs `Managed::run`: load what the state
//! directory holds, sleep until renewal is due, then — holding the certificate's lock file, so
//! that of several instances sharing the directory one orders and the others pick the result
//! up from the files — order, store, swap. Failures are retried with exponential backoff and
//! jitter and reported in `/status` and the metrics with the CA's problem type and detail.
//!
//! Until a first certificate exists, a handshake for its names fails (the resolver has nothing
//! to serve): no placeholder certificate is made, because a client would refuse it all the
//! same, and a clear "no certificate yet" beats a confusing "unknown issuer". The manager logs
//! a warning saying so when it starts without one, and after each failed attempt.

pub mod challenge;
mod http;
mod order;
mod store;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

pub use challenge::{answer_http01, Challenges, ACME_TLS_ALPN};
pub use order::Failure;

use crate::config::AcmeCertConfig;
use crate::gateway::AbortOnDrop;
use crate::tls::{CertInfo, LoadedCert};
use store::Store;

/// The ACME side of one gateway: open challenges and the managed certificates.
#[derive(Default)]
pub struct Acme {
    pub challenges: Arc<Challenges>,
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    config: AcmeCertConfig,
    poll: Duration,
    managed: Arc<Managed>,
    _task: AbortOnDrop,
}

impl Acme {
    /// The managed certificate for `config`, its task started if it is new. `poll` is how often
    /// the stored files are read while another instance holds the lock (the listener's
    /// `reload_interval`).
    pub fn managed(&self, config: &AcmeCertConfig, poll: Duration) -> Arc<Managed> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries
            .iter()
            .find(|e| e.config == *config && e.poll == poll)
        {
            return e.managed.clone();
        }
        let managed = Arc::new(Managed::new(config));
        let task = tokio::spawn(
            managed
                .clone()
                .run(config.clone(), self.challenges.clone(), poll),
        );
        entries.push(Entry {
            config: config.clone(),
            poll,
            managed: managed.clone(),
            _task: AbortOnDrop(task),
        });
        managed
    }

    /// Stops the certificates no listener uses any more (after a reload).
    pub fn retain(&self, in_use: &[Arc<Managed>]) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|e| in_use.iter().any(|m| Arc::ptr_eq(m, &e.managed)));
    }

    /// Every managed certificate, in the order they were configured.
    pub fn list(&self) -> Vec<Arc<Managed>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.managed.clone())
            .collect()
    }
}

/// Where a managed certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// None obtained yet: handshakes for its names fail.
    NoCertificate,
    /// Serving; renewal not due.
    Valid,
    /// Renewal is due: an order is running or waiting for its retry.
    Renewing,
    /// Another process holds the lock and is ordering; its result is read from the files.
    WaitingForLock,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NoCertificate => "no_certificate",
            State::Valid => "valid",
            State::Renewing => "renewing",
            State::WaitingForLock => "waiting_for_lock",
        }
    }
}

/// What `/status` and the metrics say about a managed certificate.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    /// The issuer of the certificate served (its distinguished name).
    pub issuer: Option<String>,
    pub not_after: Option<SystemTime>,
    /// When renewal is (or was) due for the certificate served.
    pub renew_at: Option<SystemTime>,
    /// The ACME account URL, once known.
    pub account: Option<String>,
    pub last_attempt: Option<SystemTime>,
    pub last_result: Option<Result<(), Failure>>,
    /// When the next order is planned (renewal time, or the retry after a failure).
    pub next_attempt: Option<SystemTime>,
    pub orders_ok: u64,
    pub orders_failed: u64,
}

/// One certificate gatewise obtains and renews itself.
pub struct Managed {
    /// Its first domain: names its files, its metric label and its `/status` entry.
    pub name: String,
    pub domains: Vec<String>,
    cert: ArcSwapOption<LoadedCert>,
    status: Mutex<Status>,
}

impl Managed {
    fn new(config: &AcmeCertConfig) -> Managed {
        Managed {
            name: config.domains[0].clone(),
            domains: config.domains.clone(),
            cert: ArcSwapOption::empty(),
            status: Mutex::new(Status {
                state: State::NoCertificate,
                issuer: None,
                not_after: None,
                renew_at: None,
                account: None,
                last_attempt: None,
                last_result: None,
                next_attempt: None,
                orders_ok: 0,
                orders_failed: 0,
            }),
        }
    }

    /// The certificate served now, if there is one yet.
    pub fn current(&self) -> Option<Arc<LoadedCert>> {
        self.cert.load_full()
    }

    /// The served certificate's facts, if there is one.
    pub fn info(&self) -> Option<CertInfo> {
        self.cert.load().as_ref().map(|c| c.info.clone())
    }

    pub fn status(&self) -> Status {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: State) {
        self.lock_status().state = state;
    }

    /// Serves `loaded` from the next handshake on (connections already open keep theirs).
    fn swap(&self, loaded: LoadedCert, renew_before: Duration) {
        let facts = leaf_facts(&loaded);
        let renew = renew_at(&loaded.info, facts.as_ref().map(|f| f.0), renew_before);
        let mut status = self.lock_status();
        status.issuer = facts.map(|f| f.1);
        status.not_after = Some(loaded.info.not_after);
        status.renew_at = Some(renew);
        status.state = State::Valid;
        drop(status);
        self.cert.store(Some(Arc::new(loaded)));
    }

    /// Reads the stored pair and serves it if it is newer than what is served and covers
    /// every name. Returns whether it was swapped in.
    async fn load_stored(&self, store: &Store, renew_before: Duration) -> bool {
        let (cert, key) = (store.cert.clone(), store.key.clone());
        if !cert.exists() {
            return false;
        }
        let loaded = match tokio::task::spawn_blocking(move || crate::tls::load_pair(&cert, &key))
            .await
        {
            Ok(Ok(loaded)) => loaded,
            // A pair mid-write (another instance): read again at the next poll.
            Ok(Err(e)) => {
                tracing::debug!(certificate = %self.name, err = %e, "stored ACME certificate not loaded");
                return false;
            }
            Err(_) => return false,
        };
        if !self.domains.iter().all(|d| loaded.info.matches(d)) {
            // The names changed in the config: this one is not ours any more.
            return false;
        }
        if let Some(current) = self.current() {
            if current.fingerprint == loaded.fingerprint
                || current.info.not_after >= loaded.info.not_after
            {
                return false;
            }
        }
        tracing::info!(certificate = %self.name, file = %store.cert.display(), not_after = %humantime::format_rfc3339(loaded.info.not_after), "ACME certificate loaded from the state directory");
        self.swap(loaded, renew_before);
        true
    }

    /// When the served certificate is due for renewal; `None`: there is none.
    fn due(&self) -> Option<SystemTime> {
        self.lock_status()
            .renew_at
            .filter(|_| self.cert.load().is_some())
    }

    /// Keeps the certificate current, forever (the task is aborted to stop).
    async fn run(
        self: Arc<Self>,
        cfg: AcmeCertConfig,
        challenges: Arc<Challenges>,
        poll: Duration,
    ) {
        let store = Store::new(&cfg);
        let mut failures: u32 = 0;
        let mut retry_at: Option<SystemTime> = None;
        self.load_stored(&store, cfg.renew_before).await;
        if self.current().is_none() {
            tracing::warn!(certificate = %self.name, domains = ?self.domains, directory = %cfg.directory, "no certificate yet: TLS handshakes for these names fail until the first ACME order succeeds");
        }
        loop {
            // What another instance (or we, before a restart) stored.
            self.load_stored(&store, cfg.renew_before).await;
            let now = SystemTime::now();
            let due = self.due().unwrap_or(now);
            let next = retry_at.map_or(due, |r| r.max(due));
            self.lock_status().next_attempt = Some(next);
            if let Ok(wait) = next.duration_since(now) {
                if !wait.is_zero() {
                    if self.current().is_some() && retry_at.is_none() {
                        self.set_state(State::Valid);
                    }
                    tokio::time::sleep(wait.min(poll)).await;
                    continue;
                }
            }
            let lock = match store.try_lock() {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    self.set_state(State::WaitingForLock);
                    tracing::debug!(certificate = %self.name, "another instance holds the lock; waiting for its certificate");
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Err(e) => {
                    self.failed(Failure::local(e), &mut failures, &mut retry_at);
                    continue;
                }
            };
            // It may have been renewed between our read and the lock.
            if self.load_stored(&store, cfg.renew_before).await
                && self.due().is_some_and(|d| d > SystemTime::now())
            {
                retry_at = None;
                failures = 0;
                continue;
            }
            if self.current().is_some() {
                self.set_state(State::Renewing);
            }
            let started = SystemTime::now();
            self.lock_status().last_attempt = Some(started);
            tracing::info!(certificate = %self.name, domains = ?self.domains, challenge = ?cfg.challenge, "ordering an ACME certificate");
            match self.order(&cfg, &store, &challenges).await {
                Ok(()) => {
                    failures = 0;
                    retry_at = None;
                    let mut status = self.lock_status();
                    status.last_result = Some(Ok(()));
                    status.orders_ok += 1;
                }
                Err(failure) => self.failed(failure, &mut failures, &mut retry_at),
            }
            drop(lock);
        }
    }

    /// One order, stored and swapped in.
    async fn order(
        &self,
        cfg: &AcmeCertConfig,
        store: &Store,
        challenges: &Arc<Challenges>,
    ) -> Result<(), Failure> {
        let (account, created) = order::account(cfg, store).await?;
        self.lock_status().account = Some(account.id().to_string());
        if !created {
            tracing::debug!(
                account = account.id(),
                "ACME account read from the state directory"
            );
        }
        let issued = order::obtain(cfg, &account, challenges).await?;
        store
            .save_cert(&issued.chain_pem, &issued.key_pem)
            .map_err(Failure::local)?;
        let (cert, key) = (store.cert.clone(), store.key.clone());
        let loaded = tokio::task::spawn_blocking(move || crate::tls::load_pair(&cert, &key))
            .await
            .map_err(|e| Failure::local(e.to_string()))?
            .map_err(|e| Failure::local(format!("the issued certificate does not load: {e}")))?;
        tracing::info!(certificate = %self.name, not_after = %humantime::format_rfc3339(loaded.info.not_after), "ACME certificate obtained; serving it from the next handshake");
        self.swap(loaded, cfg.renew_before);
        Ok(())
    }

    fn failed(&self, failure: Failure, failures: &mut u32, retry_at: &mut Option<SystemTime>) {
        *failures = failures.saturating_add(1);
        let delay = backoff(*failures, failure.rate_limited());
        let at = SystemTime::now() + delay;
        *retry_at = Some(at);
        let serving = self.current().is_some();
        tracing::warn!(
            certificate = %self.name,
            problem_type = failure.problem_type.as_deref().unwrap_or(""),
            detail = %failure.detail,
            retry_in_s = delay.as_secs(),
            "ACME order failed; {}",
            if serving { "the current certificate keeps serving" } else { "no certificate yet: TLS handshakes for these names fail" }
        );
        let mut status = self.lock_status();
        status.last_result = Some(Err(failure));
        status.orders_failed += 1;
        status.next_attempt = Some(at);
        status.state = if serving {
            State::Renewing
        } else {
            State::NoCertificate
        };
    }
}

/// First retry after a minute, doubling up to 6 hours, ±20% jitter (so a fleet that failed
/// together does not retry together); a rate-limited order waits at least an hour.
fn backoff(failures: u32, rate_limited: bool) -> Duration {
    let base = Duration::from_secs(60).saturating_mul(1 << failures.saturating_sub(1).min(9));
    let base = base.min(Duration::from_secs(6 * 3600));
    let base = if rate_limited {
        base.max(Duration::from_secs(3600))
    } else {
        base
    };
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Renewal time: `renew_before` ahead of expiry, or a third of the lifetime ahead when that is
/// shorter (a 90-day certificate renews 30 days ahead; a short-lived one at 2/3 of its life).
pub fn renew_at(
    info: &CertInfo,
    not_before: Option<SystemTime>,
    renew_before: Duration,
) -> SystemTime {
    let lifetime = not_before
        .and_then(|nb| info.not_after.duration_since(nb).ok())
        .unwrap_or(Duration::MAX);
    let ahead = renew_before.min(lifetime / 3);
    info.not_after.checked_sub(ahead).unwrap_or(info.not_after)
}

/// The leaf's notBefore and issuer.
fn leaf_facts(loaded: &LoadedCert) -> Option<(SystemTime, String)> {
    let der = loaded.key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_before.timestamp();
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?);
    Some((not_before, cert.issuer().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(not_after: SystemTime) -> CertInfo {
        CertInfo {
            names: vec!["a.example".into()],
            not_after,
            subject: String::new(),
        }
    }

    #[test]
    fn renewal_is_30_days_ahead_or_at_two_thirds_of_a_short_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let day = Duration::from_secs(86_400);
        let thirty = Duration::from_secs(30 * 86_400);
        // 90 days: 30 days ahead.
        assert_eq!(
            renew_at(&info(t0 + 90 * day), Some(t0), thirty),
            t0 + 60 * day
        );
        // 6 days: at 4 days.
        assert_eq!(
            renew_at(&info(t0 + 6 * day), Some(t0), thirty),
            t0 + 4 * day
        );
        // 30 seconds: at 20 s.
        let s = Duration::from_secs(30);
        assert_eq!(
            renew_at(&info(t0 + s), Some(t0), thirty),
            t0 + Duration::from_secs(20)
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_waits_an_hour_when_rate_limited() {
        for (n, base) in [(1u32, 60u64), (2, 120), (3, 240), (20, 6 * 3600)] {
            let d = backoff(n, false).as_secs_f64();
            assert!(d >= base as f64 * 0.8 && d <= base as f64 * 1.2, "{n}: {d}");
        }
        assert!(backoff(1, true) >= Duration::from_secs(2880));
    }
}
