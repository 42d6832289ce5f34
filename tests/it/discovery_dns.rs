//! Discovery (S1 and the seam): a real gateway whose upstream's targets come from a tiny DNS
//! responder on 127.0.0.1 (answers changed while it serves), or from a source given in code
//! (readiness). Load runs throughout; every request must succeed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatewise::discovery::{Discovered, Readiness, Report, Source, SourceFactory};
use gatewise::gateway::{Gateway, Shared};
use gatewise::observe::access_log::AccessLog;
use http::Method;
use tokio::net::TcpListener;

use crate::support::dns::{Answer, Dns};
use crate::support::upstream::{self, Mock};
use crate::support::{client, get, traffic};

/// Mocks answering their own name, one per loopback IP (127.0.0.11, .12, ...), all on one port:
/// what A records of one name give.
async fn same_port_mocks(n: usize) -> Vec<Mock> {
    'again: loop {
        let first = TcpListener::bind("127.0.0.11:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind(format!("127.0.0.{}:{port}", 11 + i)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'again,
            }
        }
        return listeners
            .into_iter()
            .map(|l| {
                let name = l.local_addr().unwrap().ip().to_string();
                upstream::serve_on(
                    l,
                    Arc::new(move |_| http::Response::new(name.clone().into())),
                )
            })
            .collect();
    }
}

fn ip(m: &Mock) -> IpAddr {
    m.addr.ip()
}

struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    shared: Arc<Shared>,
    _task: tokio::task::JoinHandle<()>,
}

async fn start(upstream: &str, source: Option<SourceFactory>) -> Running {
    let src = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"main\"\nupstream = \"app\"\ntimeout = \"10s\"\n\
         [upstream.app]\nbalance = \"round_robin\"\noutage_hold = \"5s\"\n{upstream}\n"
    );
    let config = gatewise::config::parse(&src, "test.toml").expect("valid config");
    let (log, _lines) = AccessLog::capture();
    let mut gateway = Gateway::bind(&config, log).await.expect("binds");
    if let Some(f) = source {
        gateway = gateway.with_discovery_source("app", f);
    }
    let (addr, admin, shared) = (
        gateway.listen_addrs()[0],
        gateway.admin_addr().unwrap(),
        gateway.shared(),
    );
    Running {
        addr,
        admin,
        shared,
        _task: tokio::spawn(gateway.serve()),
    }
}

fn dns_upstream(dns: &Dns, targets: &str) -> String {
    format!(
        "targets = [{targets}]\ndiscovery = \"dns\"\ndns_nameserver = \"{}\"\ndns_interval = \"100ms\"\n",
        dns.addr
    )
}

fn load(
    gw: &Running,
    workers: usize,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Vec<traffic::Outcome>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(traffic::run(
        client(),
        format!("http://{}/", gw.addr),
        Method::GET,
        workers,
        Duration::from_millis(2),
        1_000_000,
        stop.clone(),
    ));
    (stop, task)
}

async fn finish(
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<traffic::Outcome>>,
) -> usize {
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();
    let errors = traffic::errors(&outcomes);
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    outcomes.len()
}

fn targets(shared: &Shared) -> Vec<String> {
    shared.snapshot.load().upstreams["app"]
        .targets
        .iter()
        .map(|t| t.addr.to_string())
        .collect()
}

