//! One order, RFC 8555 §7.4: the account (stored or created), a new order for the names, the
//! configured challenge answered for each pending authorization, finalization with a fresh key
//! (rcgen's CSR) and the chain downloaded.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::Challenges;
use super::http::AcmeHttp;
use super::store::{self, Store};
use crate::config::{AcmeCertConfig, AcmeChallenge};

/// Why an attempt failed: the ACME problem document's `type` and `detail` when the CA sent
/// one, else what went wrong on our side (CA unreachable, state directory not writable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub problem_type: Option<String>,
    pub detail: String,
}

impl Failure {
    pub fn local(detail: impl Into<String>) -> Failure {
        Failure {
            problem_type: None,
            detail: detail.into(),
        }
    }

    fn problem(p: &instant_acme::Problem) -> Failure {
        let mut detail = p.detail.clone().unwrap_or_default();
        for sub in &p.subproblems {
            let what = sub.detail.as_deref().unwrap_or("");
            detail.push_str(&format!("; {what}"));
        }
        Failure {
            problem_type: p.r#type.clone(),
            detail,
        }
    }

    /// The CA said to slow down (RFC 8555 §6.7 `rateLimited`).
    pub fn rate_limited(&self) -> bool {
        self.problem_type
            .as_deref()
            .is_some_and(|t| t.ends_with(":rateLimited"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem_type {
            Some(t) => write!(f, "{t}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Failure {
        match &e {
            instant_acme::Error::Api(p) => Failure::problem(p),
            _ => {
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail.push_str(&format!(": {s}"));
                    source = s.source();
                }
                Failure::local(detail)
            }
        }
    }
}

/// A certificate just issued: the chain (PEM, leaf first) and its private key (PEM).
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The account of `cfg`'s email at its directory: the stored one, or a new one (then stored).
/// Also says which (for the log and `/status`).
pub async fn account(cfg: &AcmeCertConfig, store: &Store) -> Result<(Account, bool), Failure> {
    let http = || AcmeHttp::new(cfg.ca_bundle.as_deref()).map_err(Failure::local);
    if let Ok(json) = std::fs::read(&store.account) {
        let creds: AccountCredentials = serde_json::from_slice(&json).map_err(|e| {
            Failure::local(format!(
                "{}: not an account file: {e}",
                store.account.display()
            ))
        })?;
        let account = Account::builder_with_http(Box::new(http()?))
            .from_credentials(creds)
            .await?;
        return Ok((account, false));
    }
    let contact = format!("mailto:{}", cfg.email);
    let (account, creds) = Account::builder_with_http(Box::new(http()?))
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| Failure::local(e.to_string()))?;
    store.ensure_dir().map_err(Failure::local)?;
    store::write_private(&store.account, &json).map_err(Failure::local)?;
    tracing::info!(account = account.id(), file = %store.account.display(), "ACME account created");
    Ok((account, true))
}

/// Removes the challenge answers it published when the order ends, however it ends.
struct Published<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_http01(t);
        }
        for n in &self.names {
            self.challenges.remove_tls_alpn01(n);
        }
    }
}

/// How long the CA may take to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// Orders a certificate for `cfg.domains` with `account`.
pub async fn obtain(
    cfg: &AcmeCertConfig,
    account: &Account,
    challenges: &Arc<Challenges>,
) -> Result<Issued, Failure> {
    let ids: Vec<Identifier> = cfg.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut published = Published {
        challenges,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let kind = match cfg.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Failure::local(format!(
                    "authorization for {name} is {other:?}"
                )))
            }
        }
        let Some(mut challenge) = authz.challenge(kind.clone()) else {
            return Err(Failure::local(format!(
                "the CA offers no {kind:?} challenge for {name}"
            )));
        };
        let key_authorization = challenge.key_authorization();
        match cfg.challenge {
            AcmeChallenge::Http01 => {
                challenges.add_http01(&challenge.token, key_authorization.as_str());
                published.tokens.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                challenges
                    .add_tls_alpn01(&name, key_authorization.digest().as_ref())
                    .map_err(Failure::local)?;
                published.names.push(name.clone());
            }
        }
        challenge.set_ready().await?;
    }
    let fallback = match order.poll_ready(&POLL).await {
        Ok(OrderStatus::Ready) => None,
        Ok(status) => Some(Failure::local(format!("order is {status:?}"))),
        Err(instant_acme::Error::Api(p)) => Some(Failure::problem(&p)),
        Err(e) => return Err(e.into()),
    };
    if let Some(fallback) = fallback {
        return Err(invalid_order(&mut order, fallback).await);
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    drop(published);
    Ok(Issued { chain_pem, key_pem })
}

/// The problem that made the order fail: the failed challenge's error (what the CA saw when it
/// connected), else `fallback` (the order's own).
async fn invalid_order(order: &mut instant_acme::Order, fallback: Failure) -> Failure {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                return Failure::problem(p);
            }
        }
    }
    fallback
}
