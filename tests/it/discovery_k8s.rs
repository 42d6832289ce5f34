//! Kubernetes discovery against the API-server stand-in (`support::kube`): the source's reports
//! as the slices change, a 410 that forces a re-list, a dropped watch, an unreachable API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatewise::config::Discovery;
use gatewise::discovery::kubernetes::{Kubernetes, KubernetesSettings};
use gatewise::discovery::{Discovered, Readiness, Report, Source};
use http::Method;
use http_body_util::Full;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::kube::{slice, FakeApi, Pod};
use crate::support::traffic;

fn settings(api: &str) -> KubernetesSettings {
    KubernetesSettings {
        service: "app".to_string(),
        namespace: Some("default".to_string()),
        port: "http".to_string(),
        kubeconfig: None,
        api_server: Some(api.to_string()),
    }
}

/// Runs the source; its reports arrive on the receiver.
fn run_source(api: &str) -> (mpsc::Receiver<Report>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(16);
    let source = Box::new(Kubernetes {
        settings: settings(api),
        upstream: "app".to_string(),
    });
    (rx, tokio::spawn(source.run(tx)))
}

async fn next_report(rx: &mut mpsc::Receiver<Report>) -> Report {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a report in time")
        .expect("the source is running")
}

fn targets(r: Report) -> Vec<(String, Readiness)> {
    match r {
        Report::Targets(t) => t
            .into_iter()
            .map(|Discovered { addr, readiness }| (addr, readiness))
            .collect(),
        Report::Failed(why) => panic!("expected targets, got a failure: {why}"),
    }
}

fn ready(addr: &str) -> (String, Readiness) {
    (addr.to_string(), Readiness::Ready)
}

fn draining(addr: &str) -> (String, Readiness) {
    (addr.to_string(), Readiness::Draining)
}

#[tokio::test]
async fn watch_events_become_reports_and_a_relist_after_410_reports_nothing_unchanged() {
    let api = FakeApi::start("default").await;
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.1", Pod::Ready), ("10.0.0.2", Pod::Ready)],
    ));
    api.apply(slice(
        "other-x1",
        "other",
        8080,
        &[("10.9.9.9", Pod::Ready)],
    ));
    let (mut rx, task) = run_source(&api.url());
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080"), ready("10.0.0.2:8080")]
    );
    api.wait_for("a watch", |s| s.open_watches == 1).await;

    // A rolling step: a new pod starts, an old one terminates, then the new one is ready.
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[
            ("10.0.0.1", Pod::Terminating),
            ("10.0.0.2", Pod::Ready),
            ("10.0.0.3", Pod::Starting),
        ],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![draining("10.0.0.1:8080"), ready("10.0.0.2:8080")]
    );

    // The version is compacted: an ERROR 410 in the stream; the source lists again, finds
    // what it had, and says nothing.
    api.expire();
    api.wait_for("a re-list and a new watch", |s| {
        s.lists == 2 && s.open_watches == 1
    })
    .await;
    // The same again with 410 as the watch response's status.
    api.gone_on_next_watch();
    api.drop_watches();
    api.wait_for("a second re-list and watch", |s| {
        s.lists == 3 && s.open_watches == 1
    })
    .await;
    assert!(
        rx.try_recv().is_err(),
        "a re-list that changed nothing reported something"
    );

    // The new watch works: the next change is the next report.
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.2", Pod::Ready), ("10.0.0.3", Pod::Ready)],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.2:8080"), ready("10.0.0.3:8080")]
    );
    api.delete("app-x1");
    assert_eq!(targets(next_report(&mut rx).await), vec![]);
    task.abort();
}

