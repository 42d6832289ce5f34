//! Heap allocations per proxied request, counted by a counting global allocator: a real gateway
//! (`Gateway::bind` + `serve`, the listener, `forward::handle`, the upstream pool) between an
//! in-process HTTP/1.1 client and an in-process upstream, all on one current-thread runtime over
//! loopback keep-alive connections, so every allocation of a request happens inside the timed
//! routine and on this thread.
//!
//! The count includes the client's and the upstream's own allocations; the `direct` case (the same
//! client talking to the same upstream, no gateway) measures those, so the gateway's share is
//! `proxied - direct`. `cargo bench --bench allocs` prints both as criterion estimates (the unit
//! is allocations per request, not time) and, first, a plain summary with bytes too. Recorded in
//! docs/performance.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use gatewise::config::{AccessLog as Destination, Config};
use gatewise::gateway::Gateway;
use gatewise::observe::access_log::AccessLog;

/// Counts every allocation (and reallocation, which may move) and the bytes asked for.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Criterion's measurement: allocations made between `start` and `end`.
struct Allocations;

impl Measurement for Allocations {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        ALLOCS.load(Relaxed)
    }
    fn end(&self, i: u64) -> u64 {
        ALLOCS.load(Relaxed) - i
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &AllocFormatter
    }
}

struct AllocFormatter;

impl ValueFormatter for AllocFormatter {
    fn scale_values(&self, _typical: f64, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
    fn scale_throughputs(&self, _t: f64, _th: &Throughput, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "allocs"
    }
}

/// The upstream: answers every request with a small body and the headers nginx sends with
/// `return 200` (what `bench/vs-nginx.sh` proxies to).
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let resp = http::Response::builder()
                        .header("server", "nginx/1.22.1")
                        .header("date", "Wed, 02 Dec 2026 15:00:00 GMT")
                        .header("content-type", "text/plain")
                        .header("connection", "keep-alive")
                        .body(Full::new(Bytes::from_static(b"hello from upstream\n")))
                        .expect("valid response");
                    Ok::<_, std::convert::Infallible>(resp)
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("upstream connection ended: {e}");
                }
            });
        }
    });
    addr
}

/// A keep-alive client connection to `addr`.
async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("client connection ended: {e}");
        }
    });
    sender
}

/// One request as wrk sends it (`Host` only), its body read to the end.
async fn request(sender: &mut SendRequest<Empty<Bytes>>, host: &str) {
    sender
        .ready()
        .await
        .unwrap_or_else(|e| panic!("connection to {host} not ready: {e}"));
    let req = http::Request::get("/")
        .header("host", host)
        .body(Empty::new())
        .expect("valid request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"hello from upstream\n");
}

/// A gateway in front of `upstream` (admin off, no health checks); with `log`, its access-log
/// lines go to a channel that a thread empties.
async fn gateway(upstream: SocketAddr, log: bool) -> SocketAddr {
    let mut config = Config::quick(
        "127.0.0.1:0".parse().expect("addr"),
        vec![upstream.to_string()],
    );
    config.admin.listen = None;
    config.access_log = Destination::Off;
    // The cases take turns: a connection waiting for its turn must not time out meanwhile (a
    // reconnect would be counted in the next request).
    let hour = std::time::Duration::from_secs(3600);
    config.listeners[0].header_read_timeout = hour;
    for upstream in config.upstreams.values_mut() {
        upstream.idle_timeout = hour;
    }
    let access_log = if log {
        let (log, rx) = AccessLog::capture();
        std::thread::spawn(move || while rx.recv().is_ok() {});
        log
    } else {
        AccessLog::start(&Destination::Off).expect("no log").0
    };
    let gateway = Gateway::bind(&config, access_log)
        .await
        .expect("gateway binds");
    let addr = gateway.listen_addrs()[0];
    tokio::spawn(gateway.serve());
    addr
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    direct: SendRequest<Empty<Bytes>>,
    direct_host: String,
    proxied: SendRequest<Empty<Bytes>>,
    proxied_logged: SendRequest<Empty<Bytes>>,
    proxy_host: String,
}

fn setup() -> Setup {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (direct, direct_host, proxied, proxied_logged, proxy_host) = runtime.block_on(async {
        let up = upstream().await;
        let gw = gateway(up, false).await;
        let gw_logged = gateway(up, true).await;
        let mut direct = client(up).await;
        let mut proxied = client(gw).await;
        let mut proxied_logged = client(gw_logged).await;
        // Warm up: pooled upstream connections, hyper's buffers, lazily built state.
        for _ in 0..200 {
            request(&mut direct, &up.to_string()).await;
            request(&mut proxied, &gw.to_string()).await;
            request(&mut proxied_logged, &gw.to_string()).await;
        }
        (
            direct,
            up.to_string(),
            proxied,
            proxied_logged,
            gw.to_string(),
        )
    });
    Setup {
        runtime,
        direct,
        direct_host,
        proxied,
        proxied_logged,
        proxy_host,
    }
}

/// Allocations and bytes per request over `n` requests.
fn count(
    rt: &tokio::runtime::Runtime,
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &str,
    n: u64,
) -> (f64, f64) {
    let (a, b) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    rt.block_on(async {
        for _ in 0..n {
            request(sender, host).await;
        }
    });
    let (a2, b2) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    ((a2 - a) as f64 / n as f64, (b2 - b) as f64 / n as f64)
}

fn bench_allocs(c: &mut Criterion<Allocations>) {
    let mut s = setup();
    let n = 2000;
    let direct = count(&s.runtime, &mut s.direct, &s.direct_host, n);
    let proxied = count(&s.runtime, &mut s.proxied, &s.proxy_host, n);
    let logged = count(&s.runtime, &mut s.proxied_logged, &s.proxy_host, n);
    println!("allocations per request over {n} requests (client + upstream + gateway):");
    println!(
        "  direct (no gateway):     {:6.2} allocs {:8.0} bytes",
        direct.0, direct.1
    );
    println!(
        "  proxied, log off:        {:6.2} allocs {:8.0} bytes",
        proxied.0, proxied.1
    );
    println!(
        "  proxied, log on:         {:6.2} allocs {:8.0} bytes",
        logged.0, logged.1
    );
    println!(
        "  gateway's share: log off {:.2} allocs / {:.0} bytes, log on {:.2} allocs / {:.0} bytes",
        proxied.0 - direct.0,
        proxied.1 - direct.1,
        logged.0 - direct.0,
        logged.1 - direct.1
    );

    let mut group = c.benchmark_group("allocations_per_request");
    let rt = &s.runtime;
    let (dh, ph) = (s.direct_host.clone(), s.proxy_host.clone());
    group.bench_function("direct", |b| {
        b.iter(|| rt.block_on(request(&mut s.direct, &dh)))
    });
    group.bench_function("proxied_log_off", |b| {
        b.iter(|| rt.block_on(request(&mut s.proxied, &ph)))
    });
    group.bench_function("proxied_log_on", |b| {
        b.iter(|| rt.block_on(request(&mut s.proxied_logged, &ph)))
    });
    group.finish();
}

fn allocations() -> Criterion<Allocations> {
    Criterion::default()
        .with_measurement(Allocations)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = allocations();
    targets = bench_allocs
}
criterion_main!(benches);
