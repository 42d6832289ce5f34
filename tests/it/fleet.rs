//! Fleet (S3): three gatewise instances in process and one real etcd. A push is served by every
//! instance within a second under load; an invalid change is refused by every instance with the
//! running config kept; etcd stopped, they serve on; etcd back, they catch up — from the last
//! revision, or by reading the key again when that revision was compacted away.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatewise::fleet::push::{push_file, PushError};
use gatewise::fleet::{config_key, FleetState};
use gatewise::gateway::{Gateway, Shared};
use gatewise::observe::access_log::AccessLog;
use http::Method;

use crate::support::etcd::{self, Gate};
use crate::support::poll_until as wait_until;
use crate::support::tls::TempDir;
use crate::support::{client, get, traffic, upstream};

/// One gatewise instance of the fleet, started from its own local file.
struct Instance {
    addr: SocketAddr,
    admin: SocketAddr,
    shared: Arc<Shared>,
    _task: tokio::task::JoinHandle<()>,
}

impl Instance {
    fn fleet(&self) -> FleetState {
        self.shared.fleet.state().expect("[fleet] is set")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The instance's own file: its listener and admin, no routes; the rest comes from etcd.
fn local_file(dir: &TempDir, i: usize, etcd: &str, prefix: &str) -> PathBuf {
    dir.write(
        &format!("local-{i}.toml"),
        &format!(
            "watch_config = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [fleet]\netcd = [\"{etcd}\"]\nprefix = \"{prefix}\"\n"
        ),
    )
}

/// A config to share: one listener named like the instances' and, per `(name, prefix,
/// target)`, a route and its upstream.
fn shared_config(routes: &[(&str, &str, SocketAddr)]) -> String {
    let mut s = String::from("[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n");
    for (name, prefix, target) in routes {
        s += &format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{name}\"\n\
             [upstream.{name}]\nbalance = \"round_robin\"\ntargets = [\"{target}\"]\n"
        );
    }
    s
}

async fn start_instance(path: &Path) -> Instance {
    let config = gatewise::config::load(path).expect("valid local file");
    let (log, _lines) = AccessLog::capture();
    let gateway = Gateway::bind(&config, log)
        .await
        .expect("binds")
        .with_config_path(path.to_path_buf());
    let addr = gateway.listen_addrs()[0];
    let admin = gateway.admin_addr().expect("admin listener");
    let shared = gateway.shared();
    let task = tokio::spawn(gateway.serve());
    Instance {
        addr,
        admin,
        shared,
        _task: task,
    }
}

/// `n` instances watching `prefix` through `etcd`, each ready (it has read the fleet config).
async fn start_fleet(n: usize, dir: &TempDir, etcd: &str, prefix: &str) -> Vec<Instance> {
    let mut fleet = Vec::new();
    for i in 0..n {
        fleet.push(start_instance(&local_file(dir, i, etcd, prefix)).await);
    }
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} ready"),
            Duration::from_secs(10),
            || instance.shared.not_ready().is_none(),
        )
        .await;
    }
    fleet
}

/// Waits until the instance's status says `revision` serves (it is recorded right after the
/// swap, so a request may see the new config a moment before).
async fn status_shows(instance: &Instance, revision: i64) {
    wait_until(
        &format!("status shows revision {revision}"),
        Duration::from_secs(1),
        || instance.fleet().revision == Some(revision),
    )
    .await;
}

/// The body `url` answers with (status 200 expected).
async fn body(url: &str) -> String {
    let (parts, body) = get(&client(), url).await;
    assert_eq!(parts.status, 200, "{url}: {parts:?} {body:?}");
    String::from_utf8_lossy(&body).into_owned()
}