async fn status(gw: &Running) -> serde_json::Value {
    let (parts, body) = get(&client(), &format!("http://{}/status", gw.admin)).await;
    assert_eq!(parts.status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Waits until a new resolution round of `name` has been answered and applied: two more
/// questions (A and AAAA) after `since`, then the apply task has had its turn.
async fn next_round(dns: &Dns, name: &str) {
    let since = dns.asked(name);
    dns.wait_asked(name, since, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_targets_added_and_removed_under_load_fail_nothing() {
    let dns = Dns::start().await;
    let m = same_port_mocks(3).await;
    let port = m[0].addr.port();
    dns.set("app.test", Answer::Addrs(vec![ip(&m[0])]), 1);
    let gw = start(&dns_upstream(&dns, &format!("\"app.test:{port}\"")), None).await;
    let (stop, task) = load(&gw, 2);
    m[0].stats.wait_for(|s| s.requests() >= 20).await;

    // A second address: a target of its own, served alongside; the first keeps its pool.
    dns.set("app.test", Answer::Addrs(vec![ip(&m[0]), ip(&m[1])]), 1);
    m[1].stats.wait_for(|s| s.requests() >= 20).await;
    assert_eq!(
        targets(&gw.shared),
        [m[0].addr.to_string(), m[1].addr.to_string()]
    );
    let first_pool = m[0].stats.accepts();

    // The first address goes, a third comes.
    dns.set("app.test", Answer::Addrs(vec![ip(&m[1]), ip(&m[2])]), 1);
    m[2].stats.wait_for(|s| s.requests() >= 20).await;
    next_round(&dns, "app.test").await;
    let gone = m[0].stats.requests();
    let served_b = m[1].stats.requests();
    m[1].stats.wait_for(|s| s.requests() >= served_b + 50).await;
    assert_eq!(
        m[0].stats.requests(),
        gone,
        "a removed address gets no new requests"
    );
    assert_eq!(
        targets(&gw.shared),
        [m[1].addr.to_string(), m[2].addr.to_string()]
    );
    assert!(
        first_pool <= 2,
        "the kept target's pool was kept ({first_pool} connections)"
    );

    let n = finish(stop, task).await;
    assert!(n > 150, "{n} requests");
    let text = gw.shared.metrics.encode();
    assert!(
        text.contains("gatewise_discovery_errors_total{upstream=\"app\",source=\"dns\"} 0"),
        "{text}"
    );
    assert!(text.contains(
        "gatewise_discovery_targets{upstream=\"app\",source=\"dns\",readiness=\"ready\"} 2"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_keeps_the_last_addresses_and_says_so() {
    let dns = Dns::start().await;
    let m = same_port_mocks(2).await;
    let port = m[0].addr.port();
    dns.set("app.test", Answer::Addrs(vec![ip(&m[0])]), 1);
    let gw = start(&dns_upstream(&dns, &format!("\"app.test:{port}\"")), None).await;
    let (stop, task) = load(&gw, 2);
    m[0].stats.wait_for(|s| s.requests() >= 20).await;

    dns.set("app.test", Answer::NxDomain, 1);
    // Until the failure is applied and visible; each round is 100 ms.
    let failing = loop {
        next_round(&dns, "app.test").await;
        let doc = status(&gw).await;
        let d = doc["upstreams"]["app"]["discovery"].clone();
        if !d["failing"].is_null() {
            break d;
        }
    };
    assert_eq!(failing["source"], "dns");
    let reason = failing["failing"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("dns_error: app.test:"), "{reason}");
    assert!(reason.contains("NXDOMAIN"), "{reason}");
    assert_eq!(failing["ready"], 1, "{failing}");
    // The last good address still serves.
    let served = m[0].stats.requests();
    m[0].stats.wait_for(|s| s.requests() >= served + 50).await;
    assert_eq!(targets(&gw.shared), [m[0].addr.to_string()]);
    let text = gw.shared.metrics.encode();
    let errors: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("gatewise_discovery_errors_total{upstream=\"app\",source=\"dns\"} ")
        })
        .and_then(|n| n.parse().ok())
        .expect("the errors counter");
    assert!(errors >= 1, "{text}");

    // A name with no address records at all is a failure too (never an empty pool).
    dns.set("app.test", Answer::Addrs(Vec::new()), 1);
    next_round(&dns, "app.test").await;
    next_round(&dns, "app.test").await;
    assert_eq!(targets(&gw.shared), [m[0].addr.to_string()]);

    // The name comes back with another address: applied, and the failure is cleared.
    dns.set("app.test", Answer::Addrs(vec![ip(&m[1])]), 1);
    m[1].stats.wait_for(|s| s.requests() >= 20).await;
    let doc = status(&gw).await;
    assert!(
        doc["upstreams"]["app"]["discovery"]["failing"].is_null(),
        "{doc}"
    );
    assert!(
        doc["upstreams"]["app"]["discovery"]["errors"]
            .as_u64()
            .unwrap()
            >= 2
    );
    finish(stop, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_hosts_and_ports() {
    let dns = Dns::start().await;
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    dns.set(
        "_http._tcp.app.test",
        Answer::Srv(vec![
            (10, 1, a.addr.port(), "web1.app.test".into()),
            (10, 1, b.addr.port(), "web2.app.test".into()),
            // A backup (higher priority number) is not used while the first group answers.
            (20, 1, 9, "backup.app.test".into()),
        ]),
        30,
    );
    dns.set("web1.app.test", Answer::Addrs(vec![a.addr.ip()]), 30);
    dns.set("web2.app.test", Answer::Addrs(vec![b.addr.ip()]), 30);
    let gw = start(&dns_upstream(&dns, "\"_http._tcp.app.test\""), None).await;
    let (stop, task) = load(&gw, 2);
    a.stats.wait_for(|s| s.requests() >= 10).await;
    b.stats.wait_for(|s| s.requests() >= 10).await;
    let mut expected = vec![a.addr.to_string(), b.addr.to_string()];
    expected.sort();
    assert_eq!(targets(&gw.shared), expected);
    assert_eq!(dns.asked("backup.app.test"), 0);
    finish(stop, task).await;
}

/// A source fed by the test: sends whatever the test last set.
struct Scripted(tokio::sync::watch::Receiver<Vec<Discovered>>);

impl Source for Scripted {
    fn run(
        self: Box<Self>,
        tx: tokio::sync::mpsc::Sender<Report>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut rx = self.0;
        Box::pin(async move {
            loop {
                let set = rx.borrow_and_update().clone();
                if tx.send(Report::Targets(set)).await.is_err() || rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

fn set(targets: &[(&Mock, Readiness)]) -> Vec<Discovered> {
    targets
        .iter()
        .map(|(m, readiness)| Discovered {
            addr: m.addr.to_string(),
            readiness: *readiness,
        })
        .collect()
}

/// Waits until the discovery status shows `ready` and `draining` targets (the report applied).
async fn applied(gw: &Running, ready: u64, draining: u64) {
    for _ in 0..1000 {
        let d = status(gw).await["upstreams"]["app"]["discovery"].clone();
        if d["ready"] == ready && d["draining"] == draining {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("report not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_target_gets_no_new_requests_while_another_is_ready() {
    use Readiness::{Draining, Ready};
    let (a, b) = (upstream::ok("a").await, upstream::ok("b").await);
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tx.send_replace(set(&[(&a, Ready), (&b, Ready)]));
    let factory: SourceFactory =
        Arc::new(move || Box::new(Scripted(rx.clone())) as Box<dyn Source>);
    let dns = Dns::start().await;
    let gw = start(&dns_upstream(&dns, "\"app.test:80\""), Some(factory)).await;
    let workers = 2;
    let (stop, task) = load(&gw, workers);
    a.stats.wait_for(|s| s.requests() >= 20).await;
    b.stats.wait_for(|s| s.requests() >= 20).await;

    tx.send_replace(set(&[(&a, Draining), (&b, Ready)]));
    applied(&gw, 1, 1).await;
    let at_drain = a.stats.requests();
    let served_b = b.stats.requests();
    b.stats.wait_for(|s| s.requests() >= served_b + 100).await;
    // Requests picked before the change may still arrive (one per worker at most).
    assert!(
        a.stats.requests() <= at_drain + workers,
        "{} -> {}",
        at_drain,
        a.stats.requests()
    );
    let doc = status(&gw).await;
    let states: Vec<&str> = doc["upstreams"]["app"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"draining"), "{states:?}");
    assert!(!gw.shared.snapshot.load().upstreams["app"]
        .targets
        .is_empty());

    // Both draining: nothing else can serve, so they still do (no 503).
    tx.send_replace(set(&[(&a, Draining), (&b, Draining)]));
    applied(&gw, 0, 2).await;
    let served_a = a.stats.requests();
    a.stats.wait_for(|s| s.requests() >= served_a + 20).await;

    // The draining one goes; the other is ready again.
    tx.send_replace(set(&[(&b, Ready)]));
    applied(&gw, 1, 0).await;
    assert_eq!(targets(&gw.shared), [b.addr.to_string()]);
    let n = finish(stop, task).await;
    assert!(n > 150, "{n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nameserver_times_out_and_the_last_addresses_serve() {
    let dns = Dns::start().await;
    let m = same_port_mocks(1).await;
    let port = m[0].addr.port();
    dns.set("app.test", Answer::Addrs(vec![ip(&m[0])]), 1);
    let gw = start(&dns_upstream(&dns, &format!("\"app.test:{port}\"")), None).await;
    let c = client();
    let url = format!("http://{}/", gw.addr);
    assert_eq!(get(&c, &url).await.0.status, 200);
    dns.set("app.test", Answer::Silent, 1);
    // Two attempts of 2 s each, then the failure is reported.
    let reason = loop {
        next_round(&dns, "app.test").await;
        let d = status(&gw).await["upstreams"]["app"]["discovery"].clone();
        if let Some(r) = d["failing"]["reason"].as_str() {
            break r.to_string();
        }
    };
    assert!(
        reason.contains("no nameserver answered in time"),
        "{reason}"
    );
    assert_eq!(get(&c, &url).await.0.status, 200);
    assert_eq!(targets(&gw.shared), [m[0].addr.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_big_for_udp_is_asked_again_over_tcp() {
    let dns = Dns::start().await;
    // 300 addresses: about 4.8 KB of answers, past the 1232 bytes a datagram may carry.
    let ips: Vec<IpAddr> = (0..300u32)
        .map(|i| IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]))
        .collect();
    dns.set("big.test", Answer::Addrs(ips.clone()), 30);
    let gw = start(&dns_upstream(&dns, "\"big.test:8080\""), None).await;
    let d = loop {
        next_round(&dns, "big.test").await;
        let d = status(&gw).await["upstreams"]["app"]["discovery"].clone();
        if d["ready"] != 0 {
            break d;
        }
    };
    assert_eq!(d["ready"], 300, "{d}");
    let mut expected: Vec<String> = ips.iter().map(|ip| format!("{ip}:8080")).collect();
    expected.sort();
    assert_eq!(targets(&gw.shared), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reload_keeps_the_discovered_targets_and_their_pools() {
    let dns = Dns::start().await;
    let m = same_port_mocks(2).await;
    let port = m[0].addr.port();
    dns.set("app.test", Answer::Addrs(vec![ip(&m[0]), ip(&m[1])]), 30);
    let src = |retries: u32| {
        format!(
            "watch_config = false\n[admin]\nlisten = \"off\"\n\
             [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"main\"\nupstream = \"app\"\nretries = {retries}\n\
             [upstream.app]\nbalance = \"round_robin\"\n{}",
            dns_upstream(&dns, &format!("\"app.test:{port}\""))
        )
    };
    let dir = std::env::temp_dir().join(format!("gatewise-disc-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gatewise.toml");
    std::fs::write(&path, src(2)).unwrap();
    let config = gatewise::config::load(&path).expect("valid config");
    let (log, _lines) = AccessLog::capture();
    let gateway = Gateway::bind(&config, log)
        .await
        .unwrap()
        .with_config_path(path.clone());
    let addr = gateway.listen_addrs()[0];
    let shared = gateway.shared();
    let _task = tokio::spawn(gateway.serve());
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(traffic::run(
        client(),
        format!("http://{addr}/"),
        Method::GET,
        1,
        Duration::from_millis(2),
        1_000_000,
        stop.clone(),
    ));
    m[0].stats.wait_for(|s| s.requests() >= 20).await;
    m[1].stats.wait_for(|s| s.requests() >= 20).await;
    let before = shared.snapshot.load().upstreams["app"].clone();

    // A change elsewhere in the file: the discovered upstream (targets, pools) is kept as is.
    std::fs::write(&path, src(3)).unwrap();
    let outcome = shared.reload("test").await;
    assert!(outcome.ok, "{outcome:?}");
    let after = shared.snapshot.load().upstreams["app"].clone();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the discovered upstream was kept"
    );
    assert_eq!(
        targets(&shared),
        [m[0].addr.to_string(), m[1].addr.to_string()]
    );
    let served = m[0].stats.requests();
    m[0].stats.wait_for(|s| s.requests() >= served + 20).await;
    stop.store(true, Ordering::SeqCst);
    let outcomes = task.await.unwrap();
    assert!(
        traffic::errors(&outcomes).is_empty(),
        "{:?}",
        traffic::errors(&outcomes)
    );
    // One keep-alive client: one connection per target, kept through the reload.
    assert_eq!((m[0].stats.accepts(), m[1].stats.accepts()), (1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
