//! `gatewise doctor --nginx` on configs written in the shapes Debian's nginx package and
//! ingress setups use, in front of in-process upstreams: each misconfiguration is named, with the
//! exit code; a clean config yields no finding.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::upstream::{self, Mock};

/// A Debian-shaped tree: nginx.conf including mime.types, conf.d/*.conf and sites-enabled/*;
/// `site` goes to sites-enabled/default, `conf_d` to conf.d/upstreams.conf.
fn debian_tree(name: &str, conf_d: &str, site: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nginx-{name}"));
    // Fresh each run: a file left by an earlier run would be picked up by the include globs.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::create_dir_all(dir.join("sites-enabled")).unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        "user www-data;\nworker_processes auto;\npid /run/nginx.pid;\ninclude modules-enabled/*.conf;\n\
         events {\n\tworker_connections 768;\n}\n\
         http {\n\tsendfile on;\n\ttcp_nopush on;\n\ttypes_hash_max_size 2048;\n\
         \tinclude mime.types;\n\tdefault_type application/octet-stream;\n\
         \tssl_protocols TLSv1.2 TLSv1.3;\n\tssl_prefer_server_ciphers on;\n\
         \taccess_log /var/log/nginx/access.log;\n\terror_log /var/log/nginx/error.log;\n\
         \tgzip on;\n\tinclude conf.d/*.conf;\n\tinclude sites-enabled/*;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mime.types"),
        "types {\n    text/html html htm;\n    application/json json;\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("conf.d/upstreams.conf"), conf_d).unwrap();
    std::fs::write(dir.join("sites-enabled/default"), site).unwrap();
    dir.join("nginx.conf")
}

/// The ingress-nginx shape of a well-set upstream: keep-alive with HTTP/1.1 and an empty
/// Connection header, max_fails=0.
fn ingress_upstream(addr: &str) -> String {
    format!(
        "upstream app {{\n    server {addr} max_fails=0 fail_timeout=0;\n    keepalive 320;\n    keepalive_timeout 60s;\n    keepalive_requests 10000;\n}}\n"
    )
}

fn site(location_body: &str) -> String {
    format!(
        "server {{\n\tlisten 80 default_server;\n\tlisten [::]:80 default_server;\n\troot /var/www/html;\n\
         \tserver_name _;\n\tlocation / {{\n{location_body}\n\t}}\n\
         \tlocation ~ /\\.ht {{\n\t\tdeny all;\n\t}}\n}}\n"
    )
}

const GOOD_LOCATION: &str = "\t\tproxy_http_version 1.1;\n\t\tproxy_set_header Connection \"\";\n\
    \t\tproxy_set_header Host $host;\n\t\tproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
    \t\tproxy_pass http://app;";

async fn doctor(conf: &PathBuf, extra: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args(["doctor", "--nginx"])
        .arg(conf)
        .args(["--requests", "3"])
        .args(extra)
        .output()
        .await
        .expect("run gatewise");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn findings(out: &str) -> usize {
    out.lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(". ["))
        .count()
}

async fn respond_after(delay: Duration, head_extra: String) -> Mock {
    upstream::raw(move |mut s, _| {
        let head_extra = head_extra.clone();
        async move {
            let mut buf = [0u8; 4096];
            let mut have = Vec::new();
            loop {
                match s.read(&mut buf).await {
                    Ok(n) if n > 0 => have.extend_from_slice(&buf[..n]),
                    _ => return,
                }
                while let Some(i) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                    have.drain(..i + 4);
                    tokio::time::sleep(delay).await;
                    let resp =
                        format!("HTTP/1.1 200 OK\r\n{head_extra}content-length: 2\r\n\r\nok");
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_debian_and_ingress_shaped_config_has_no_finding() {
    let up = upstream::ok("hi").await;
    let conf = debian_tree(
        "clean",
        &ingress_upstream(&up.addr.to_string()),
        &site(GOOD_LOCATION),
    );
    let (code, out) = doctor(&conf, &["--idle-wait", "300ms"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No findings."), "{out}");
    assert!(out.contains("1 upstream block(s), 1 proxy_pass"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_without_http11_and_empty_connection_is_no_pooling() {
    let up = upstream::ok("hi").await;
    // Debian's shape: a location with its own proxy_set_header drops the inherited Connection "".
    let location = "\t\tproxy_set_header Host $host;\n\t\tproxy_pass http://app;";
    let conf = debian_tree(
        "nopool",
        &ingress_upstream(&up.addr.to_string()),
        &site(location),
    );
    let (code, out) = doctor(&conf, &["--idle-wait", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstream app has `keepalive 320`"), "{out}");
    assert!(
        out.contains(
            "without proxy_http_version 1.1 (in force: 1.0) and proxy_set_header Connection \"\""
        ),
        "{out}"
    );
    assert!(out.contains("sites-enabled/default:"), "{out}");
    assert_eq!(findings(&out), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_fails_1_on_a_pool_of_two_and_a_name_resolved_at_start() {
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let conf_d = format!(
        "upstream pair {{\n    server {} max_fails=1 fail_timeout=5s;\n    server localhost:{};\n}}\n",
        a.addr,
        b.addr.port()
    );
    let location = format!(
        "{GOOD_LOCATION}\n\t}}\n\tlocation /pair {{\n\t\tproxy_pass http://pair;\n\t}}\n\tlocation /by-name {{\n\t\tproxy_pass http://localhost:{}/;",
        b.addr.port()
    );
    let conf = debian_tree(
        "fails",
        &(ingress_upstream(&a.addr.to_string()) + &conf_d),
        &site(&location),
    );
    let (code, out) = doctor(&conf, &["--idle-wait", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "server {} in upstream pair has max_fails=1 (fail_timeout 5.0 s) in a pool of 2",
            a.addr
        )),
        "{out}"
    );
    assert!(out.contains("no live upstreams"), "{out}");
    assert!(
        out.contains(&format!(
            "proxy_pass http://localhost:{}/ names a host nginx resolves once, at start",
            b.addr.port()
        )),
        "{out}"
    );
    let by_name = format!(
        "server localhost:{} in upstream pair is a name nginx resolves once",
        b.addr.port()
    );
    assert!(out.contains(&by_name), "{out}");
    assert_eq!(findings(&out), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_idle_close_shorter_than_nginx_reuse_window() {
    let up = upstream::idle_closer(Duration::from_secs(1), None).await;
    let conf = debian_tree(
        "idle",
        &ingress_upstream(&up.addr.to_string()),
        &site(GOOD_LOCATION),
    );
    let (code, out) = doctor(&conf, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("closes idle connections after ≈1."), "{out}");
    assert!(out.contains("keepalive_timeout 60.0 s"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_above_proxy_buffer_size() {
    // An 8 KiB cookie against the 4k buffer Debian's nginx has by default (one page).
    let cookie = format!("set-cookie: session={}\r\n", "x".repeat(8 * 1024));
    let up = respond_after(Duration::ZERO, cookie).await;
    let location = format!("\t\tproxy_buffer_size 4k;\n{GOOD_LOCATION}");
    let conf = debian_tree(
        "buffer",
        &ingress_upstream(&up.addr.to_string()),
        &site(&location),
    );
    let (code, out) = doctor(&conf, &["--idle-wait", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("above proxy_buffer_size 4096 in force at"),
        "{out}"
    );
    assert!(out.contains("upstream sent too big header"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_read_timeout_below_measured_latency() {
    let up = respond_after(Duration::from_millis(400), String::new()).await;
    let location = format!("\t\tproxy_read_timeout 200ms;\n{GOOD_LOCATION}");
    let conf = debian_tree(
        "slow",
        &ingress_upstream(&up.addr.to_string()),
        &site(&location),
    );
    let (code, out) = doctor(&conf, &["--idle-wait", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("at or above proxy_read_timeout 200 ms"),
        "{out}"
    );
    assert!(out.contains("upstream timed out"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_config_is_exit_2() {
    let (code, out) = doctor(&PathBuf::from("/nonexistent/nginx.conf"), &[]).await;
    assert_eq!(code, 2, "{out}");
    // Never panics on garbage: parsed with warnings, still a report.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nginx-garbage");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        "}} http { upstream { server ; } \"unterminated",
    )
    .unwrap();
    let (code, out) = doctor(&dir.join("nginx.conf"), &[]).await;
    assert_eq!(code, 0, "{out}");
}
