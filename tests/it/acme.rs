//! Automatic certificates against a real ACME server (Debian's pebble, `support/pebble.rs`):
//! obtained through TLS-ALPN-01 and HTTP-01 and served to a client trusting pebble's root;
//! renewed and swapped under a stream of handshakes; the old certificate kept when the CA is
//! gone at renewal; stored account and certificate reused by a restart; one order for two
//! instances sharing a state directory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatewise::acme::{Managed, State};
use gatewise::gateway::{Gateway, Shared};
use gatewise::lifecycle::upgrade::Inherited;
use gatewise::observe::access_log::AccessLog;

use crate::support::pebble::{self, Pebble};
use crate::support::poll_until as until;
use crate::support::tls::{served_names, tls_connect, TempDir, H1};
use crate::support::upstream;

const NAME: &str = "shop.gatewise.test";

/// A listening socket for the gateway, bound before pebble starts (pebble needs its port).
fn socket() -> std::net::TcpListener {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    s
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    /// The config file (a reload reads it again).
    config: std::path::PathBuf,
    _dir: TempDir,
}

impl Running {
    fn managed(&self) -> Arc<Managed> {
        self.shared.acme.list()[0].clone()
    }

    /// Stops the gateway and everything it runs (renewal included).
    async fn stop(self) {
        let Running { task, shared, .. } = self;
        drop(shared);
        task.abort();
        let _ = task.await;
    }
}

/// The config of a gateway with a TLS listener `tls` (automatic certificate for [`NAME`]) and,
/// with `plain`, a plain listener; the TOML goes through the real parser.
fn config_toml(
    pebble: &Pebble,
    state: &TempDir,
    tls: SocketAddr,
    plain: Option<SocketAddr>,
    challenge: &str,
    upstream: SocketAddr,
) -> String {
    let plain = plain.map_or(String::new(), |p| {
        format!("[[listener]]\nname = \"plain\"\nlisten = \"{p}\"\n")
    });
    format!(
        r#"
access_log = "off"
watch_config = false
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "public"
listen = "{tls}"
tls = {{ acme = {{ email = "ops@gatewise.test", domains = ["{NAME}"], challenge = "{challenge}" }}, reload_interval = "100ms" }}

{plain}
[[route]]
listener = "public"
upstream = "app"

[upstream.app]
targets = ["{upstream}"]

[acme]
directory = "{}"
ca_bundle = "{}"
state_dir = "{}"
"#,
        pebble.directory,
        pebble.ca_bundle.display(),
        state.0.display(),
    )
}

async fn start(toml: &str, sockets: Vec<(&str, std::net::TcpListener)>) -> Running {
    let dir = TempDir::new();
    let path = dir.write("gatewise.toml", toml);
    let config = gatewise::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let inherited = Inherited {
        listeners: sockets
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect(),
        admin: None,
    };
    let gateway = Gateway::bind_inherited(&config, AccessLog::capture().0, inherited)
        .await
        .expect("gateway binds");
    let gateway = gateway.with_config_path(path.clone());
    let shared = gateway.shared();
    Running {
        task: tokio::spawn(gateway.serve()),
        shared,
        config: path,
        _dir: dir,
    }
}

