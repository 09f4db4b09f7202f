//! The cost of each limiter decision, without a socket:
//!
//!   cargo bench --bench limits              (the result: about 3 minutes)
//!   cargo bench --bench limits -- --quick   (no warm-up: not the result,
//!                                            see benches/README.md)
//!
//! - quota check-and-charge for a configured client (exact counter) and an
//!   unlisted one (the shared table), at 100 k and 2 M distinct clients a
//!   window, on the shipped defaults: in the steady state (the tables sized
//!   from the windows before) and in the first window (which nothing
//!   predicts: its table is as large as `max_client_table_memory` allows);
//! - a host slot taken and given back;
//! - an adaptive-window admission;
//! - each of those contended by two threads;
//! - one window rotation of a table sized for 2 M clients (off the request
//!   path, in the background);
//! - an LLM request's estimate from its body (1 and 16 KiB of prompt), and
//!   reading usage from a 16 KiB streamed response.

#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway
#![allow(clippy::expect_used)] // a bench stops with the reason when its set-up fails
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use floodgate::limits::adaptive::{AdaptiveConfig, Controller};
use floodgate::limits::clients::{ClientLimit, ClientsPolicy, Mode};
use floodgate::limits::clients::{ClientPolicies, Decision};
use floodgate::limits::clock::{Clock, ManualClock, SystemClock};
use floodgate::limits::connections::HostRegistry;
use floodgate::limits::rate::{
    OverflowKind, Quota, RateLimiter, TableKind, TablePlan, MAX_RPM, MAX_TPM,
};

/// The gateway's allocator (src/main.rs), built as the gateway's is, so
/// that a table is laid out in memory as in the gateway: whether the
/// allocator asks the kernel for transparent huge pages (the gateway's does
/// not: its `no_thp` feature) changes what a read at random in a table of
/// 2 M clients costs (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The shipped defaults, a configured client "gold", and time by hand (a
/// read is one atomic load, as with the gateway's coarse clock).
fn policies() -> (ClientPolicies, Arc<ManualClock>) {
    let mut c = ClientsPolicy {
        default: Some(Quota {
            rpm: Some(MAX_RPM),
            tpm: Some(MAX_TPM),
        }),
        ..ClientsPolicy::default()
    };
    c.limits.insert(
        "gold".into(),
        ClientLimit {
            max_concurrent: None,
            models: Default::default(),
            quota: Quota {
                rpm: Some(MAX_RPM),
                tpm: Some(MAX_TPM),
            },
            enabled: true,
            mode: Mode::Enforce,
            api_keys: vec![],
            privileges: Default::default(),
        },
    );
    let clock = ManualClock::new(1_000_000 * 60_000);
    let p = ClientPolicies::build(&c, clock.clone() as Arc<dyn Clock>, None).expect("tables");
    (p, clock)
}

/// Two windows of every id, the rotation running as the gateway's does:
/// afterwards the current and previous tables are sized from demand.
fn steady_state(p: &ClientPolicies, clock: &ManualClock, ids: &[String]) {
    for _ in 0..2 {
        for id in ids {
            decide(p, id);
        }
        clock.advance(30_000);
        p.rotate();
        clock.advance(30_000);
        p.rotate();
    }
    for id in ids {
        decide(p, id);
    }
}

fn decide(p: &ClientPolicies, id: &str) {
    if let Decision::Admitted { charge, .. } = p.decide(id, None, 10) {
        charge.keep();
    }
}

/// A random cycle through `bytes` of memory: each read's place is the
/// previous read's value, so reads cannot overlap (pointer chasing).
struct Chase(Vec<u32>);

impl Chase {
    fn new(bytes: usize) -> Self {
        let n = bytes / 4;
        let mut v: Vec<u32> = (0..n as u32).collect();
        // Sattolo's shuffle: one cycle through every place.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % i as u64) as usize);
        }
        Chase(v)
    }

    fn next(&self, at: u32) -> u32 {
        self.0[at as usize]
    }
}