/// Waits until `url` answers `expected`; returns how long that took.
async fn served(url: &str, expected: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if body(url).await == expected {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{url} never answered {expected:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Client loops on `paths` of every instance until `stop` is set.
fn load(
    fleet: &[Instance],
    paths: &[&str],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<traffic::Outcome>>> {
    let mut tasks = Vec::new();
    for instance in fleet {
        for path in paths {
            tasks.push(tokio::spawn(traffic::run(
                client(),
                instance.url(path),
                Method::GET,
                1,
                Duration::from_millis(2),
                1_000_000,
                stop.clone(),
            )));
        }
    }
    tasks
}

async fn outcomes(
    tasks: Vec<tokio::task::JoinHandle<Vec<traffic::Outcome>>>,
) -> Vec<traffic::Outcome> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn push(dir: &TempDir, name: &str, src: &str, etcd: &str, prefix: &str) -> i64 {
    let path = dir.write(name, src);
    push_file(&path, &[etcd.to_string()], Some(prefix))
        .await
        .expect("pushed")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_route_is_served_by_all_three_within_a_second_under_load() {
    let Some(etcd) = etcd::start().await else {
        return;
    };
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let dir = TempDir::new();
    let prefix = "/push/";
    push(
        &dir,
        "v1.toml",
        &shared_config(&[("main", "/", a.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    let fleet = start_fleet(3, &dir, &etcd.endpoint(), prefix).await;
    for instance in &fleet {
        assert_eq!(
            body(&instance.url("/new/x")).await,
            "a",
            "before the push, / serves /new"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&fleet, &["/", "/new/x"], &stop);
    a.stats.wait_for(|s| s.requests() >= 60).await;

    let v2 = shared_config(&[("main", "/", a.addr), ("new", "/new", b.addr)]);
    let revision = push(&dir, "v2.toml", &v2, &etcd.endpoint(), prefix).await;
    let pushed = Instant::now();
    for (i, instance) in fleet.iter().enumerate() {
        served(&instance.url("/new/x"), "b", Duration::from_secs(5)).await;
        let after = pushed.elapsed();
        eprintln!("instance {i} serves the pushed route {after:?} after the push");
        assert!(
            after < Duration::from_secs(1),
            "instance {i} served the pushed route after {after:?}"
        );
        status_shows(instance, revision).await;
    }
    let served_b = b.stats.requests();
    b.stats.wait_for(|s| s.requests() >= served_b + 30).await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = outcomes(tasks).await;
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    assert!(
        traffic::errors(&outcomes).is_empty(),
        "{:?}",
        traffic::errors(&outcomes)
    );
    // Each instance checks its own targets: three independent pools, one per instance.
    for instance in &fleet {
        let ups = &instance.shared.snapshot.load().upstreams;
        assert!(ups.contains_key("new") && ups.contains_key("main"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_by_every_instance_and_the_running_config_kept() {
    let Some(etcd) = etcd::start().await else {
        return;
    };
    let a = upstream::ok("a").await;
    let dir = TempDir::new();
    let prefix = "/invalid/";
    let key = config_key(prefix);
    let good = push(
        &dir,
        "v1.toml",
        &shared_config(&[("main", "/", a.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    let fleet = start_fleet(3, &dir, &etcd.endpoint(), prefix).await;

    // An invalid file is refused before anything is written, with file:line:col.
    let bad = shared_config(&[("main", "/", a.addr)])
        .replace("upstream = \"main\"", "upstream = \"nope\"");
    let bad_path = dir.write("bad.toml", &bad);
    match push_file(&bad_path, &[etcd.endpoint()], Some(prefix)).await {
        Err(PushError::Invalid(errors)) => {
            let shown = errors.to_string();
            assert!(
                shown.contains(&format!("{}:7:", bad_path.display())),
                "{shown}"
            );
            assert!(shown.contains("no [upstream.nope] table"), "{shown}");
        }
        other => panic!("an invalid file was not refused: {other:?}"),
    }
    // The binary says the same and exits 2, as `gatewise check` does.
    let out = Command::new(env!("CARGO_BIN_EXE_gatewise"))
        .args([
            "fleet",
            "push",
            "--etcd",
            &etcd.endpoint(),
            "--prefix",
            prefix,
        ])
        .arg(&bad_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7:12: route[0].upstream", bad_path.display())),
        "{stderr}"
    );
    let (_, kv) = etcd.client().get(&key).await.unwrap();
    assert_eq!(kv.unwrap().mod_revision, good, "nothing was written");

    // Written to etcd behind push's back: valid TOML, invalid config. Every instance refuses it.
    let written = etcd
        .client()
        .put_all(&[(&key, bad.as_bytes())])
        .await
        .unwrap();
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} refuses revision {written}"),
            Duration::from_secs(5),
            || {
                instance
                    .fleet()
                    .refused
                    .is_some_and(|r| r.revision == written)
            },
        )
        .await;
        let state = instance.fleet();
        assert_eq!(state.revision, Some(good), "the running config is kept");
        let errors = state.refused.unwrap().errors;
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("etcd:{key}:7:12: route[0].upstream"))),
            "{errors:?}"
        );
        assert_eq!(body(&instance.url("/")).await, "a");
        let last = instance.shared.reloads.last().unwrap();
        assert!(!last.ok && last.source == "fleet", "{last:?}");
    }

    // A route on a listener the instances do not have: refused too, by the merge.
    let elsewhere =
        shared_config(&[("main", "/", a.addr)]).replace("name = \"public\"", "name = \"internal\"");
    let written = etcd
        .client()
        .put_all(&[(&key, elsewhere.as_bytes())])
        .await
        .unwrap();
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} refuses revision {written}"),
            Duration::from_secs(5),
            || {
                instance
                    .fleet()
                    .refused
                    .is_some_and(|r| r.revision == written)
            },
        )
        .await;
        let errors = instance.fleet().refused.unwrap().errors;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("listener \"internal\" is not a listener of this instance")),
            "{errors:?}"
        );
        assert_eq!(body(&instance.url("/")).await, "a");
    }

    // Bytes that are not UTF-8: refused, never repaired into a different value.
    let mut binary = shared_config(&[("main", "/", a.addr)]).into_bytes();
    binary.extend_from_slice(b"# \xff\n");
    let written = etcd.client().put_all(&[(&key, &binary)]).await.unwrap();
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} refuses revision {written}"),
            Duration::from_secs(5),
            || {
                instance
                    .fleet()
                    .refused
                    .is_some_and(|r| r.revision == written)
            },
        )
        .await;
        let errors = instance.fleet().refused.unwrap().errors;
        assert!(
            errors[0].starts_with(&format!("etcd:{key}: the value is not UTF-8 text")),
            "{errors:?}"
        );
    }

    // Reported where an operator looks: /status and /metrics.
    let (_, status) = get(&client(), &format!("http://{}/status", fleet[0].admin)).await;
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["fleet"]["revision"], good);
    assert_eq!(status["fleet"]["refused"]["revision"], written);
    assert_eq!(status["fleet"]["connected"], true);
    let (_, metrics) = get(&client(), &format!("http://{}/metrics", fleet[0].admin)).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("gatewise_fleet_updates_total{result=\"refused\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewise_fleet_updates_total{result=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("gatewise_fleet_revision {good}")),
        "{metrics}"
    );

    // A valid push after that applies everywhere and clears the refusal.
    let b = upstream::ok("b").await;
    let fixed = push(
        &dir,
        "v2.toml",
        &shared_config(&[("main", "/", b.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    for instance in &fleet {
        served(&instance.url("/"), "b", Duration::from_secs(5)).await;
        status_shows(instance, fixed).await;
        let state = instance.fleet();
        assert!(state.refused.is_none(), "{state:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_all_serve_on_and_catch_up_when_it_is_back() {
    let Some(mut etcd) = etcd::start().await else {
        return;
    };
    // The instances reach etcd through a gate, so the test can write while they cannot read.
    let gate = Gate::to(etcd.client).await;
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let dir = TempDir::new();
    let prefix = "/outage/";
    push(
        &dir,
        "v1.toml",
        &shared_config(&[("main", "/", a.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    let fleet = start_fleet(3, &dir, &gate.addr.to_string(), prefix).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&fleet, &["/"], &stop);
    a.stats.wait_for(|s| s.requests() >= 30).await;

    etcd.stop();
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} sees etcd gone"),
            Duration::from_secs(10),
            || {
                let s = instance.fleet();
                !s.connected && s.error.is_some()
            },
        )
        .await;
    }
    let during = a.stats.requests();
    a.stats.wait_for(|s| s.requests() >= during + 60).await;
    for instance in &fleet {
        assert!(
            instance.shared.not_ready().is_none(),
            "an instance that has a config stays ready"
        );
    }
    let (_, metrics) = get(&client(), &format!("http://{}/metrics", fleet[1].admin)).await;
    assert!(String::from_utf8_lossy(&metrics).contains("gatewise_fleet_etcd_connected 0"));

    // etcd comes back, a change is made while the instances still cannot see it...
    gate.close();
    etcd.run().await;
    let v2 = shared_config(&[("main", "/", a.addr), ("new", "/new", b.addr)]);
    let revision = push(&dir, "v2.toml", &v2, &etcd.endpoint(), prefix).await;
    for instance in &fleet {
        assert_eq!(body(&instance.url("/new/x")).await, "a", "not seen yet");
    }
    // ...and they catch up once they reach it again.
    gate.open();
    for (i, instance) in fleet.iter().enumerate() {
        wait_until(
            &format!("instance {i} catches up"),
            Duration::from_secs(15),
            || instance.fleet().revision == Some(revision),
        )
        .await;
        let state = instance.fleet();
        assert!(state.connected);
        assert_eq!(
            state.reads, 1,
            "resumed from the last revision, not read again"
        );
        assert_eq!(body(&instance.url("/new/x")).await, "b");
    }
    stop.store(true, Ordering::SeqCst);
    let outcomes = outcomes(tasks).await;
    assert!(outcomes.len() > 100, "{} requests", outcomes.len());
    assert!(
        traffic::errors(&outcomes).is_empty(),
        "{:?}",
        traffic::errors(&outcomes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_compaction_the_key_is_read_again() {
    let Some(etcd) = etcd::start().await else {
        return;
    };
    let gate = Gate::to(etcd.client).await;
    let (a, b, c) = (
        upstream::ok("a").await,
        upstream::ok("b").await,
        upstream::ok("c").await,
    );
    let dir = TempDir::new();
    let prefix = "/compact/";
    push(
        &dir,
        "v1.toml",
        &shared_config(&[("main", "/", a.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    let fleet = start_fleet(1, &dir, &gate.addr.to_string(), prefix).await;
    let instance = &fleet[0];
    assert_eq!(body(&instance.url("/")).await, "a");

    gate.close();
    wait_until("etcd unreachable", Duration::from_secs(10), || {
        !instance.fleet().connected
    })
    .await;
    push(
        &dir,
        "v2.toml",
        &shared_config(&[("main", "/", b.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    let last = push(
        &dir,
        "v3.toml",
        &shared_config(&[("main", "/", c.addr)]),
        &etcd.endpoint(),
        prefix,
    )
    .await;
    // History up to the last push is gone: a watch from where the instance stopped cannot start.
    etcd.client().compact(last).await.unwrap();
    gate.open();
    wait_until("caught up", Duration::from_secs(15), || {
        instance.fleet().revision == Some(last)
    })
    .await;
    assert_eq!(body(&instance.url("/")).await, "c");
    let state = instance.fleet();
    assert!(state.refused.is_none());
    assert_eq!(
        state.reads, 2,
        "read at start, and again after the compaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_etcd_cluster_behind_the_same_address_is_read_again() {
    let Some(old) = etcd::start().await else {
        return;
    };
    let gate = Gate::to(old.client).await;
    let (a, b, c) = (
        upstream::ok("a").await,
        upstream::ok("b").await,
        upstream::ok("c").await,
    );
    let dir = TempDir::new();
    let prefix = "/restored/";
    let config = |t| shared_config(&[("main", "/", t)]);
    push(&dir, "v1.toml", &config(c.addr), &old.endpoint(), prefix).await;
    let seen = push(&dir, "v2.toml", &config(a.addr), &old.endpoint(), prefix).await;
    let fleet = start_fleet(1, &dir, &gate.addr.to_string(), prefix).await;
    let instance = &fleet[0];
    assert_eq!(instance.fleet().revision, Some(seen));

    // A fresh cluster (its revisions start over) takes the old one's place, with a new config
    // at a revision below the one the instance saw: a watch from there would wait forever.
    gate.close();
    wait_until("etcd unreachable", Duration::from_secs(10), || {
        !instance.fleet().connected
    })
    .await;
    let new = etcd::start().await.expect("etcd");
    let revision = push(&dir, "v3.toml", &config(b.addr), &new.endpoint(), prefix).await;
    assert!(revision < seen, "{revision} < {seen}");
    gate.retarget(new.client);
    gate.open();
    served(&instance.url("/"), "b", Duration::from_secs(15)).await;
    status_shows(instance, revision).await;
    assert_eq!(instance.fleet().reads, 2);
    drop(old);
}
