//! Unlisted-client quotas at scale: false-429 rate and memory at 10 k, 100 k
//! and 2 M distinct clients a window, and decision latency across window
//! boundaries.
//!
//!   cargo bench --bench clients            (all sizes)
//!   cargo bench --bench clients -- --quick (10 k and 100 k only)
//!
//! False 429s are measured in the harshest honest shape: every client sends
//! exactly its quota (10 requests) in one window, interleaved, so every
//! refusal is a false one. The table Floodgate uses is compared with a plain
//! count-min sketch given at least as much memory.

#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::limits::clock::{Clock, ManualClock, SystemClock};
use floodgate::limits::rate::{ClientTable, Quota, RateLimiter, TableKind};

const QUOTA: u64 = 10;

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
    false_429: u64,
    clients_refused: u64,
    requests: u64,
    table_mib: f64,
    rss_mib: f64,
    ns_per_decision: f64,
}

fn false_429(kind: TableKind, what: &str, clients: usize) -> Row {
    let clock = ManualClock::new(1_000_000 * 60_000);
    let before = rss_bytes();
    let limiter = RateLimiter::new(kind, 60_000, clock.clone() as Arc<dyn Clock>);
    let quota = Quota {
        rpm: Some(QUOTA),
        tpm: Some(QUOTA * 100),
    };
    let mut refused_at = vec![false; clients];
    let mut false_429 = 0;
    let started = Instant::now();
    for _round in 0..QUOTA {
        for (c, refused) in refused_at.iter_mut().enumerate() {
            if limiter
                .check_and_charge(hash_of(c as u64), 100, quota)
                .is_err()
            {
                false_429 += 1;
                *refused = true;
            }
        }
    }
    let elapsed = started.elapsed();
    let requests = QUOTA * clients as u64;
    Row {
        what: what.to_string(),
        clients,
        false_429,
        clients_refused: refused_at.iter().filter(|r| **r).count() as u64,
        requests,
        table_mib: limiter.memory_bytes() as f64 / (1 << 20) as f64,
        rss_mib: rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64,
        ns_per_decision: elapsed.as_nanos() as f64 / requests as f64,
    }
}

/// Decision latency over several window boundaries, with the next table
/// prepared by a background thread (Floodgate) or cleared inline by the
/// request that crosses the boundary (what `pingora_limits::rate::Rate`
/// does).
fn boundary_latency(capacity: usize, background: bool, secs: u64) -> (Vec<u64>, Vec<u64>) {
    let window_ms = 1000;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let limiter = Arc::new(RateLimiter::new(
        TableKind::Clients { capacity },
        window_ms,
        clock.clone(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = background.then(|| {
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
    let mut last_window = clock.now_ms() / window_ms;
    while Instant::now() < end {
        i += 1;
        let t0 = Instant::now();
        let now = clock.now_ms();
        if !background && now / window_ms != last_window {
            // The crossing request clears the next table itself.
            limiter.rotate();
        }
        last_window = now / window_ms;
        let _ = limiter.check_and_charge(hash_of(i % (capacity as u64)), 1, quota);
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
        "## False 429s: every client sends exactly its quota ({QUOTA} requests) in one window\n"
    );
    println!("| estimator | distinct clients | requests | false 429s | clients refused | false-429 rate | tables (3 windows) | RSS growth | ns/decision |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let rows = [
            false_429(
                TableKind::Clients { capacity: n },
                "Floodgate table (capacity = clients)",
                n,
            ),
            false_429(
                TableKind::Sketch {
                    depth: 4,
                    // At least the table's memory: 4 rows of 8-byte cells.
                    width: (ClientTable::new(n).memory_bytes() / 32).next_power_of_two(),
                },
                "count-min 4 rows, at least the table's memory",
                n,
            ),
            false_429(
                TableKind::Sketch {
                    depth: 4,
                    width: 1024,
                },
                "count-min 4 × 1024 (Pingora's default size)",
                n,
            ),
        ];
        for r in rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.4}% | {:.1} MiB | {:.1} MiB | {:.0} |",
                r.what,
                r.clients,
                r.requests,
                r.false_429,
                r.clients_refused,
                100.0 * r.false_429 as f64 / r.requests as f64,
                r.table_mib,
                r.rss_mib,
                r.ns_per_decision
            );
        }
    }
    let cap = if quick { 100_000 } else { 2_000_000 };
    let secs = if quick { 3 } else { 6 };
    println!("\n## Decision latency across window boundaries (1 s windows, table for {cap} clients, {secs} s)\n");
    println!("| next table cleared | decisions | p50 | p99 | p99.9 | max | p99.9 within 20 ms after a boundary | max there |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, background) in [
        ("ahead, by the background rotation (Floodgate)", true),
        ("inline, by the crossing request (Rate's way)", false),
    ] {
        let (mut all, mut near) = boundary_latency(cap, background, secs);
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
