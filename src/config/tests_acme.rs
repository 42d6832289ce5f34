//! `tls = { acme = ... }` and `[acme]`: the settings as read, and the errors with their lines.

use std::time::Duration;

use super::*;

fn listener(acme: &str) -> String {
    format!(
        r#"
[[listener]]
name = "https"
listen = "127.0.0.1:8443"
tls = {{ acme = {acme} }}

[[route]]
listener = "https"
upstream = "app"

[upstream.app]
targets = ["127.0.0.1:3000"]
"#
    )
}

fn errors(src: &str) -> Vec<String> {
    parse(src, "g.toml")
        .unwrap_err()
        .0
        .iter()
        .map(|e| format!("{}:{}: {}: {}", e.line, e.column, e.field, e.message))
        .collect()
}

#[test]
fn acme_settings_are_read_and_filled_from_the_acme_section() {
    let src = listener(
        r#"{ email = "ops@example.com", domains = ["Shop.Example.com", "www.example.com"] }"#,
    )
        + "\n[acme]\nstaging = true\nstate_dir = \"/var/lib/gw\"\nrenew_before = \"240h\"\n";
    let c = parse(&src, "/etc/g.toml").unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert!(tls.certificates.is_empty());
    let acme = tls.acme.as_ref().unwrap();
    assert_eq!(acme.domains, ["shop.example.com", "www.example.com"]);
    assert_eq!(acme.email, "ops@example.com");
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(acme.directory, defaults::ACME_STAGING_DIRECTORY);
    assert_eq!(acme.state_dir, std::path::PathBuf::from("/var/lib/gw"));
    assert_eq!(acme.renew_before, Duration::from_secs(240 * 3600));
    assert_eq!(acme.ca_bundle, None);
}

#[test]
fn acme_defaults_to_lets_encrypt_production() {
    let src = listener(r#"{ email = "ops@example.com", domains = ["shop.example.com"] }"#)
        + "\n[acme]\nstate_dir = \"s\"\n";
    let c = parse(&src, "/etc/gw/g.toml").unwrap();
    let acme = c.listeners[0].tls.as_ref().unwrap().acme.clone().unwrap();
    assert_eq!(acme.directory, defaults::ACME_DIRECTORY);
    assert_eq!(acme.renew_before, defaults::ACME_RENEW_BEFORE);
    // Relative to the config file.
    assert_eq!(acme.state_dir, std::path::PathBuf::from("/etc/gw/s"));
}

#[test]
fn acme_errors_name_their_line_and_field() {
    let src = listener(
        r#"{ email = "nobody", domains = ["*.example.com", "10.0.0.1", "x"], challenge = "dns-01" }"#,
    ) + "\n[acme]\ndirectory = \"http://acme.example/dir\"\nstaging = true\nca_bundle = \"missing.pem\"\n";
    let e = errors(&src);
    let want = [
        "5:26: listener[0].tls.acme.email: \"nobody\" is not an email address",
        "5:47: listener[0].tls.acme.domains[0]: \"*.example.com\": a wildcard needs the dns-01 challenge",
        "5:64: listener[0].tls.acme.domains[1]: \"10.0.0.1\": an IP address",
        "5:76: listener[0].tls.acme.domains[2]: \"x\" is not a DNS name",
        "5:94: listener[0].tls.acme.challenge: dns-01 is not supported",
        "15:13: acme.directory: give either `directory` or `staging = true`, not both",
        "17:13: acme.ca_bundle: cannot read",
    ];
    for w in want {
        assert!(e.iter().any(|l| l.starts_with(w)), "{w}\nnot in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn http_01_needs_a_plain_listener_and_a_name_belongs_to_one_certificate() {
    let src = listener(
        r#"{ email = "ops@example.com", domains = ["a.example.com"], challenge = "http-01" }"#,
    ) + r#"
[[listener]]
name = "other"
listen = "127.0.0.1:9443"
tls = { acme = { email = "ops@example.com", domains = ["a.example.com", "b.example.com"] } }
[acme]
state_dir = "s"
directory = "https://127.0.0.1:14000/dir"
"#;
    let e = errors(&src);
    assert!(
        e.iter().any(|l| l.starts_with(
            "5:86: listener[0].tls.acme.challenge: \"http-01\" is answered on a plain listener"
        )),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|l| l
                .starts_with("17:55: listener[1].tls.acme.domains: \"a.example.com\" is also in")),
        "{e:#?}"
    );
}