/// Runs `f` on `threads` threads at once, `iters` times each; the time of
/// the slowest thread.
fn contended(threads: usize, iters: u64, f: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for i in 0..iters {
                    f(i * threads as u64 + t as u64);
                }
            });
        }
    });
    start.elapsed()
}

fn quotas(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    let (steady, clock) = policies();
    let ids: Vec<String> = (0..100_000).map(|i| format!("client-{i}")).collect();
    g.bench_function("configured client", |b| b.iter(|| decide(&steady, "gold")));
    steady_state(&steady, &clock, &ids);
    let mut i = 0usize;
    g.bench_function("unlisted client, 100 k a window", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            decide(&steady, &ids[i])
        })
    });
    let (first, _) = policies();
    for id in &ids {
        decide(&first, id);
    }
    g.bench_function("unlisted client, 100 k, first window", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            decide(&first, &ids[i])
        })
    });
    {
        let threads = 2usize;
        g.bench_with_input(
            BenchmarkId::new("configured client, contended", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| contended(t, iters, |_| decide(&steady, "gold"))),
        );
        g.bench_with_input(
            BenchmarkId::new("unlisted clients, contended", threads),
            &threads,
            |b, &t| {
                b.iter_custom(|iters| {
                    contended(t, iters, |k| decide(&steady, &ids[k as usize % ids.len()]))
                })
            },
        );
    }
    drop((steady, first));
    // Two million clients a window.
    let big_ids: Vec<String> = (0..2_000_000).map(|i| format!("client-{i}")).collect();
    let (big, clock) = policies();
    steady_state(&big, &clock, &big_ids);
    let mut j = 0usize;
    // What the loop below costs without the decision: fetching and hashing
    // one of two million ids, scattered in memory (a request's id is in
    // cache, just parsed from its header; here it is not).
    g.bench_function("unlisted client, 2 M: the id alone (harness)", |b| {
        b.iter(|| {
            j = (j + 7919) % big_ids.len();
            std::hash::BuildHasher::hash_one(
                &ahash::RandomState::with_seeds(1, 2, 3, 4),
                &big_ids[j],
            )
        })
    });
    g.bench_function("unlisted client, 2 M a window", |b| {
        b.iter(|| {
            j = (j + 7919) % big_ids.len();
            decide(&big, &big_ids[j])
        })
    });
    // As in the gateway, where the id was just parsed from the request's
    // header and is in cache: the id written into one buffer. The rows
    // above also pay a miss to memory for the id (the `Vec`'s entry and
    // the string's bytes), which the harness row alone hides: its misses
    // overlap from one iteration to the next, a decision's do not.
    let mut id = String::with_capacity(32);
    let mut render = |j: usize| {
        id.clear();
        std::fmt::Write::write_fmt(&mut id, format_args!("client-{j}")).expect("a String");
        std::hint::black_box(&id);
    };
    g.bench_function(
        "unlisted client, 2 M, the id in cache: the id alone (harness)",
        |b| {
            b.iter(|| {
                j = (j + 7919) % big_ids.len();
                render(j)
            })
        },
    );
    let mut id = String::with_capacity(32);
    g.bench_function("unlisted client, 2 M a window, the id in cache", |b| {
        b.iter(|| {
            j = (j + 7919) % big_ids.len();
            id.clear();
            std::fmt::Write::write_fmt(&mut id, format_args!("client-{j}")).expect("a String");
            decide(&big, &id)
        })
    });
    // The reference: what one read at a random place in memory of that
    // size costs on this machine. A decision for one of 2 M clients reads
    // its count in two tables of ~57 MiB each (the current window's and
    // the previous one's); no cache holds them, so it cannot cost less
    // than one such read.
    let chase = Chase::new(128 << 20);
    let mut at = 0u32;
    g.bench_function("reference: one dependent read at random in 128 MiB", |b| {
        b.iter(|| {
            at = chase.next(at);
            at
        })
    });
    g.finish();
}

