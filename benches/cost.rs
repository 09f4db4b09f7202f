//! The cost of a request: Floodgate against bare Pingora (its floor) and
//! nginx, each one worker, keep-alive both sides, access logs off, in front
//! of the same origin (nginx `return 200`), in one run:
//!
//!   cargo bench --bench cost              (about 10 minutes)
//!   cargo bench --bench cost -- --quick   (a shorter run: not the result)
//!
//! - throughput and p99: `wrk`, 1 thread, 64 connections, 3 rounds
//!   interleaved across the proxies (this machine is shared and noisy: the
//!   median of each, and ratios, not absolute figures);
//! - instructions per request: callgrind, counting only while a fixed
//!   number of requests flows (`h2load --h1`), which repeats from run to
//!   run where wall-clock figures do not; counted twice, the second time
//!   with glibc's `memcpy` by its vector loop (callgrind counts `rep movsb`
//!   once per byte: see `VECTOR_MEMCPY` in `shared/cost.rs`).
//!
//! Floodgate runs twice: with no limit, and with every limit on — client
//! quotas, a host cap and an adaptive window — set so that each one refuses
//! some requests during the wrk run (the refusal rate is reported beside
//! the throughput); under callgrind the same limits are set high enough to
//! admit everything, so the count is that of an admitted request with its
//! rate-limit headers.
//!
//! Needs `nginx`, `wrk`, `h2load` (Debian: nginx, wrk, nghttp2-client) and
//! `valgrind`: `scripts/setup --bench` installs them. Writes
//! `target/bench/cost.json` and `target/bench/cost.md`.

#![allow(clippy::disallowed_methods)] // benches may block: they are not the gateway
#![allow(clippy::expect_used)] // a bench stops with the reason when its set-up fails
#![allow(clippy::unwrap_used)]

#[path = "shared/cost.rs"]
mod cost;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (summary, md) = cost::run(quick);
    cost::write_report("cost", &summary, &md);
}
