//! The admin listener: the endpoint list, content types, the token, `/status` as JSON and as a
//! page — the page rendered by a real headless Chromium and read back from its DOM.

use std::time::Duration;

use bytes::Bytes;
use gatewise::config::Config;
use http_body_util::Full;

use crate::support::{client, config, get, send, start, upstream};

fn with_admin(mut c: Config, token: Option<&str>) -> Config {
    c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    c.admin.token = token.map(String::from);
    c
}

fn content_type(parts: &http::response::Parts) -> &str {
    parts.headers["content-type"].to_str().unwrap()
}

#[tokio::test]
async fn every_admin_answer_has_a_content_type_and_the_index_lists_the_endpoints() {
    let up = upstream::ok("hi").await;
    let gw = start(with_admin(config(&[up.addr]), None)).await;
    let admin = gw.admin.unwrap();
    let c = client();
    let (parts, body) = get(&c, &format!("http://{admin}/")).await;
    assert_eq!(parts.status, 200);
    assert_eq!(content_type(&parts), "text/plain; charset=utf-8");
    let index = String::from_utf8_lossy(&body);
    for endpoint in ["/live", "/ready", "/status", "/metrics", "POST /reload"] {
        assert!(index.contains(endpoint), "{index}");
    }
    for (path, want) in [
        ("/live", "text/plain; charset=utf-8"),
        ("/ready", "text/plain; charset=utf-8"),
        ("/status", "application/json"),
        ("/status?format=html", "text/html; charset=utf-8"),
        ("/metrics", gatewise::observe::metrics::CONTENT_TYPE),
        ("/nope", "text/plain; charset=utf-8"),
        ("/reload", "text/plain; charset=utf-8"),
    ] {
        let (parts, _) = get(&c, &format!("http://{admin}{path}")).await;
        assert_eq!(content_type(&parts), want, "{path}");
    }
    // Without a config file there is nothing to reload: said plainly, as JSON.
    let post = http::Request::post(format!("http://{admin}/reload"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let (parts, body) = send(&c, post).await;
    assert_eq!(parts.status, 422);
    assert_eq!(content_type(&parts), "application/json");
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["ok"], false);
    assert!(answer["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no config file"));
}

#[tokio::test]
async fn status_lists_routes_with_their_listener_host_path_and_upstream() {
    let up = upstream::ok("hi").await;
    let gw = start(with_admin(config(&[up.addr]), None)).await;
    let (_, body) = get(&client(), &format!("http://{}/status", gw.admin.unwrap())).await;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        doc["routes"][0],
        serde_json::json!({
            "name": "*/", "listener": "public", "host": "*", "path_prefix": "/",
            "upstream": "default",
        })
    );
    let target = &doc["upstreams"]["default"]["targets"][0];
    assert_eq!(target["target"], up.addr.to_string());
    assert_eq!(target["state"], "healthy");
    assert_eq!(doc["generation"], 1);
}

#[tokio::test]
async fn a_token_guards_everything_but_live_and_ready() {
    let up = upstream::ok("hi").await;
    let gw = start(with_admin(config(&[up.addr]), Some("s3cret"))).await;
    let admin = gw.admin.unwrap();
    let c = client();
    let with = |path: &str, auth: Option<&str>| {
        let mut req = http::Request::get(format!("http://{admin}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(Full::<Bytes>::default()).unwrap()
    };
    for path in ["/live", "/ready"] {
        assert_eq!(send(&c, with(path, None)).await.0.status, 200, "{path}");
    }
    for path in ["/", "/status", "/metrics"] {
        let (parts, _) = send(&c, with(path, None)).await;
        assert_eq!(parts.status, 401, "{path}");
        assert_eq!(parts.headers["www-authenticate"], "Bearer");
        let wrong = send(&c, with(path, Some("Bearer s3cre7"))).await.0.status;
        assert_eq!(wrong, 401, "{path}");
        let right = send(&c, with(path, Some("Bearer s3cret"))).await.0.status;
        assert_eq!(right, 200, "{path}");
    }
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let src = |admin: &str| {
        format!(
            "[admin]\n{admin}\n[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"a\"\n[upstream.a]\ntargets = [\"127.0.0.1:1\"]\n"
        )
    };
    let err = gatewise::config::parse(&src("listen = \"0.0.0.0:9901\""), "g.toml").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("g.toml:2:10: admin.listen: 0.0.0.0:9901 is not a loopback address"),
        "{text}"
    );
    let ok = gatewise::config::parse(&src("listen = \"0.0.0.0:9901\"\ntoken = \"abc\""), "g.toml")
        .unwrap();
    assert_eq!(ok.admin.token.as_deref(), Some("abc"));
}

/// Headless Chromium renders `/status?format=html`; the test reads the DOM Chromium built and
/// writes a screenshot (`GATEWISE_SCREENSHOT=path`, how docs/status-page.png was made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_every_target_and_its_state_in_chromium() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        // CI installs Chromium (.ci/run); a developer machine without it skips loudly.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed: .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("SKIPPED: chromium not installed (apt-get install chromium)");
        return;
    };
    let (good, down) = (upstream::ok("hi").await, upstream::closed_port().await);
    let mut c = with_admin(config(&[good.addr, down]), None);
    let mut health = gatewise::config::HealthConfig::http("/");
    health.kind = gatewise::config::HealthCheckKind::Tcp;
    health.interval = Duration::from_millis(100);
    health.rise = 1;
    health.fall = 1;
    c.upstreams.values_mut().next().unwrap().health = Some(health);
    let gw = start(c).await;
    let admin = gw.admin.unwrap();
    let url = format!("http://{admin}/status?format=html");
    // Wait until both first checks have answered (the page shows states, not guesses).
    let json = format!("http://{admin}/status");
    loop {
        let (_, body) = get(&client(), &json).await;
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let states: Vec<String> = doc["upstreams"]["default"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["state"].as_str().unwrap().to_string())
            .collect();
        if states == ["healthy", "unhealthy"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = std::env::temp_dir().join(format!("gatewise-chromium-{}", std::process::id()));
    let (url2, profile2) = (url.clone(), profile.clone());
    let dom = tokio::task::spawn_blocking(move || {
        run_chromium(chromium, &profile2, &["--dump-dom".into(), url2])
    })
    .await
    .unwrap();
    let good_row = format!(
        "<tr class=\"state-healthy\"><td data-field=\"target\">{}</td><td data-field=\"state\">healthy</td>",
        good.addr
    );
    let down_row = format!(
        "<tr class=\"state-unhealthy\"><td data-field=\"target\">{down}</td><td data-field=\"state\">unhealthy</td>"
    );
    assert!(dom.contains(&good_row), "{dom}");
    assert!(dom.contains(&down_row), "{dom}");
    assert!(
        dom.contains("not ready") || dom.contains("ready: every route"),
        "{dom}"
    );
    if let Some(shot) = std::env::var_os("GATEWISE_SCREENSHOT") {
        let shot = std::path::PathBuf::from(shot);
        let profile = profile.clone();
        tokio::task::spawn_blocking(move || {
            run_chromium(
                chromium,
                &profile,
                &[
                    format!("--screenshot={}", shot.display()),
                    "--window-size=1100,560".into(),
                    url,
                ],
            )
        })
        .await
        .unwrap();
    }
    let _ = std::fs::remove_dir_all(&profile);
}

/// Headless Chromium as the machine's probe runs it (no network beyond loopback); stdout.
fn run_chromium(chromium: &str, profile: &std::path::Path, extra: &[String]) -> String {
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
