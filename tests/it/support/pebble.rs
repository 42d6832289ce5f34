//! A real ACME server for the tests: Debian's `pebble`, on free loopback ports, with its
//! challenge ports pointed at the gateway's listeners, and `pebble-challtestsrv` as its DNS
//! server (every name resolves to 127.0.0.1), so the tests can use ordinary names.
//!
//! Pebble serves its API over HTTPS with a certificate made here by a test CA (the bundle
//! gatewise gets as `[acme] ca_bundle`); it issues from its own root, made at each start and
//! read from its management endpoint `/roots/0` (what the test clients trust).
//!
//! Without the binaries the tests are skipped with a message, unless `CI` is set: there they
//! must run (`.ci/run` installs `pebble`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::{tls_connect, TempDir, TestCa, H1};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// Whether pebble is installed; says loudly when it is not (and fails under CI).
pub fn available(test: &str) -> bool {
    let found = Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: pebble is not installed ({PEBBLE}); CI must install the `pebble` package"
        );
        eprintln!("SKIPPED {test}: pebble is not installed (apt-get install pebble)");
    }
    found
}

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed pebble's HTTPS certificate (gatewise's `ca_bundle`).
    pub ca_bundle: PathBuf,
    /// Pebble's issuing root (PEM): what a client of the gateway trusts.
    pub root_pem: String,
    pebble: Child,
    dns: Child,
    pub dir: TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (the DNS server binds both).
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` (the
    /// gateway's listeners), issuing certificates valid for `validity` (pebble's default, five
    /// years, when `None`). Returns once the directory answers.
    pub async fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = TempDir::new();
        let https_ca = TestCa::new("pebble https test ca");
        let pem = https_ca.issue(&["127.0.0.1", "localhost"]);
        let cert = dir.write("pebble.pem", &pem.cert);
        let key = dir.write("pebble.key", &pem.key);
        let ca_bundle = dir.write("pebble-https-ca.pem", &https_ca.cert_pem);
        let (api, mgmt, dns_port, dns_mgmt) = (
            free_tcp_port(),
            free_tcp_port(),
            free_dns_port(),
            free_tcp_port(),
        );
        let validity = validity.map_or(String::new(), |v| {
            format!(r#","certificateValidityPeriod":{}"#, v.as_secs())
        });
        let config = dir.write(
            "pebble.json",
            &format!(
                r#"{{"pebble":{{"listenAddress":"127.0.0.1:{api}","managementListenAddress":"127.0.0.1:{mgmt}","certificate":"{}","privateKey":"{}","httpPort":{http_port},"tlsPort":{tls_port},"ocspResponderURL":"","externalAccountBindingRequired":false{validity}}}}}"#,
                cert.display(),
                key.display()
            ),
        );
        let log = |name: &str| std::fs::File::create(dir.0.join(name)).unwrap();
        let dns = Command::new(CHALLTESTSRV)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let pebble = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates its challenges (no reuse of earlier authorizations).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble starts");
        let listen: SocketAddr = ([127, 0, 0, 1], api).into();
        let mgmt_addr: SocketAddr = ([127, 0, 0, 1], mgmt).into();
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{api}/dir"),
            ca_bundle,
            root_pem: String::new(),
            pebble,
            dns,
            dir,
        };
        // Ready when the management endpoint hands out the root (pebble makes its CA first).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(tls) = tls_connect(mgmt_addr, "127.0.0.1", &https_ca.cert_pem).await {
                let mut h1 = H1::over(tls).await;
                let (parts, body) = h1.get("127.0.0.1", "/roots/0").await;
                if parts.status == 200 && tokio::net::TcpStream::connect(listen).await.is_ok() {
                    pebble.root_pem = String::from_utf8(body.to_vec()).unwrap();
                    break;
                }
            }
            if let Ok(Some(status)) = pebble.pebble.try_wait() {
                panic!("pebble exited ({status}): {}", pebble.log());
            }
            assert!(
                Instant::now() < deadline,
                "pebble not ready: {}",
                pebble.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    /// Stops pebble (the CA becomes unreachable); the DNS server stays.
    pub fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    /// Pebble's output so far (for assertion messages).
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.0.join(n)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }

    /// How many orders pebble has created, from its log.
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// How many accounts pebble has created, from its log.
    pub fn accounts(&self) -> usize {
        self.log().matches("accounts in memory").count()
    }
}
