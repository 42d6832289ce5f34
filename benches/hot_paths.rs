//! Micro-benchmarks of the per-request hot paths: route lookup, target pick, request header
//! rewriting and generated error responses. Run with `cargo bench --bench hot_paths`; the numbers
//! are recorded in docs/performance.md. These measure, they never assert on time.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use gatewise::cause::Cause;
use gatewise::config::{Balance, HostPattern};
use gatewise::proxy::headers::prepare_request;
use gatewise::proxy::response::error_response;
use gatewise::routing::RouteTable;
use gatewise::upstream::balancer::{Balancer, Candidate, Tried};

/// About twenty routes over exact hosts, suffixes and a catch-all, as a mid-sized site has.
fn route_table() -> RouteTable<usize> {
    let mut routes = Vec::new();
    let hosts = [
        HostPattern::Exact("api.example.com".into()),
        HostPattern::Exact("www.example.com".into()),
        HostPattern::Exact("static.example.com".into()),
        HostPattern::Suffix(".example.com".into()),
        HostPattern::Suffix(".example.org".into()),
    ];
    let prefixes = ["/", "/v1/", "/v1/users/", "/assets/"];
    for host in &hosts {
        for prefix in prefixes {
            routes.push((host.clone(), prefix.to_string(), routes.len()));
        }
    }
    routes.push((HostPattern::Any, "/".to_string(), routes.len()));
    RouteTable::new(routes)
}

fn bench_routing(c: &mut Criterion) {
    let table = route_table();
    let mut group = c.benchmark_group("route_find_21_routes");
    group.bench_function("exact_host_deep_path", |b| {
        b.iter(|| table.find(black_box("api.example.com:8080"), black_box("/v1/users/42")))
    });
    group.bench_function("suffix_host", |b| {
        b.iter(|| table.find(black_box("shop.example.org"), black_box("/assets/app.js")))
    });
    group.bench_function("catch_all", |b| {
        b.iter(|| table.find(black_box("other.test"), black_box("/index.html")))
    });
    group.finish();
}

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            weight: 1.0,
            in_flight: (i as u32 * 7) % 5,
            latency: 0.001 * f64::from(i as u32 % 3 + 1),
        })
        .collect()
}

fn bench_balancer(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer_pick");
    for n in [3, 16] {
        let cands = candidates(n);
        for (name, policy) in [
            ("round_robin", Balance::RoundRobin),
            ("least_request", Balance::LeastRequest),
            ("peak_ewma", Balance::PeakEwma),
        ] {
            let balancer = Balancer::new(policy);
            group.bench_function(format!("{name}/{n}"), |b| {
                b.iter(|| balancer.pick(black_box(&cands), Tried::default()))
            });
        }
        // A retry: one target already tried.
        let balancer = Balancer::new(Balance::RoundRobin);
        let mut tried = Tried::default();
        tried.insert(1);
        group.bench_function(format!("round_robin_retry/{n}"), |b| {
            b.iter(|| balancer.pick(black_box(&cands), black_box(tried)))
        });
    }
    group.finish();
}

/// What a current desktop browser sends for a page navigation.
fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs = [
        ("host", "www.example.com"),
        ("connection", "keep-alive"),
        ("cache-control", "max-age=0"),
        ("sec-ch-ua", "\"Chromium\";v=\"124\", \"Not-A.Brand\";v=\"99\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("upgrade-insecure-requests", "1"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-user", "?1"),
        ("sec-fetch-dest", "document"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        ("cookie", "session=3f2a9c1e0b7d4e6f8a1b2c3d4e5f6a7b; theme=dark"),
    ];
    for (k, v) in pairs {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).expect("valid header value"),
        );
    }
    h
}

fn bench_headers(c: &mut Criterion) {
    let client: SocketAddr = "192.0.2.10:51234".parse().expect("valid address");
    let base = browser_headers();
    let mut with_xff = base.clone();
    with_xff.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("203.0.113.7"),
    );
    with_xff.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
    );

    let mut group = c.benchmark_group("prepare_request_16_headers");
    // iter_batched keeps the HeaderMap clone out of the measurement; returning the map keeps its
    // drop out too, so this is prepare_request alone.
    group.bench_function("browser", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                let id = prepare_request(&mut h, client, "http");
                (h, id)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("behind_proxy_with_request_id", |b| {
        b.iter_batched(
            || with_xff.clone(),
            |mut h| {
                let id = prepare_request(&mut h, client, "http");
                (h, id)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_error_response(c: &mut Criterion) {
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let mut group = c.benchmark_group("error_response");
    group.bench_function("connection_refused_with_detail", |b| {
        b.iter(|| {
            error_response(
                black_box(Cause::ConnectionRefused),
                black_box("10.0.1.11:9000"),
                black_box(3),
                &id,
            )
        })
    });
    group.bench_function("destination_unavailable_503", |b| {
        b.iter(|| error_response(black_box(Cause::DestinationUnavailable), "", 0, &id))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_routing,
    bench_balancer,
    bench_headers,
    bench_error_response
);
criterion_main!(benches);