#[tokio::test]
async fn a_dropped_watch_reconnects_from_the_last_version_without_a_relist() {
    let api = FakeApi::start("default").await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    let (mut rx, task) = run_source(&api.url());
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    api.wait_for("a watch", |s| s.open_watches == 1).await;
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.1", Pod::Ready), ("10.0.0.2", Pod::Ready)],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080"), ready("10.0.0.2:8080")]
    );
    // Events cut into pieces across chunks are put back together.
    api.split_chunks();
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.1", Pod::Terminating), ("10.0.0.2", Pod::Ready)],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![draining("10.0.0.1:8080"), ready("10.0.0.2:8080")]
    );
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.1", Pod::Ready), ("10.0.0.2", Pod::Ready)],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080"), ready("10.0.0.2:8080")]
    );
    // A bookmark moves the version on without a change; the server then ends the watch (its
    // timeout) and the source watches again from the bookmark's version at once.
    let bookmark = api.bookmark().to_string();
    api.end_watches();
    let seen = api
        .wait_for("a watch from the bookmark", |s| {
            s.open_watches == 1 && s.watches.last() == Some(&bookmark)
        })
        .await;

    // The connection breaks mid-stream; a change happens while the source is away.
    api.drop_watches();
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.2", Pod::Ready)]));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.2:8080")]
    );
    let after = api.wait_for("a new watch", |s| s.open_watches == 1).await;
    assert_eq!(
        after.lists, seen.lists,
        "a dropped watch is not a reason to list again"
    );
    assert_eq!(after.lists, 1);
    assert_eq!(
        after.watches[seen.watches.len()..],
        [bookmark],
        "one new watch, from the last version seen: {:?}",
        after.watches
    );
    task.abort();
}