/// The leaf certificate the gateway serves for [`NAME`] (DER), verified against `root`.
async fn served_leaf(addr: SocketAddr, root: &str) -> std::io::Result<Vec<u8>> {
    let tls = tls_connect(addr, NAME, root).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// Pebble's last order attempt's error, for assertion messages.
fn last_result(m: &Managed) -> String {
    format!("{:?} {:?}", m.status().state, m.status().last_result)
}

/// A certificate through TLS-ALPN-01, answered on the TLS listener itself; then an HTTPS
/// request through the gateway with a client trusting only pebble's root.
#[tokio::test]
async fn tls_alpn_01_certificate_is_obtained_and_served() {
    if !pebble::available("tls_alpn_01_certificate_is_obtained_and_served") {
        return;
    }
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    // The HTTP-01 port points nowhere: only TLS-ALPN-01 can succeed.
    let pebble = Pebble::start(1, tls_addr.port(), None).await;
    let state = TempDir::new();
    let up = upstream::ok("hello from the app").await;
    let toml = config_toml(&pebble, &state, tls_addr, None, "tls-alpn-01", up.addr);
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();

    until("the first order", Duration::from_secs(60), || {
        managed.current().is_some() || managed.status().orders_failed > 0
    })
    .await;
    assert!(
        managed.current().is_some(),
        "{}\n{}",
        last_result(&managed),
        pebble.log()
    );

    let tls = tls_connect(tls_addr, NAME, &pebble.root_pem)
        .await
        .expect("the certificate verifies against pebble's root");
    assert_eq!(served_names(&tls), vec![NAME.to_string()]);
    let mut h1 = H1::over(tls).await;
    let (parts, body) = h1.get(NAME, "/").await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], b"hello from the app");

    let status = managed.status();
    assert_eq!(status.state, State::Valid);
    assert_eq!(status.orders_ok, 1);
    assert!(matches!(status.last_result, Some(Ok(()))));
    assert!(
        status
            .issuer
            .as_deref()
            .unwrap_or("")
            .contains("Pebble Intermediate CA"),
        "{:?}",
        status.issuer
    );
    // Stored with private permissions.
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<_> = walk(&state.0);
    assert!(
        files.iter().any(|p| p.ends_with(format!("{NAME}.key"))),
        "{files:?}"
    );
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        if f.is_dir() {
            assert_eq!(mode, 0o700, "{}", f.display());
        } else {
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    gw.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A certificate through HTTP-01, answered on the plain listener before routing (the route of
/// the plain listener would otherwise 404 the CA's request).
#[tokio::test]
async fn http_01_certificate_is_obtained_on_the_plain_listener() {
    if !pebble::available("http_01_certificate_is_obtained_on_the_plain_listener") {
        return;
    }
    let (tls_socket, plain_socket) = (socket(), socket());
    let (tls_addr, plain_addr) = (
        tls_socket.local_addr().unwrap(),
        plain_socket.local_addr().unwrap(),
    );
    // The TLS-ALPN-01 port points nowhere: only HTTP-01 can succeed.
    let pebble = Pebble::start(plain_addr.port(), 1, None).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let toml = config_toml(
        &pebble,
        &state,
        tls_addr,
        Some(plain_addr),
        "http-01",
        up.addr,
    );
    let gw = start(&toml, vec![("public", tls_socket), ("plain", plain_socket)]).await;
    let managed = gw.managed();
    until("the first order", Duration::from_secs(60), || {
        managed.current().is_some() || managed.status().orders_failed > 0
    })
    .await;
    assert!(
        managed.current().is_some(),
        "{}\n{}",
        last_result(&managed),
        pebble.log()
    );
    let tls = tls_connect(tls_addr, NAME, &pebble.root_pem).await.unwrap();
    assert_eq!(served_names(&tls), vec![NAME.to_string()]);
    // The token is gone once the order is done: the plain listener routes as usual again.
    let client = crate::support::client();
    let (parts, _) = crate::support::get(
        &client,
        &format!("http://{plain_addr}/.well-known/acme-challenge/whatever"),
    )
    .await;
    assert_eq!(parts.status, 404);
    gw.stop().await;
}

/// A short validity (pebble's `certificateValidityPeriod`) makes renewal due at 2/3 of the
/// lifetime; the new certificate is swapped in while clients keep handshaking: no handshake
/// fails, and both certificates are seen.
#[tokio::test]
async fn short_validity_renews_and_swaps_under_handshakes_without_failures() {
    if !pebble::available("short_validity_renews_and_swaps_under_handshakes_without_failures") {
        return;
    }
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    let pebble = Pebble::start(1, tls_addr.port(), Some(Duration::from_secs(12))).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let toml = config_toml(&pebble, &state, tls_addr, None, "tls-alpn-01", up.addr);
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();
    until("the first certificate", Duration::from_secs(60), || {
        managed.current().is_some()
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, seen, errors) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
            errors.clone(),
        );
        let root = pebble.root_pem.clone();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match served_leaf(tls_addr, &root).await {
                    Ok(leaf) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let mut seen = seen.lock().unwrap();
                        if !seen.contains(&leaf) {
                            seen.push(leaf);
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(e.to_string());
                    }
                }
            }
        }));
    }
    // Two renewals (the first certificate and two successors), all under handshakes.
    until("two renewals", Duration::from_secs(60), || {
        managed.status().orders_ok >= 3
    })
    .await;
    until(
        "the last certificate served",
        Duration::from_secs(5),
        || seen.lock().unwrap().len() >= 3,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "renewal under load: {ok} handshakes ok, {failed} failed, {} certificates seen, {} orders",
        seen.lock().unwrap().len(),
        managed.status().orders_ok
    );
    assert_eq!(failed, 0, "{:?}", errors.lock().unwrap().first());
    assert!(ok > 50, "{ok}");
    assert_eq!(managed.status().orders_failed, 0);
    gw.stop().await;
}