fn rotation(c: &mut Criterion) {
    let mut g = c.benchmark_group("rotation");
    g.sample_size(10);
    let clock = ManualClock::new(1_000_000);
    let l = RateLimiter::new(
        TableKind::Clients {
            capacity: 2_000_000,
            memory: TablePlan::memory_needed(2_000_000),
            overflow: OverflowKind::Packed,
        },
        1000,
        clock.clone() as Arc<dyn Clock>,
    )
    .expect("tables");
    g.bench_function("one window, table for 2 M clients", |b| {
        b.iter(|| {
            clock.advance(1000);
            l.rotate();
        })
    });
    g.finish();
}

fn connections(c: &mut Criterion) {
    let mut g = c.benchmark_group("connections");
    let r = HostRegistry::new();
    let host = r.counter("10.0.0.1:8000");
    g.bench_function("slot acquire + release", |b| {
        b.iter(|| drop(host.try_acquire(1_000_000)))
    });
    g.bench_function("slot acquire + release, 2 threads", |b| {
        b.iter_custom(|iters| contended(2, iters, |_| drop(host.try_acquire(1_000_000))))
    });
    g.finish();
}

fn adaptive(c: &mut Criterion) {
    let mut g = c.benchmark_group("adaptive");
    let ctl = Controller::new(
        AdaptiveConfig {
            min_window: 10,
            max_window: 1_000_000,
            initial_window: 1_000_000,
            ..AdaptiveConfig::default()
        },
        Arc::new(SystemClock::default()),
    );
    g.bench_function("admit + complete", |b| {
        b.iter(|| {
            if let Some(p) = ctl.try_acquire(false) {
                p.complete();
            }
        })
    });
    g.bench_function("admit + complete, 2 threads", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, |_| {
                if let Some(p) = ctl.try_acquire(false) {
                    p.complete();
                }
            })
        })
    });
    g.finish();
}

/// What an LLM request's estimate costs (parsing its JSON body and
/// counting the prompt with the tokenizer), per KiB of prompt; and reading
/// usage from a streamed response, per KiB.
fn llm(c: &mut Criterion) {
    use floodgate::config::Tokenizer;
    use floodgate::proxy::llm::{estimate::estimate, Api, UsageScanner};
    let mut g = c.benchmark_group("llm");
    let sentence = "The gateway estimates what a request will cost before it decides. ";
    for kib in [1usize, 16] {
        let mut prompt = String::new();
        while prompt.len() < kib * 1024 {
            prompt.push_str(sentence);
        }
        let body = serde_json::json!({"model": "gpt-4o", "max_tokens": 256,
            "messages": [{"role": "user", "content": prompt}]})
        .to_string();
        // Warm the tokenizer (it is loaded once per process).
        let _ = estimate(
            Api::OpenAiChat,
            "/v1/chat/completions",
            body.as_bytes(),
            Tokenizer::O200k,
            0,
        );
        g.bench_with_input(
            BenchmarkId::new("estimate, KiB of prompt", kib),
            &body,
            |b, body| {
                b.iter(|| {
                    estimate(
                        Api::OpenAiChat,
                        "/v1/chat/completions",
                        body.as_bytes(),
                        Tokenizer::O200k,
                        0,
                    )
                })
            },
        );
    }
    let mut sse = String::new();
    while sse.len() < 16 * 1024 {
        sse.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word \"}}]}\n\n");
    }
    sse.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30}}\n\ndata: [DONE]\n\n");
    g.bench_function("usage scanner, 16 KiB stream", |b| {
        b.iter(|| {
            let mut s = UsageScanner::new();
            for chunk in sse.as_bytes().chunks(1500) {
                s.feed(chunk);
            }
            s.finish();
            s.get("total_tokens")
        })
    });
    g.finish();
}

criterion_group!(benches, quotas, connections, adaptive, rotation, llm);
criterion_main!(benches);