#[tokio::test]
async fn an_unreachable_api_is_a_failure_report_and_the_source_keeps_trying() {
    let closed = crate::support::upstream::closed_port().await;
    let (mut rx, task) = run_source(&format!("http://{closed}"));
    match next_report(&mut rx).await {
        Report::Failed(why) => assert!(why.contains("cannot connect"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    match next_report(&mut rx).await {
        Report::Failed(_) => {}
        other => panic!("expected another failure after the backoff, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn after_a_failure_the_same_set_is_reported_again_to_end_it() {
    let api = FakeApi::start("default").await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    let (mut rx, task) = run_source(&api.url());
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    api.wait_for("a watch", |s| s.open_watches == 1).await;

    api.fail_requests(true);
    api.drop_watches();
    match next_report(&mut rx).await {
        Report::Failed(why) => {
            assert!(why.contains("503") && why.contains("etcd is down"), "{why}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    api.fail_requests(false);
    // Nothing changed, but the failure is over: the set is said again (the seam clears
    // `failing` on it and changes no target).
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    assert_eq!(api.seen().lists, 1, "resumed by a watch, not a re-list");
    task.abort();
}

#[tokio::test]
async fn a_watch_gone_before_any_event_is_listed_again_only_after_the_backoff() {
    let api = FakeApi::start("default").await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    api.gone_always();
    let start = std::time::Instant::now();
    let (mut rx, task) = run_source(&api.url());
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    api.wait_for("three lists", |s| s.lists >= 3).await;
    // 0.2 s then 0.4 s of backoff (plus jitter) between them, not a tight loop.
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    assert!(rx.try_recv().is_err(), "the same set was reported again");
    task.abort();
}

#[tokio::test]
async fn a_port_name_the_service_lacks_is_a_failure_not_an_empty_set() {
    let api = FakeApi::start("default").await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    let (tx, mut rx) = mpsc::channel(16);
    let mut s = settings(&api.url());
    s.port = "grpc".to_string();
    let task = tokio::spawn(
        Box::new(Kubernetes {
            settings: s,
            upstream: "app".into(),
        })
        .run(tx),
    );
    match next_report(&mut rx).await {
        Report::Failed(why) => {
            assert!(why.contains("no port named \"grpc\""), "{why}");
            assert!(why.contains("http=8080"), "{why}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    task.abort();
}

/// Pods of one Deployment: a mock each on its own loopback address, all on one port, as pods
/// are on their own IPs with the same container port.
struct Pods {
    port: u16,
    mocks: Vec<(String, crate::support::upstream::Mock)>,
}

impl Pods {
    async fn start(ips: &[&str]) -> Pods {
        'again: loop {
            let first = TcpListener::bind((ips[0], 0)).await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind((*ip, port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'again, // taken on that address: another port
                }
            }
            let mocks = ips
                .iter()
                .zip(listeners)
                .map(|(ip, l)| {
                    let name = ip.to_string();
                    let body = Bytes::from(name.clone());
                    let handler = Arc::new(move |_req: http::Request<Bytes>| {
                        http::Response::new(Full::new(body.clone()))
                    });
                    (name, crate::support::upstream::serve_on(l, handler))
                })
                .collect();
            return Pods { port, mocks };
        }
    }

    fn requests(&self, ip: &str) -> usize {
        self.mock(ip).stats.requests()
    }

    fn mock(&self, ip: &str) -> &crate::support::upstream::Mock {
        &self.mocks.iter().find(|(n, _)| n == ip).unwrap().1
    }

    /// The pod's process exits (its listener closes; connections it had end with it).
    fn stop(&mut self, ip: &str) {
        self.mocks.retain(|(n, _)| n != ip);
    }
}

/// The gateway's `/status` JSON.
async fn status(client: &crate::support::TestClient, admin: SocketAddr) -> Value {
    let req = http::Request::get(format!("http://{admin}/status"))
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, body) = crate::support::send(client, req).await;
    serde_json::from_slice(&body).unwrap()
}

/// Polls `/status` until the upstream's targets and their states are `want` ("healthy" also
/// matches "starting": a target discovered while serving ramps up through slow start).
async fn wait_targets(
    client: &crate::support::TestClient,
    admin: SocketAddr,
    want: &[(String, &str)],
) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(a, s)| (a.clone(), s.to_string()))
        .collect();
    want.sort();
    let mut last = Vec::new();
    for _ in 0..500 {
        let doc = status(client, admin).await;
        let mut got: Vec<(String, String)> = doc["upstreams"]["default"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap().to_string();
                let state = match s("state").as_str() {
                    "starting" => "healthy".to_string(),
                    other => other.to_string(),
                };
                (s("target"), state)
            })
            .collect();
        got.sort();
        if got == want {
            return;
        }
        last = got;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("targets never became {want:?}; last {last:?}");
}

#[tokio::test]
async fn a_rolling_update_under_load_fails_no_request_and_draining_pods_get_no_new_ones() {
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"];
    let mut pods = Pods::start(&ips).await;
    let port = pods.port;
    let at = |ip: &str| format!("{ip}:{port}");
    let api = FakeApi::start("default").await;
    let step = |pods: &[(&str, Pod)]| api.apply(slice("app-7d9f", "app", port, pods));
    step(&[(ips[0], Pod::Ready), (ips[1], Pod::Ready)]);

    let mut config = crate::support::config(&[]);
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    crate::support::upstream_of(&mut config).discovery =
        Discovery::Kubernetes(settings(&api.url()));
    let gw = crate::support::start(config).await;
    let admin = gw.admin.unwrap();
    let client = crate::support::client();
    wait_targets(
        &client,
        admin,
        &[(at(ips[0]), "healthy"), (at(ips[1]), "healthy")],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic::run(
        client.clone(),
        gw.url("/"),
        Method::GET,
        4,
        Duration::from_millis(1),
        100_000,
        stop.clone(),
    ));
    // Requests that reach `others` after `ip` was marked draining: enough that anything sent
    // to `ip` before the mark has arrived; then `ip` must get none while load goes on.
    let no_new_requests = |pods: &Pods, ip: &str, others: &[&str]| {
        let sum = |pods: &Pods| others.iter().map(|o| pods.requests(o)).sum::<usize>();
        (pods.requests(ip), sum(pods))
    };
    let load_moves_on = |pods: &Pods, others: &[&str], from: usize| {
        let others = others.to_vec();
        let stats: Vec<_> = others.iter().map(|o| pods.mock(o).stats.clone()).collect();
        async move {
            loop {
                let n: usize = stats.iter().map(|s| s.requests()).sum();
                if n >= from + 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Surge: a new pod starts (not a target yet), becomes ready, then an old one terminates.
    step(&[
        (ips[0], Pod::Ready),
        (ips[1], Pod::Ready),
        (ips[2], Pod::Starting),
    ]);
    step(&[
        (ips[0], Pod::Ready),
        (ips[1], Pod::Ready),
        (ips[2], Pod::Ready),
    ]);
    wait_targets(
        &client,
        admin,
        &[
            (at(ips[0]), "healthy"),
            (at(ips[1]), "healthy"),
            (at(ips[2]), "healthy"),
        ],
    )
    .await;
    step(&[
        (ips[0], Pod::Terminating),
        (ips[1], Pod::Ready),
        (ips[2], Pod::Ready),
    ]);
    wait_targets(
        &client,
        admin,
        &[
            (at(ips[0]), "draining"),
            (at(ips[1]), "healthy"),
            (at(ips[2]), "healthy"),
        ],
    )
    .await;
    let (_, base) = no_new_requests(&pods, ips[0], &[ips[1], ips[2]]);
    load_moves_on(&pods, &[ips[1], ips[2]], base).await;
    let (drained_at, base) = no_new_requests(&pods, ips[0], &[ips[1], ips[2]]);
    load_moves_on(&pods, &[ips[1], ips[2]], base).await;
    assert_eq!(
        pods.requests(ips[0]),
        drained_at,
        "a draining pod got new requests"
    );

    // The old pod is gone from the slice, then its process exits.
    step(&[(ips[1], Pod::Ready), (ips[2], Pod::Ready)]);
    wait_targets(
        &client,
        admin,
        &[(at(ips[1]), "healthy"), (at(ips[2]), "healthy")],
    )
    .await;
    pods.stop(ips[0]);

    // The second surge, with the old pod terminating in the same update the new one is ready.
    step(&[
        (ips[1], Pod::Ready),
        (ips[2], Pod::Ready),
        (ips[3], Pod::Starting),
    ]);
    step(&[
        (ips[1], Pod::Terminating),
        (ips[2], Pod::Ready),
        (ips[3], Pod::Ready),
    ]);
    wait_targets(
        &client,
        admin,
        &[
            (at(ips[1]), "draining"),
            (at(ips[2]), "healthy"),
            (at(ips[3]), "healthy"),
        ],
    )
    .await;
    let (_, base) = no_new_requests(&pods, ips[1], &[ips[2], ips[3]]);
    load_moves_on(&pods, &[ips[2], ips[3]], base).await;
    let (drained_at, base) = no_new_requests(&pods, ips[1], &[ips[2], ips[3]]);
    load_moves_on(&pods, &[ips[2], ips[3]], base).await;
    assert_eq!(
        pods.requests(ips[1]),
        drained_at,
        "a draining pod got new requests"
    );
    step(&[(ips[2], Pod::Ready), (ips[3], Pod::Ready)]);
    wait_targets(
        &client,
        admin,
        &[(at(ips[2]), "healthy"), (at(ips[3]), "healthy")],
    )
    .await;
    pods.stop(ips[1]);
    let base = pods.requests(ips[2]) + pods.requests(ips[3]);
    load_moves_on(&pods, &[ips[2], ips[3]], base).await;

    stop.store(true, Ordering::SeqCst);
    let outcomes = load.await.unwrap();
    assert!(outcomes.len() > 800, "load ran: {}", outcomes.len());
    let errors = traffic::errors(&outcomes);
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {errors:?}",
        errors.len(),
        outcomes.len()
    );
    let doc = status(&client, admin).await;
    let d = &doc["upstreams"]["default"]["discovery"];
    assert_eq!(d["source"], "kubernetes", "{d}");
    assert_eq!(d["ready"], 2, "{d}");
    assert!(d["failing"].is_null(), "{d}");
}

const K8S_CONFIG: &str = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:0"

[[route]]
upstream = "app"

[upstream.app]
discovery = { kubernetes = { service = "app", namespace = "shop", port = "http", kubeconfig = "kube/config" } }
"#;

#[test]
fn kubernetes_discovery_config_parses_and_its_mistakes_are_named() {
    let config = gatewise::config::parse(K8S_CONFIG, "/etc/gatewise/gatewise.toml").unwrap();
    let up = &config.upstreams["app"];
    assert!(up.targets.is_empty());
    assert_eq!(
        up.discovery,
        Discovery::Kubernetes(KubernetesSettings {
            service: "app".into(),
            namespace: Some("shop".into()),
            port: "http".into(),
            kubeconfig: Some("/etc/gatewise/kube/config".into()),
            api_server: None,
        })
    );
    let numbered = K8S_CONFIG.replace(
        r#"namespace = "shop", port = "http", kubeconfig = "kube/config""#,
        "port = 8080",
    );
    let config = gatewise::config::parse(&numbered, "g.toml").unwrap();
    match &config.upstreams["app"].discovery {
        Discovery::Kubernetes(k) => {
            assert_eq!((k.port.as_str(), k.namespace.as_ref()), ("8080", None))
        }
        other => panic!("{other:?}"),
    }

    let cases = [
        (
            K8S_CONFIG.replace(
                "[upstream.app]\n",
                "[upstream.app]\ntargets = [\"10.0.0.1:80\"]\n",
            ),
            "upstream.app.targets",
            "leave targets out",
        ),
        (
            K8S_CONFIG.replace("service = \"app\"", "service = \"App_1\""),
            "upstream.app.discovery.kubernetes.service",
            "not a Service name",
        ),
        (
            K8S_CONFIG.replace("port = \"http\"", "port = true"),
            "upstream.app.discovery.kubernetes.port",
            "a port name",
        ),
        (
            K8S_CONFIG.replace("port = \"http\"", "port = \"http\", label = \"x\""),
            "upstream.app.discovery.kubernetes",
            "unknown field `label`",
        ),
        (
            K8S_CONFIG.replace("service = \"app\", ", ""),
            "upstream.app.discovery.kubernetes",
            "missing field `service`",
        ),
        (
            K8S_CONFIG.replace("kubernetes = {", "kubernets = {"),
            "upstream.app.discovery",
            "kubernetes",
        ),
    ];
    for (src, field, words) in cases {
        let errors = gatewise::config::parse(&src, "g.toml").unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(words) && e.line == 10),
            "{field} / {words:?}: {errors:?}"
        );
    }
}

/// A kubeconfig for the stand-in: its CA by file, a token; `current-context` picks it.
fn kubeconfig(server: &str, ca_file: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: stand-in\n  cluster:\n    server: {server}\n    certificate-authority: {ca_file}\n\
         contexts:\n- name: test\n  context:\n    cluster: stand-in\n    user: gatewise\n    namespace: shop\n\
         users:\n- name: gatewise\n  user:\n    token: {token}\n"
    )
}

#[tokio::test]
async fn a_kubeconfig_reaches_the_api_over_tls_with_its_token_and_a_wrong_token_is_named() {
    let ca = crate::support::tls::TestCa::new("kube-ca");
    let api = FakeApi::start_tls("shop", &ca.issue(&["127.0.0.1"]), "s3cret").await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    let dir = crate::support::tls::TempDir::new();
    dir.write("ca.crt", &ca.cert_pem);

    let run = |token: &str| {
        let path = dir.write("config", &kubeconfig(&api.https_url(), "ca.crt", token));
        let (tx, rx) = mpsc::channel(16);
        let settings = KubernetesSettings {
            namespace: None, // the context's: shop
            kubeconfig: Some(path),
            api_server: None,
            ..settings("")
        };
        let source = Box::new(Kubernetes {
            settings,
            upstream: "app".into(),
        });
        (rx, tokio::spawn(source.run(tx)))
    };
    let (mut rx, task) = run("s3cret");
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    api.wait_for("a watch over TLS", |s| s.open_watches == 1)
        .await;
    api.apply(slice(
        "app-x1",
        "app",
        8080,
        &[("10.0.0.1", Pod::Terminating)],
    ));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![draining("10.0.0.1:8080")]
    );
    task.abort();

    let (mut rx, task) = run("wrong");
    match next_report(&mut rx).await {
        Report::Failed(why) => assert!(
            why.contains("401") && why.contains("token or client certificate"),
            "{why}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    task.abort();

    // A CA that did not sign the server's certificate: refused, and said so.
    let other = crate::support::tls::TestCa::new("other-ca");
    dir.write("ca.crt", &other.cert_pem);
    let (mut rx, task) = run("s3cret");
    match next_report(&mut rx).await {
        Report::Failed(why) => assert!(why.contains("unknown issuer"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    task.abort();
}

/// A ConfigMap volume as the kubelet writes it: the data in a timestamped directory, `..data`
/// a symlink to it, each key a symlink through `..data`; an update writes a new directory and
/// renames a new `..data_tmp` symlink over `..data` (one atomic step), then removes the old one.
struct ConfigMapVolume {
    dir: crate::support::tls::TempDir,
    generation: usize,
}

impl ConfigMapVolume {
    fn new(contents: &str) -> ConfigMapVolume {
        let mut v = ConfigMapVolume {
            dir: crate::support::tls::TempDir::new(),
            generation: 0,
        };
        v.update(contents);
        std::os::unix::fs::symlink("..data/gatewise.toml", v.path()).unwrap();
        v
    }

    fn update(&mut self, contents: &str) {
        self.generation += 1;
        let data = format!("..2026_12_02_16_00_00.{:09}", self.generation);
        std::fs::create_dir(self.dir.0.join(&data)).unwrap();
        std::fs::write(self.dir.0.join(&data).join("gatewise.toml"), contents).unwrap();
        let tmp = self.dir.0.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.0.join("..data")).unwrap();
        if self.generation > 1 {
            let old = format!("..2026_12_02_16_00_00.{:09}", self.generation - 1);
            std::fs::remove_dir_all(self.dir.0.join(old)).unwrap();
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.0.join("gatewise.toml")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_the_kubelet_way_is_seen_and_reloaded() {
    use crate::support::upstream;
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let config = |target: SocketAddr| {
        format!(
            "[admin]\nlisten = \"off\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nupstream = \"app\"\n[upstream.app]\ntargets = [\"{target}\"]\n"
        )
    };
    let mut volume = ConfigMapVolume::new(&config(a.addr));
    let loaded = gatewise::config::load(&volume.path()).expect("valid config");
    let (log, _lines) = gatewise::observe::access_log::AccessLog::capture();
    let gateway = gatewise::gateway::Gateway::bind(&loaded, log)
        .await
        .unwrap()
        .with_config_path(volume.path());
    let url = format!("http://{}/", gateway.listen_addrs()[0]);
    let shared = gateway.shared();
    let _task = tokio::spawn(gateway.serve());
    let c = crate::support::client();
    assert_eq!(&crate::support::get(&c, &url).await.1[..], b"a");

    volume.update(&config(b.addr));
    for _ in 0..500 {
        if shared.snapshot.load().generation == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        shared.snapshot.load().generation,
        2,
        "the symlink swap was not reloaded"
    );
    assert_eq!(&crate::support::get(&c, &url).await.1[..], b"b");
    let last = shared.reloads.last().unwrap();
    assert!(last.ok && last.source == "file", "{last:?}");
}

#[tokio::test]
async fn a_request_in_flight_on_a_pod_that_terminates_and_leaves_the_slice_still_finishes() {
    use crate::support::upstream;
    // The old pod answers /slow only when the test lets it.
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let old = upstream::raw(move |tcp, stats| {
        let r = r.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (r, stats) = (r.clone(), stats.clone());
                    async move {
                        stats.requests.fetch_add(1, Ordering::SeqCst);
                        stats.changed.notify_waiters();
                        if req.uri().path() == "/slow" {
                            r.notified().await;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from("old"),
                        )))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        }
    })
    .await;
    let new = upstream::ok("new").await;
    let api = FakeApi::start("default").await;
    let ip = "127.0.0.1";
    api.apply(slice(
        "app-old",
        "app",
        old.addr.port(),
        &[(ip, Pod::Ready)],
    ));

    let mut config = crate::support::config(&[]);
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    crate::support::upstream_of(&mut config).discovery =
        Discovery::Kubernetes(settings(&api.url()));
    let gw = crate::support::start(config).await;
    let admin = gw.admin.unwrap();
    let client = crate::support::client();
    wait_targets(&client, admin, &[(old.addr.to_string(), "healthy")]).await;

    let slow = tokio::spawn(get_owned(client.clone(), gw.url("/slow")));
    old.stats.wait_for(|s| s.requests() == 1).await;

    // The rollout: the new pod is ready, the old one terminating, then gone from the slices.
    api.apply(slice(
        "app-new",
        "app",
        new.addr.port(),
        &[(ip, Pod::Ready)],
    ));
    api.apply(slice(
        "app-old",
        "app",
        old.addr.port(),
        &[(ip, Pod::Terminating)],
    ));
    wait_targets(
        &client,
        admin,
        &[
            (old.addr.to_string(), "draining"),
            (new.addr.to_string(), "healthy"),
        ],
    )
    .await;
    let (parts, body) = crate::support::get(&client, &gw.url("/")).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"new"[..]));
    api.delete("app-old");
    wait_targets(&client, admin, &[(new.addr.to_string(), "healthy")]).await;

    // The request the old pod had all along completes.
    release.notify_one();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, &body[..]), (200, &b"old"[..]));
    assert_eq!(
        old.stats.requests(),
        1,
        "the old pod got nothing after the one in flight"
    );
}

/// A GET that owns its client, for a spawned task: status and body.
async fn get_owned(client: crate::support::TestClient, url: String) -> (u16, Bytes) {
    let (parts, body) = crate::support::get(&client, &url).await;
    (parts.status.as_u16(), body)
}

#[tokio::test]
async fn a_kubeconfig_client_certificate_is_presented_inline_as_kind_writes_it() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = crate::support::tls::TestCa::new("kube-ca");
    let api = FakeApi::start_mtls("default", &ca.issue(&["127.0.0.1"]), &ca.cert_pem).await;
    api.apply(slice("app-x1", "app", 8080, &[("10.0.0.1", Pod::Ready)]));
    let dir = crate::support::tls::TempDir::new();
    let run = |user: &crate::support::tls::Pem| {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: kind-test\n\
             clusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: kind-test\n\
             contexts:\n- context:\n    cluster: kind-test\n    user: kind-test\n  name: kind-test\n\
             users:\n- name: kind-test\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&ca.cert_pem),
            api.https_url(),
            b64(&user.cert),
            b64(&user.key),
        );
        let path = dir.write("config", &kubeconfig);
        let settings = KubernetesSettings {
            namespace: None, // no namespace in the context: default
            kubeconfig: Some(path),
            api_server: None,
            ..settings("")
        };
        let (tx, rx) = mpsc::channel(16);
        let source = Box::new(Kubernetes {
            settings,
            upstream: "app".into(),
        });
        (rx, tokio::spawn(source.run(tx)))
    };
    let (mut rx, task) = run(&ca.issue(&["gatewise"]));
    assert_eq!(
        targets(next_report(&mut rx).await),
        vec![ready("10.0.0.1:8080")]
    );
    task.abort();

    // A certificate from another CA: the server refuses the handshake, and the failure says so.
    let stranger = crate::support::tls::TestCa::new("other").issue(&["gatewise"]);
    let (mut rx, task) = run(&stranger);
    match next_report(&mut rx).await {
        Report::Failed(why) => assert!(
            why.contains("client certificate") || why.contains("certificate"),
            "{why}"
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    task.abort();
}