/// At renewal time the CA is gone: the attempt fails and says why, and the old certificate
/// keeps serving.
#[tokio::test]
async fn ca_unreachable_at_renewal_keeps_the_old_certificate_and_reports() {
    if !pebble::available("ca_unreachable_at_renewal_keeps_the_old_certificate_and_reports") {
        return;
    }
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    let mut pebble = Pebble::start(1, tls_addr.port(), Some(Duration::from_secs(15))).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let toml = config_toml(&pebble, &state, tls_addr, None, "tls-alpn-01", up.addr);
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();
    until("the first certificate", Duration::from_secs(60), || {
        managed.current().is_some()
    })
    .await;
    let first = served_leaf(tls_addr, &pebble.root_pem).await.unwrap();
    pebble.stop();

    // Renewal is due at 10 s of 15.
    until("a failed renewal", Duration::from_secs(30), || {
        managed.status().orders_failed >= 1
    })
    .await;
    let status = managed.status();
    assert_eq!(status.state, State::Renewing);
    let Some(Err(failure)) = &status.last_result else {
        panic!("{:?}", status.last_result)
    };
    assert!(failure.detail.contains(&pebble.directory), "{failure:?}");
    assert!(failure.detail.contains("cannot connect"), "{failure:?}");
    assert!(status.next_attempt.unwrap() > status.last_attempt.unwrap());
    // Still the same certificate, still valid.
    assert_eq!(
        served_leaf(tls_addr, &pebble.root_pem).await.unwrap(),
        first
    );

    // /status and /metrics say so.
    let admin = admin_addr(&gw);
    let client = crate::support::client();
    let (_, body) = crate::support::get(&client, &format!("http://{admin}/status")).await;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entry = &doc["acme"][0];
    assert_eq!(entry["name"], NAME);
    assert_eq!(entry["state"], "renewing");
    assert_eq!(entry["last_result"]["ok"], false);
    assert!(entry["last_result"]["detail"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));
    assert!(entry["issuer"].as_str().unwrap().contains("Pebble"));
    assert!(entry["not_after"].is_string() && entry["last_attempt"].is_string());
    let (_, body) = crate::support::get(&client, &format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        format!("gatewise_acme_orders_total{{certificate=\"{NAME}\",result=\"ok\"}} 1"),
        format!("gatewise_acme_orders_total{{certificate=\"{NAME}\",result=\"failed\"}} 1"),
        format!("gatewise_acme_last_attempt_success{{certificate=\"{NAME}\"}} 0"),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "gatewise_acme_certificate_expiry_seconds{{certificate=\"{NAME}\"}}"
    )));
    gw.stop().await;
}

fn admin_addr(gw: &Running) -> SocketAddr {
    let fd = gw.shared.admin_socket.as_ref().expect("admin listener");
    let std = std::net::TcpListener::from(fd.try_clone().unwrap());
    std.local_addr().unwrap()
}

