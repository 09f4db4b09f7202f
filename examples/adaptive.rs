//! The adaptive limiter as a library, without the proxy: a client that
//! protects a flaky service on its own side (like throttle-proxy's
//! round tripper).
//!
//!   cargo run --example adaptive
//!
//! A `Controller` holds the window; every call takes a permit (waiting up to
//! 200 ms in the queue), and completes it when the call succeeds. Here the
//! "signal" is the error rate the client itself observes, fed to the
//! controller once per interval — in the gateway, the monitor feeds it
//! Prometheus query results instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floodgate::limits::adaptive::{AdaptiveConfig, Controller, SignalConfig};
use floodgate::limits::clock::SystemClock;

/// A service that fails more the more concurrent calls it gets.
async fn flaky_service(concurrent: u64) -> Result<(), ()> {
    tokio::time::sleep(Duration::from_millis(20 + concurrent * 2)).await;
    if fastrand::u64(0..100) < concurrent.saturating_sub(8) * 5 {
        Err(())
    } else {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let ctl = Controller::new(
        AdaptiveConfig {
            min_window: 2,
            max_window: 64,
            initial_window: 64,
            queue_timeout: Duration::from_millis(200),
            max_queue: 64,
            signals: vec![SignalConfig {
                name: "error_rate".into(),
                query: "(observed by this client)".into(),
                warning: 0.05,
                emergency: 0.2,
            }],
            ..AdaptiveConfig::default()
        },
        Arc::new(SystemClock::default()),
    );
    let inflight = Arc::new(AtomicU64::new(0));
    let (ok, failed, shed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );

    // 100 callers, each calling as fast as it may, for 3 seconds.
    let stop = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut callers = Vec::new();
    for _ in 0..100 {
        let (ctl, inflight) = (ctl.clone(), inflight.clone());
        let (ok, failed, shed) = (ok.clone(), failed.clone(), shed.clone());
        callers.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < stop {
                let Ok(permit) = ctl.acquire(false, ctl.config().queue_timeout).await else {
                    shed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let n = inflight.fetch_add(1, Ordering::Relaxed) + 1;
                let r = flaky_service(n).await;
                inflight.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        permit.complete(); // may widen the window
                    }
                    Err(()) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        drop(permit); // frees the slot, no growth
                    }
                }
            }
        }));
    }

    // Once per interval: the error rate since the last reading is the signal.
    let (mut last_ok, mut last_failed) = (0, 0);
    for tick in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (o, f) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let (d_ok, d_failed) = (o - last_ok, f - last_failed);
        (last_ok, last_failed) = (o, f);
        let rate = d_failed as f64 / (d_ok + d_failed).max(1) as f64;
        ctl.record(0, Ok(rate));
        ctl.evaluate();
        let s = ctl.snapshot();
        println!(
            "t={:>4} ms  error rate {:>5.1}%  window {:>2}  in flight {:>2}  queued {:>2}  ({:?})",
            (tick + 1) * 250,
            rate * 100.0,
            s.window,
            s.inflight,
            s.queue_length,
            s.signals[0].state
        );
    }
    for c in callers {
        let _ = c.await;
    }
    println!(
        "calls: {} ok, {} failed, {} shed by the limiter",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed)
    );
}
