//! Unlisted-client quotas at scale: false-429 rate, memory and decision
//! time at 10 k, 100 k and 2 M distinct clients a window, against the real
//! `pingora_limits` types; and decision latency across window boundaries.
//!
//!   cargo bench --bench clients            (all sizes)
//!   cargo bench --bench clients -- --quick (10 k and 100 k only)
//!
//! False 429s are measured in the harshest honest shape: every client sends
//! exactly its quota (10 requests) in one window, interleaved, so every
//! refusal is a false one. Each row runs three windows in a row, with fresh
//! client ids in each (so that the tables Floodgate sizes from past windows
//! are exercised: the first window is the one nothing predicts).
//!
//! Rows:
//! - Floodgate on its shipped defaults (`max_tracked_clients = 100000`,
//!   `max_client_table_memory = 256MiB`), with its packed overflow sketch
//!   and with two `pingora_limits::estimator::Estimator`s as the overflow;
//! - Floodgate's limiter with a fixed table of exactly the clients' size;
//! - `pingora_limits::estimator::Estimator` (4 rows) given at least the
//!   memory of Floodgate's table, used as a check-and-add: `incr`, then
//!   `decr` when over;
//! - `pingora_limits::rate::Rate` as its docs use it (`observe` and compare)
//!   at its default size (4 × 1024) and with as many slots as the table.

#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway
#![allow(clippy::expect_used)] // a bench stops with the reason when its set-up fails
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::limits::clock::{Clock, ManualClock, SystemClock};
use floodgate::limits::rate::{ClientTable, OverflowKind, Quota, RateLimiter, TableKind};
use pingora_limits::estimator::Estimator;
use pingora_limits::rate::Rate;