/// A restart finds the account and certificate in the state directory: no new account, no new
/// order, the same certificate served.
#[tokio::test]
async fn restart_reuses_the_stored_account_and_certificate() {
    if !pebble::available("restart_reuses_the_stored_account_and_certificate") {
        return;
    }
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    let pebble = Pebble::start(1, tls_addr.port(), None).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let toml = config_toml(&pebble, &state, tls_addr, None, "tls-alpn-01", up.addr);
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();
    until("the first certificate", Duration::from_secs(60), || {
        managed.current().is_some()
    })
    .await;
    let first = served_leaf(tls_addr, &pebble.root_pem).await.unwrap();
    assert!(managed.status().account.is_some());
    let account_file: Vec<_> = walk(&state.0)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("account-")
        })
        .collect();
    assert_eq!(account_file.len(), 1, "{account_file:?}");
    let account_before = std::fs::read(&account_file[0]).unwrap();
    drop(managed);
    gw.stop().await;
    let orders_before = pebble.orders();
    assert_eq!(orders_before, 1, "{}", pebble.log());

    // Same listener address (pebble points there), a new process' worth of state.
    let tls_socket = std::net::TcpListener::bind(tls_addr).unwrap();
    tls_socket.set_nonblocking(true).unwrap();
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();
    until("the stored certificate", Duration::from_secs(10), || {
        managed.current().is_some()
    })
    .await;
    assert_eq!(
        served_leaf(tls_addr, &pebble.root_pem).await.unwrap(),
        first
    );
    let status = managed.status();
    assert_eq!(status.state, State::Valid);
    assert_eq!((status.orders_ok, status.orders_failed), (0, 0));
    assert!(status.last_attempt.is_none());
    // Renewal is planned 30 days before expiry of the five-year certificate.
    let renew_at = status.renew_at.unwrap();
    let not_after = status.not_after.unwrap();
    assert_eq!(
        not_after.duration_since(renew_at).unwrap(),
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(pebble.orders(), 1);
    assert_eq!(pebble.accounts(), 1);
    assert_eq!(std::fs::read(&account_file[0]).unwrap(), account_before);
    gw.stop().await;
}

/// Two gateways share a state directory: the one holding the lock orders, the other waits and
/// serves the stored certificate (read from the files), without an order of its own.
#[tokio::test]
async fn two_instances_sharing_a_state_dir_order_once() {
    if !pebble::available("two_instances_sharing_a_state_dir_order_once") {
        return;
    }
    let (a_socket, b_socket) = (socket(), socket());
    let (a_addr, b_addr) = (
        a_socket.local_addr().unwrap(),
        b_socket.local_addr().unwrap(),
    );
    // Pebble validates on A's port: B could never pass a challenge itself.
    let pebble = Pebble::start(1, a_addr.port(), None).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let a = start(
        &config_toml(&pebble, &state, a_addr, None, "tls-alpn-01", up.addr),
        vec![("public", a_socket)],
    )
    .await;
    let ma = a.managed();
    // A holds the lock from before its attempt begins until its certificate is stored.
    until("A's order", Duration::from_secs(30), || {
        ma.status().last_attempt.is_some()
    })
    .await;
    let b = start(
        &config_toml(&pebble, &state, b_addr, None, "tls-alpn-01", up.addr),
        vec![("public", b_socket)],
    )
    .await;
    let mb = b.managed();
    until("both serve a certificate", Duration::from_secs(60), || {
        ma.current().is_some() && mb.current().is_some()
    })
    .await;
    let (sa, sb) = (ma.status(), mb.status());
    assert_eq!((sa.orders_ok, sb.orders_ok), (1, 0), "{sa:?} {sb:?}");
    assert!(sb.last_attempt.is_none(), "{sb:?}");
    assert_eq!(sa.orders_failed + sb.orders_failed, 0, "{sa:?} {sb:?}");
    assert_eq!(
        served_leaf(a_addr, &pebble.root_pem).await.unwrap(),
        served_leaf(b_addr, &pebble.root_pem).await.unwrap()
    );
    assert_eq!(pebble.orders(), 1);
    a.stop().await;
    b.stop().await;
}

