//! Automatic certificates: a listener's `tls = { acme = { email, domains, challenge } }` and the
//! `[acme]` section (`directory` or `staging`, `ca_bundle`, `state_dir`, `renew_before`).
//!
//! Nothing here contacts the CA: `gatewise check --offline` validates an ACME config fully. The
//! CA bundle is read (a missing or empty file is an error at its line); the state directory is
//! only named, created at start.

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::file::{RawAcme, RawListenerAcme};
use super::validate::Cx;
use super::{defaults, AcmeCertConfig, AcmeChallenge, ListenerConfig};

/// Where a listener's `acme` table and its keys were written.
pub(super) struct AcmeAt {
    pub field: String,
    pub challenge: Range<usize>,
    pub domains: Range<usize>,
}

/// A listener's `acme` table, with the `[acme]` settings at their defaults (filled in by
/// [`global`] once every listener is read); `None` when unusable (errors recorded).
pub(super) fn listener_acme(
    cx: &mut Cx<'_>,
    raw: Spanned<RawListenerAcme>,
    field: &str,
) -> Option<AcmeCertConfig> {
    let span = raw.span();
    let RawListenerAcme {
        email,
        domains,
        challenge,
    } = raw.into_inner();
    let f = |k: &str| format!("{field}.{k}");
    cx.acme_at.push(AcmeAt {
        field: field.to_string(),
        challenge: challenge.as_ref().map_or(span.clone(), |c| c.span()),
        domains: domains.as_ref().map_or(span.clone(), |d| d.span()),
    });
    let email = match email {
        None => {
            cx.missing(
                span.clone(),
                &f("email"),
                "required: the ACME account's contact address",
            );
            None
        }
        Some(e) if !valid_email(e.get_ref()) => {
            cx.err(
                e.span(),
                &f("email"),
                format!("{:?} is not an email address", e.get_ref()),
            );
            None
        }
        Some(e) => Some(e.into_inner()),
    };
    let mut names = Vec::new();
    match domains {
        None => cx.missing(
            span.clone(),
            &f("domains"),
            "required: the names to get a certificate for",
        ),
        Some(list) if list.get_ref().is_empty() => {
            cx.err(list.span(), &f("domains"), "must list at least one name")
        }
        Some(list) => {
            for (i, d) in list.into_inner().into_iter().enumerate() {
                let name = d.get_ref().to_ascii_lowercase();
                match domain_problem(&name) {
                    Some(problem) => cx.err(d.span(), &format!("{field}.domains[{i}]"), problem),
                    None if names.contains(&name) => cx.err(
                        d.span(),
                        &format!("{field}.domains[{i}]"),
                        format!("{name:?} is listed twice"),
                    ),
                    None => names.push(name),
                }
            }
        }
    }
    let challenge = match challenge {
        None => Some(AcmeChallenge::TlsAlpn01),
        Some(c) => match c.get_ref().as_str() {
            "tls-alpn-01" => Some(AcmeChallenge::TlsAlpn01),
            "http-01" => Some(AcmeChallenge::Http01),
            "dns-01" => {
                cx.err(c.span(), &f("challenge"), "dns-01 is not supported (it needs a DNS provider's API); use \"tls-alpn-01\" or \"http-01\"");
                None
            }
            other => {
                cx.err(
                    c.span(),
                    &f("challenge"),
                    format!("unknown challenge {other:?}, expected \"tls-alpn-01\" or \"http-01\""),
                );
                None
            }
        },
    };
    let (Some(email), Some(challenge)) = (email, challenge) else {
        return None;
    };
    if names.is_empty() {
        return None;
    }
    Some(AcmeCertConfig {
        email,
        domains: names,
        challenge,
        directory: defaults::ACME_DIRECTORY.to_string(),
        ca_bundle: None,
        state_dir: PathBuf::new(),
        renew_before: defaults::ACME_RENEW_BEFORE,
    })
}

