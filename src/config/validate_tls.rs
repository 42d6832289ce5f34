//! TLS settings of listeners (`tls = { ... }`) and upstreams (`protocol = "https"` with `ca_file`,
//! `sni`, `client_cert`, `client_key`, `insecure_skip_verify`).
//!
//! Every file named here is loaded once during validation, so that `gatewise check` (and a
//! start) reports an unreadable file, a file without a certificate, or a key that does not
//! match its certificate at the line that names it, instead of at the first handshake.

use std::ops::Range;

use toml::Spanned;

use super::file::{RawCertPair, RawListenerTls, Str};
use super::validate::Cx;
use super::{defaults, CertKeyPaths, ListenerTlsConfig, UpstreamTlsConfig};
use crate::tls;

/// A listener's `tls` table; `None` when it is unusable (errors recorded).
pub(super) fn listener_tls(
    cx: &mut Cx<'_>,
    raw: Spanned<RawListenerTls>,
    field: &str,
) -> Option<ListenerTlsConfig> {
    let span = raw.span();
    let RawListenerTls {
        cert,
        key,
        certificates,
        handshake_timeout,
        reload_interval,
        expiry_warning,
        acme,
    } = raw.into_inner();
    let acme_given = acme.is_some();
    let acme =
        acme.and_then(|a| super::validate_acme::listener_acme(cx, a, &format!("{field}.acme")));
    let f = |k: &str| format!("{field}.{k}");
    let mut pairs = Vec::new();
    match (cert, key, certificates) {
        (None, None, None) if acme_given => {}
        (None, None, None) => {
            cx.err(
                span.clone(),
                field,
                "needs `cert` and `key`, `certificates = [{ cert, key }, ...]`, or `acme = { email, domains }`",
            );
        }
        (cert, key, None) => {
            let raw = RawCertPair { cert, key };
            pairs.extend(cert_pair(cx, raw, span.clone(), field, PAIR_KEYS));
        }
        (None, None, Some(list)) => {
            if list.get_ref().is_empty() {
                cx.err(list.span(), &f("certificates"), "must list at least one");
            }
            for (i, pair) in list.into_inner().into_iter().enumerate() {
                let pair_span = pair.span();
                let pair_field = format!("{field}.certificates[{i}]");
                pairs.extend(cert_pair(
                    cx,
                    pair.into_inner(),
                    pair_span,
                    &pair_field,
                    PAIR_KEYS,
                ));
            }
        }
        (_, _, Some(list)) => {
            cx.err(
                list.span(),
                &f("certificates"),
                "give either `cert` + `key` or `certificates`, not both",
            );
        }
    }
    let config = ListenerTlsConfig {
        certificates: pairs,
        handshake_timeout: cx.duration(
            handshake_timeout,
            &f("handshake_timeout"),
            defaults::TLS_HANDSHAKE_TIMEOUT,
            true,
        ),
        reload_interval: cx.duration(
            reload_interval,
            &f("reload_interval"),
            defaults::TLS_RELOAD_INTERVAL,
            true,
        ),
        expiry_warning: cx.duration(
            expiry_warning,
            &f("expiry_warning"),
            defaults::TLS_EXPIRY_WARNING,
            false,
        ),
        acme,
    };
    (!config.certificates.is_empty() || config.acme.is_some()).then_some(config)
}

/// The key names of a certificate pair on a listener.
const PAIR_KEYS: (&str, &str) = ("cert", "key");

/// One `{ cert, key }`, both files loaded and checked against each other; `names` are the two
/// keys as written (for error locations).
fn cert_pair(
    cx: &mut Cx<'_>,
    raw: RawCertPair,
    span: Range<usize>,
    field: &str,
    names: (&str, &str),
) -> Option<CertKeyPaths> {
    let RawCertPair { cert, key } = raw;
    let (cert_field, key_field) = (
        format!("{field}.{}", names.0),
        format!("{field}.{}", names.1),
    );
    let (Some(cert), Some(key)) = (cert, key) else {
        cx.err(
            span,
            field,
            format!("needs both `{}` and `{}`", names.0, names.1),
        );
        return None;
    };
    let paths = CertKeyPaths {
        cert: cx.path(cert.get_ref()),
        key: cx.path(key.get_ref()),
    };
    match tls::load_pair(&paths.cert, &paths.key) {
        Ok(_) => Some(paths),
        Err(e) => {
            let at = match &e {
                tls::PemError::NoKey { .. }
                | tls::PemError::BadKey { .. }
                | tls::PemError::Mismatch { .. } => (key.span(), key_field),
                tls::PemError::Read { path, .. } if *path == paths.key => (key.span(), key_field),
                _ => (cert.span(), cert_field),
            };
            cx.err(at.0, &at.1, e);
            None
        }
    }
}

/// The raw upstream keys that concern TLS.
pub(super) struct RawUpstreamTls {
    pub ca_file: Option<Str>,
    pub sni: Option<Str>,
    pub client_cert: Option<Str>,
    pub client_key: Option<Str>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

/// An upstream's TLS settings; `https` says whether `protocol = "https"` was set. A TLS key on
/// a plain upstream is an error (it would silently do nothing).
pub(super) fn upstream_tls(
    cx: &mut Cx<'_>,
    raw: RawUpstreamTls,
    https: bool,
    field: &str,
) -> Option<UpstreamTlsConfig> {
    let RawUpstreamTls {
        ca_file,
        sni,
        client_cert,
        client_key,
        insecure_skip_verify,
    } = raw;
    let f = |k: &str| format!("{field}.{k}");
    if !https {
        let spans = [
            ("ca_file", ca_file.as_ref().map(|v| v.span())),
            ("sni", sni.as_ref().map(|v| v.span())),
            ("client_cert", client_cert.as_ref().map(|v| v.span())),
            ("client_key", client_key.as_ref().map(|v| v.span())),
            (
                "insecure_skip_verify",
                insecure_skip_verify.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in spans {
            if let Some(span) = span {
                cx.err(
                    span,
                    &f(key),
                    "only applies with protocol = \"https\", \"h2\" or \"auto\"",
                );
            }
        }
        return None;
    }
    let ca_file = ca_file.and_then(|v| {
        let path = cx.path(v.get_ref());
        match tls::load_certs(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                cx.err(v.span(), &f("ca_file"), e);
                None
            }
        }
    });
    let sni =
        sni.and_then(
            |v| match rustls::pki_types::ServerName::try_from(v.get_ref().as_str()) {
                Ok(_) => Some(v.into_inner()),
                Err(_) => {
                    cx.err(v.span(), &f("sni"), "not a valid DNS name or IP address");
                    None
                }
            },
        );
    let client_cert = match (client_cert, client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let pair = RawCertPair {
                cert: Some(c.clone()),
                key: Some(k),
            };
            cert_pair(cx, pair, c.span(), field, ("client_cert", "client_key"))
        }
        (Some(c), None) => {
            cx.err(c.span(), &f("client_cert"), "needs `client_key` too");
            None
        }
        (None, Some(k)) => {
            cx.err(k.span(), &f("client_key"), "needs `client_cert` too");
            None
        }
    };
    Some(UpstreamTlsConfig {
        ca_file,
        sni,
        client_cert,
        insecure_skip_verify: insecure_skip_verify.is_some_and(Spanned::into_inner),
    })
}