const QUOTA: u64 = 10;
const WINDOW_MS: u64 = 60_000;
const WINDOWS: u64 = 3;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn hash_of(i: u64) -> u64 {
    // Distinct, well-spread 64-bit hashes, as ahash gives for distinct ids.
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Row {
    what: String,
    clients: usize,
    /// False 429s in each window.
    false_429: Vec<u64>,
    requests: u64,
    table_mib: f64,
    rss_mib: f64,
    /// Nanoseconds per decision in each window.
    ns_per_decision: Vec<f64>,
}

/// Something that decides one request of one client: `true` = admitted.
trait Decide {
    fn decide(&self, client: u64) -> bool;
    /// A new window starts (`into` ms into it).
    fn next_window(&self) {}
    fn memory_bytes(&self) -> usize;
}

struct Floodgate {
    limiter: RateLimiter,
    clock: Arc<ManualClock>,
}

impl Decide for Floodgate {
    fn decide(&self, client: u64) -> bool {
        let q = Quota {
            rpm: Some(QUOTA),
            tpm: Some(QUOTA * 100),
        };
        self.limiter
            .check_and_charge(hash_of(client), 100, q)
            .is_ok()
    }
    fn next_window(&self) {
        // The rotation runs ahead of the boundary (as the gateway's does,
        // several times a window), then the clock crosses it.
        self.clock.advance(WINDOW_MS / 2);
        self.limiter.rotate();
        self.clock.advance(WINDOW_MS / 2);
        self.limiter.rotate();
    }
    fn memory_bytes(&self) -> usize {
        self.limiter.memory_bytes()
    }
}

fn floodgate(kind: TableKind) -> Floodgate {
    let clock = ManualClock::new(1_000_000 * WINDOW_MS);
    let limiter =
        RateLimiter::new(kind, WINDOW_MS, clock.clone() as Arc<dyn Clock>).expect("tables");
    Floodgate { limiter, clock }
}

/// The real Estimator as a quota: count, and take the count back when it
/// went over (a check-and-add in the Estimator's own terms).
struct PingoraEstimator(Estimator, usize);

impl Decide for PingoraEstimator {
    fn decide(&self, client: u64) -> bool {
        let key = hash_of(client);
        if self.0.incr(key, 1) > QUOTA as isize {
            self.0.decr(key, 1);
            return false;
        }
        true
    }
    fn next_window(&self) {
        self.0.reset();
    }
    fn memory_bytes(&self) -> usize {
        self.1
    }
}

/// The real Rate, as its documentation uses it: observe the event, compare
/// the count of the current interval with the quota. (Rate runs on the
/// real clock: a new window here is a fresh Rate.)
struct PingoraRate(std::cell::RefCell<Rate>, usize, usize);

impl PingoraRate {
    fn new(slots: usize) -> Self {
        let r = Rate::new_with_estimator_config(Duration::from_secs(60), 4, slots);
        PingoraRate(std::cell::RefCell::new(r), slots, 2 * 4 * slots * 8)
    }
}

impl Decide for PingoraRate {
    fn decide(&self, client: u64) -> bool {
        self.0.borrow().observe(&hash_of(client), 1) <= QUOTA as isize
    }
    fn next_window(&self) {
        *self.0.borrow_mut() = Rate::new_with_estimator_config(Duration::from_secs(60), 4, self.1);
    }
    fn memory_bytes(&self) -> usize {
        self.2
    }
}

fn run(d: &dyn Decide, what: &str, clients: usize) -> Row {
    let before = rss_bytes();
    let mut false_429 = Vec::new();
    let mut ns = Vec::new();
    for w in 0..WINDOWS {
        if w > 0 {
            d.next_window();
        }
        let base = w * clients as u64;
        let mut refused = 0;
        let started = Instant::now();
        for _round in 0..QUOTA {
            for c in 0..clients as u64 {
                if !d.decide(base + c) {
                    refused += 1;
                }
            }
        }
        ns.push(started.elapsed().as_nanos() as f64 / (QUOTA * clients as u64) as f64);
        false_429.push(refused);
    }
    let requests = WINDOWS * QUOTA * clients as u64;
    Row {
        what: what.to_string(),
        clients,
        false_429,
        requests,
        table_mib: d.memory_bytes() as f64 / (1 << 20) as f64,
        rss_mib: rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64,
        ns_per_decision: ns,
    }
}

/// Decision latency over several window boundaries: Floodgate's limiter
/// with the next table prepared by a background thread, and the real
/// `pingora_limits::rate::Rate`, which clears its estimator inline on the
/// request that crosses the boundary. Both sized for `capacity` clients.
fn boundary_latency(capacity: usize, floodgate: bool, secs: u64) -> (Vec<u64>, Vec<u64>) {
    let window_ms = 1000;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let table = ClientTable::new(capacity).expect("table");
    let slots = table.places() * 2; // about the table's memory in 8-byte slots, per row / 4
    let limiter = Arc::new(
        RateLimiter::new(
            TableKind::Clients {
                capacity,
                memory: (table.memory_bytes() * 3).max(1 << 20),
                overflow: OverflowKind::Packed,
            },
            window_ms,
            clock.clone(),
        )
        .expect("tables"),
    );
    let rate = Rate::new_with_estimator_config(Duration::from_millis(window_ms), 4, slots / 4);
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = floodgate.then(|| {
        let (l, stop) = (limiter.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                l.rotate();
                std::thread::sleep(Duration::from_millis(window_ms / 8));
            }
        })
    });
    let quota = Quota {
        rpm: Some(1_000_000),
        tpm: None,
    };
    let mut all = Vec::new();
    let mut near = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let t0 = Instant::now();
        let now = clock.now_ms();
        let key = hash_of(i % (capacity as u64));
        if floodgate {
            let _ = limiter.check_and_charge(key, 1, quota);
        } else {
            let _ = rate.observe(&key, 1);
        }
        let ns = t0.elapsed().as_nanos() as u64;
        all.push(ns);
        if now % window_ms < 20 {
            near.push(ns);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = rotator {
        let _ = r.join();
    }
    (all, near)
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 2_000_000]
    };
    println!(
        "## False 429s: every client sends exactly its quota ({QUOTA} requests) in one window; {WINDOWS} windows of fresh clients\n"
    );
    println!("| estimator | distinct clients a window | requests | false 429s per window | false-429 rate | memory (3 windows) | RSS growth | ns/decision per window |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for &n in sizes {
        let defaults = |overflow| TableKind::Clients {
            capacity: 100_000,
            memory: 256 << 20,
            overflow,
        };
        let exact = ClientTable::new(n).expect("table");
        let exact_bytes = exact.memory_bytes();
        drop(exact);
        // Slots per row so that 4 rows hold at least the table's memory.
        let slots = exact_bytes.div_ceil(4 * 8);
        let rows = [
            run(
                &floodgate(defaults(OverflowKind::Packed)),
                "Floodgate, shipped defaults (packed overflow sketch)",
                n,
            ),
            run(
                &floodgate(defaults(OverflowKind::Pingora)),
                "Floodgate, shipped defaults, pingora-limits Estimators as the overflow",
                n,
            ),
            run(
                &floodgate(TableKind::Clients {
                    capacity: n,
                    memory: exact_bytes * 3,
                    overflow: OverflowKind::Packed,
                }),
                "Floodgate, a fixed table of the clients' size",
                n,
            ),
            run(
                &PingoraEstimator(Estimator::new(4, slots), 4 * slots * 8),
                "pingora-limits Estimator 4 rows, the table's memory (check-and-add)",
                n,
            ),
            run(
                &PingoraRate::new(1024),
                "pingora-limits Rate, default 4 × 1024",
                n,
            ),
            run(
                &PingoraRate::new(slots),
                "pingora-limits Rate, 4 rows, the table's memory per estimator",
                n,
            ),
            // Past the memory ceiling: most clients spill into the
            // overflow sketch, whichever it is.
            run(
                &floodgate(TableKind::Clients {
                    capacity: 16,
                    memory: (exact_bytes / 4).max(1 << 20),
                    overflow: OverflowKind::Packed,
                }),
                "Floodgate, a ceiling of a quarter of the table, packed overflow",
                n,
            ),
            run(
                &floodgate(TableKind::Clients {
                    capacity: 16,
                    memory: (exact_bytes / 4).max(1 << 20),
                    overflow: OverflowKind::Pingora,
                }),
                "Floodgate, a ceiling of a quarter of the table, pingora-limits Estimator overflow",
                n,
            ),
        ];
        for r in rows {
            let total: u64 = r.false_429.iter().sum();
            let per: Vec<String> = r.false_429.iter().map(u64::to_string).collect();
            let ns: Vec<String> = r
                .ns_per_decision
                .iter()
                .map(|n| format!("{n:.0}"))
                .collect();
            println!(
                "| {} | {} | {} | {} | {:.4}% | {:.1} MiB | {:.1} MiB | {} |",
                r.what,
                r.clients,
                r.requests,
                per.join(" / "),
                100.0 * total as f64 / r.requests as f64,
                r.table_mib,
                r.rss_mib,
                ns.join(" / ")
            );
        }
    }
    let cap = if quick { 100_000 } else { 2_000_000 };
    let secs = if quick { 3 } else { 6 };
    println!("\n## Decision latency across window boundaries (1 s windows, sized for {cap} clients, {secs} s)\n");
    println!("| limiter | decisions | p50 | p99 | p99.9 | max | p99.9 within 20 ms after a boundary | max there |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, floodgate) in [
        (
            "Floodgate: next table prepared by the background rotation",
            true,
        ),
        (
            "pingora-limits Rate: estimator cleared by the crossing request",
            false,
        ),
    ] {
        let (mut all, mut near) = boundary_latency(cap, floodgate, secs);
        let n = all.len();
        let (p50, p99, p999, max) = (
            pct(&mut all, 0.5),
            pct(&mut all, 0.99),
            pct(&mut all, 0.999),
            pct(&mut all, 1.0),
        );
        let (np999, nmax) = (pct(&mut near, 0.999), pct(&mut near, 1.0));
        let us = |ns: u64| format!("{:.1} µs", ns as f64 / 1000.0);
        println!(
            "| {label} | {n} | {} | {} | {} | {} | {} | {} |",
            us(p50),
            us(p99),
            us(p999),
            us(max),
            us(np999),
            us(nmax)
        );
    }
}
