//! Kubernetes discovery against the API-server stand-in (`support::kube`): the source's reports
//! as the slices change, a 410 that forces a re-list, a dropped watch, an unreachable API.

use std::time::Duration;

use gatewise::discovery::kubernetes::{Kubernetes, KubernetesSettings};
use gatewise::discovery::{Discovered, Readiness, Report, Source};
use tokio::sync::mpsc;

use crate::support::kube::{slice, FakeApi, Pod};

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
    // A bookmark moves the version on without a change.
    let bookmark = api.bookmark();

    // The connection breaks mid-stream; a change happens while the source is away.
    let seen = api.seen();
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
    assert_eq!(
        after.watches.last().map(String::as_str),
        Some(bookmark.to_string().as_str()),
        "the watch resumes from the bookmark's version: {:?}",
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
