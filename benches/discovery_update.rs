//! The cost of one discovery update: an upstream of 1 000 discovered targets where one target
//! goes and another comes — the keyed rebuild of the upstream (targets kept by address with
//! their pools and health) and of the snapshot around it, which is what the apply task does
//! before its one atomic swap. Requests never wait on it (they keep the snapshot they loaded).
//!
//! Allocations are counted by a counting global allocator in this binary and printed before
//! criterion runs: `cargo bench --bench discovery_update -- --quick`. Numbers are recorded in
//! docs/performance.md. This measures; it never asserts on time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use gatewise::config::{Config, Discovery, DnsDiscovery};
use gatewise::gateway::Snapshot;
use gatewise::observe::metrics::Metrics;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TARGETS: usize = 1000;

/// `n` addresses in 10.0.0.0/16, sorted as the apply path sorts them, with address `skip`
/// left out and `extra` (an index past `n`) added.
fn addresses(skip: usize, extra: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..TARGETS + 1)
        .filter(|i| *i != skip && (*i < TARGETS || extra == *i))
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    v.sort();
    v
}

/// A one-upstream gateway (DNS discovery) serving the set `before`.
fn serving(metrics: &Metrics, before: Vec<String>) -> Snapshot {
    let mut config = Config::quick(
        "127.0.0.1:0".parse().unwrap(),
        vec!["app.internal:8080".into()],
    );
    let up = config.upstreams.values_mut().next().unwrap();
    up.discovery = Discovery::Dns(DnsDiscovery {
        interval: Duration::from_secs(5),
        nameserver: None,
    });
    let first = Snapshot::build(config, None, metrics).unwrap();
    first.with_discovered("default", before, metrics).unwrap()
}

fn bench_update(c: &mut Criterion) {
    let metrics = Metrics::new(std::iter::empty());
    // Serving 1..=1000; the update drops #0's successor #1 and adds #1000.
    let before = addresses(TARGETS, TARGETS);
    let after = addresses(1, TARGETS);
    assert_eq!(before.len(), TARGETS);
    assert_eq!(after.len(), TARGETS);
    let snapshot = serving(&metrics, before);

    // Allocations of one update (the result dropped outside the count).
    let upstream = snapshot.upstreams["default"].clone();
    let count = |what: &str, f: &dyn Fn(Vec<String>) -> Box<dyn std::any::Any>| {
        let runs = 100u64;
        let (mut allocs, mut bytes) = (0, 0);
        for _ in 0..runs {
            let input = after.clone();
            let (a0, b0) = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            let out = f(input);
            allocs += ALLOCS.load(Ordering::Relaxed) - a0;
            bytes += BYTES.load(Ordering::Relaxed) - b0;
            drop(out);
        }
        println!(
            "{what}, 1 of {TARGETS} targets changed: {} allocations, {} bytes allocated per update",
            allocs / runs,
            bytes / runs
        );
    };
    count("snapshot_with_discovered", &|input| {
        Box::new(
            snapshot
                .with_discovered("default", input, &metrics)
                .unwrap(),
        )
    });
    let mut template = upstream.config.clone();
    template.targets = Vec::new();
    count("upstream_rebuild", &|input| {
        let mut cfg = template.clone();
        cfg.targets = input;
        Box::new(upstream.rebuild(cfg).unwrap())
    });
    let mut group = c.benchmark_group("discovery_update_1_of_1000");
    group.bench_function("snapshot_with_discovered", |b| {
        b.iter_batched(
            || after.clone(),
            |input| {
                snapshot
                    .with_discovered(black_box("default"), input, &metrics)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("upstream_rebuild", |b| {
        b.iter_batched(
            || {
                let mut cfg = upstream.config.clone();
                cfg.targets = after.clone();
                cfg
            },
            |cfg| upstream.rebuild(black_box(cfg)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_update);
criterion_main!(benches);