/// Before the first certificate exists (here the CA cannot be reached at all), a handshake for
/// the name fails rather than getting a placeholder, and `/status` says why. No pebble needed.
#[tokio::test]
async fn no_certificate_yet_fails_the_handshake_and_reports_why() {
    let dir = TempDir::new();
    let bundle = dir.write(
        "ca.pem",
        &crate::support::tls::TestCa::new("unused ca").cert_pem,
    );
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    let up = upstream::ok("hello").await;
    let toml = format!(
        r#"
access_log = "off"
[admin]
listen = "off"
[[listener]]
name = "public"
listen = "{tls_addr}"
tls = {{ acme = {{ email = "ops@gatewise.test", domains = ["{NAME}"] }} }}
[[route]]
listener = "public"
upstream = "app"
[upstream.app]
targets = ["{}"]
[acme]
directory = "https://{closed}/dir"
ca_bundle = "{}"
state_dir = "{}"
"#,
        up.addr,
        bundle.display(),
        dir.0.join("state").display()
    );
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let managed = gw.managed();
    until("the failed first order", Duration::from_secs(30), || {
        managed.status().orders_failed >= 1
    })
    .await;
    let status = managed.status();
    assert_eq!(status.state, State::NoCertificate);
    let Some(Err(failure)) = &status.last_result else {
        panic!("{:?}", status.last_result)
    };
    assert_eq!(failure.problem_type, None);
    assert!(failure.detail.contains("cannot connect"), "{failure:?}");
    // The retry is planned about a minute later (60 s ± 20%).
    let retry = status
        .next_attempt
        .unwrap()
        .duration_since(status.last_attempt.unwrap())
        .unwrap();
    assert!(
        retry >= Duration::from_secs(47) && retry <= Duration::from_secs(73),
        "{retry:?}"
    );
    let err = tls_connect(
        tls_addr,
        NAME,
        &crate::support::tls::TestCa::new("x").cert_pem,
    )
    .await
    .expect_err("no certificate to serve");
    assert!(err.to_string().contains("alert"), "{err}");
    gw.stop().await;
}

/// A reload that adds a name orders a certificate for the new list and serves it; the manager
/// of the old list stops.
#[tokio::test]
async fn reload_with_a_new_name_orders_and_serves_a_new_certificate() {
    if !pebble::available("reload_with_a_new_name_orders_and_serves_a_new_certificate") {
        return;
    }
    let tls_socket = socket();
    let tls_addr = tls_socket.local_addr().unwrap();
    let pebble = Pebble::start(1, tls_addr.port(), None).await;
    let state = TempDir::new();
    let up = upstream::ok("hello").await;
    let toml = config_toml(&pebble, &state, tls_addr, None, "tls-alpn-01", up.addr);
    let gw = start(&toml, vec![("public", tls_socket)]).await;
    let first = gw.managed();
    until("the first certificate", Duration::from_secs(60), || {
        first.current().is_some()
    })
    .await;

    let www = "www.gatewise.test";
    let changed = toml.replace(
        &format!(r#"domains = ["{NAME}"]"#),
        &format!(r#"domains = ["{NAME}", "{www}"]"#),
    );
    assert_ne!(changed, toml);
    std::fs::write(&gw.config, changed).unwrap();
    let outcome = gw.shared.reload("test").await;
    assert!(outcome.ok, "{}", outcome.message);
    let list = gw.shared.acme.list();
    assert_eq!(list.len(), 1, "the old manager stopped");
    let second = list[0].clone();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(second.domains, vec![NAME.to_string(), www.to_string()]);
    // The stored certificate lacks the new name: a new order.
    until(
        "the certificate for both names",
        Duration::from_secs(60),
        || second.status().orders_ok == 1,
    )
    .await;
    let tls = tls_connect(tls_addr, www, &pebble.root_pem).await.unwrap();
    let mut names = served_names(&tls);
    names.sort();
    assert_eq!(names, vec![NAME.to_string(), www.to_string()]);
    assert_eq!(pebble.orders(), 2);
    // The second order used the stored account.
    assert_eq!(pebble.accounts(), 1);
    drop((first, second));
    gw.stop().await;
}
