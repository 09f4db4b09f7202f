//! Pingora's own settings, measured one at a time on the floor (bare
//! Pingora on Floodgate's settings, `examples/floor.rs`): the tokio flavour
//! (`work_stealing`), `listener_tasks_per_fd`, the upstream keep-alive pool
//! size, and `keepalive_request_limit`. Each against the settings as
//! shipped, in the same run:
//!
//!   cargo bench --bench knobs              (about 10 minutes)
//!   cargo bench --bench knobs -- --quick   (a shorter run: not the result)
//!
//! Needs `nginx`, `wrk`, `h2load` and `valgrind` (`scripts/setup --bench`).
//! Writes `target/bench/knobs.json` and `target/bench/knobs.md`.

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
    let (summary, md) = cost::knobs(quick);
    cost::write_report("knobs", &summary, &md);
}