/// The `[acme]` section, applied to every listener's `acme`; also the checks that need every
/// listener: `http-01` needs a plain listener, and a name belongs to one certificate only.
pub(super) fn global(
    cx: &mut Cx<'_>,
    raw: Option<Spanned<Option<RawAcme>>>,
    listeners: &mut [ListenerConfig],
) {
    let (span, raw) = match raw {
        Some(r) => (Some(r.span()), r.into_inner()),
        None => (None, None),
    };
    let RawAcme {
        directory,
        staging,
        ca_bundle,
        state_dir,
        renew_before,
    } = raw.unwrap_or(RawAcme {
        directory: None,
        staging: None,
        ca_bundle: None,
        state_dir: None,
        renew_before: None,
    });
    let staging_on = staging.as_ref().is_some_and(|s| *s.get_ref());
    let directory = match (directory, staging_on) {
        (Some(d), true) => {
            cx.err(
                d.span(),
                "acme.directory",
                "give either `directory` or `staging = true`, not both",
            );
            defaults::ACME_STAGING_DIRECTORY.to_string()
        }
        (Some(d), false) => {
            if let Err(problem) = directory_problem(d.get_ref()) {
                cx.err(d.span(), "acme.directory", problem);
            }
            d.into_inner()
        }
        (None, true) => defaults::ACME_STAGING_DIRECTORY.to_string(),
        (None, false) => defaults::ACME_DIRECTORY.to_string(),
    };
    let ca_bundle = ca_bundle.and_then(|c| {
        let path = cx.path(c.get_ref());
        match crate::tls::load_certs(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                cx.err(c.span(), "acme.ca_bundle", e);
                None
            }
        }
    });
    let renew_before = cx.duration(
        renew_before,
        "acme.renew_before",
        defaults::ACME_RENEW_BEFORE,
        true,
    );
    let users: Vec<usize> = (0..listeners.len())
        .filter(|&i| listeners[i].tls.as_ref().is_some_and(|t| t.acme.is_some()))
        .collect();
    let state_dir = match state_dir {
        Some(d) if d.get_ref().is_empty() => {
            cx.err(d.span(), "acme.state_dir", "must not be empty");
            PathBuf::new()
        }
        Some(d) => cx.path(d.get_ref()),
        None => match default_state_dir() {
            Some(d) => d,
            None => {
                if !users.is_empty() {
                    cx.err(
                        span.clone().unwrap_or(0..0),
                        "acme.state_dir",
                        "required here: neither XDG_DATA_HOME nor HOME is set to derive the default from",
                    );
                }
                PathBuf::new()
            }
        },
    };
    let has_plain = listeners.iter().any(|l| l.tls.is_none());
    let mut owners: Vec<(String, Vec<String>)> = Vec::new();
    // Spans by position; when a listener was dropped for its errors the order is off, and the
    // top of the file is named instead (the run fails on those errors anyway).
    let at: Vec<AcmeAt> = std::mem::take(&mut cx.acme_at);
    let at = |n: usize| at.get(n).filter(|_| at.len() == users.len());
    for (n, &i) in users.iter().enumerate() {
        let l = &mut listeners[i];
        let Some(acme) = l.tls.as_mut().and_then(|t| t.acme.as_mut()) else {
            continue;
        };
        acme.directory = directory.clone();
        acme.ca_bundle = ca_bundle.clone();
        acme.state_dir = state_dir.clone();
        acme.renew_before = renew_before;
        let (field, challenge_at, domains_at) = match at(n) {
            Some(a) => (a.field.clone(), a.challenge.clone(), a.domains.clone()),
            None => (format!("listener.{}.tls.acme", l.name), 0..0, 0..0),
        };
        if acme.challenge == AcmeChallenge::Http01 && !has_plain {
            cx.err(
                challenge_at,
                &format!("{field}.challenge"),
                "\"http-01\" is answered on a plain listener (port 80), and this config has none; add one or use \"tls-alpn-01\"",
            );
        }
        for name in &acme.domains {
            if let Some((other, _)) = owners
                .iter()
                .find(|(_, set)| set.contains(name) && *set != acme.domains)
            {
                cx.err(
                    domains_at.clone(),
                    &format!("{field}.domains"),
                    format!("{name:?} is also in the acme certificate of listener {other:?} with other names; give both listeners the same list"),
                );
            }
        }
        owners.push((l.name.clone(), acme.domains.clone()));
    }
}

/// `$XDG_DATA_HOME/gatewise`, else `~/.local/share/gatewise`.
pub fn default_state_dir() -> Option<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    nonempty("XDG_DATA_HOME")
        .map(|d| PathBuf::from(d).join("gatewise"))
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/share/gatewise")))
}

fn valid_email(e: &str) -> bool {
    matches!(e.split_once('@'), Some((user, host)) if !user.is_empty() && host.contains('.') && !e.contains(char::is_whitespace))
}

/// Why `name` cannot be in an ACME order, if it cannot.
fn domain_problem(name: &str) -> Option<String> {
    if name.starts_with("*.") {
        return Some(format!("{name:?}: a wildcard needs the dns-01 challenge, which gatewise does not do; list the names"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!(
            "{name:?}: an IP address; ACME certificates here are for DNS names"
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Some(format!(
            "{name:?} is not a DNS name with a dot (letters, digits, hyphens)"
        ));
    }
    None
}

/// Why `url` cannot be an ACME directory: RFC 8555 §6.1 wants HTTPS.
fn directory_problem(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), _) => Err(format!(
            "{url:?}: ACME directories are HTTPS only (RFC 8555 §6.1)"
        )),
        _ => Err(format!("{url:?} must be an https:// URL")),
    }
}
