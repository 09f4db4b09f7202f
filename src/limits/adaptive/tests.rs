//! The window's arithmetic, staleness, the reserve and the queue.

use super::*;
use crate::limits::clock::ManualClock;

fn cfg(min: u64, max: u64) -> AdaptiveConfig {
    AdaptiveConfig {
        min_window: min,
        max_window: max,
        initial_window: max,
        stale_after: Duration::from_secs(15),
        signals: vec![SignalConfig {
            name: "errors".into(),
            query: "x".into(),
            warning: 0.5,
            emergency: 0.8,
        }],
        ..AdaptiveConfig::default()
    }
}

#[test]
fn emergency_halves_down_to_the_floor() {
    let clock = ManualClock::new(0);
    let c = Controller::new(cfg(10, 100), clock.clone());
    for want in [50, 25, 12, 10, 10] {
        c.record(0, Ok(0.9));
        c.evaluate();
        assert_eq!(c.window(), want);
    }
}

#[test]
fn warning_cuts_smoothly_and_stops_growth() {
    let clock = ManualClock::new(0);
    let c = Controller::new(cfg(1, 1000), clock.clone());
    assert!((c.warning_factor(0.0) - 1.0).abs() < 1e-9);
    assert!((c.warning_factor(1.0) - 0.5).abs() < 1e-9);
    let mid = c.warning_factor(0.5);
    assert!(mid < 1.0 && mid > 0.5);
    // Monotonic.
    assert!(c.warning_factor(0.2) > c.warning_factor(0.4));
    c.record(0, Ok(0.65));
    c.evaluate();
    let w = c.window();
    assert!(w < 1000 && w > 500, "{w}");
    // Busy and completing, but no growth under a warning.
    let permits: Vec<_> = (0..w).map(|_| c.try_acquire(false).unwrap()).collect();
    for p in permits {
        p.complete();
    }
    assert!(c.window() <= w);
}

#[test]
fn grows_only_while_in_use_and_only_when_clear() {
    let clock = ManualClock::new(0);
    let mut config = cfg(2, 10);
    config.initial_window = 4;
    let c = Controller::new(config, clock.clone());
    // No reading yet: hold.
    let p = c.try_acquire(false).unwrap();
    let q = c.try_acquire(false).unwrap();
    p.complete();
    q.complete();
    assert_eq!(c.window(), 4);
    c.record(0, Ok(0.1));
    c.evaluate();
    // Idle: one request at a time (1 < 4/2) does not grow the window.
    for _ in 0..10 {
        c.try_acquire(false).unwrap().complete();
    }
    assert_eq!(c.window(), 4);
    // In use: two in flight of four.
    for _ in 0..3 {
        let a = c.try_acquire(false).unwrap();
        let b = c.try_acquire(false).unwrap();
        a.complete();
        b.complete();
    }
    assert!(c.window() > 4);
    // Ceiling.
    for _ in 0..100 {
        let ps: Vec<_> = (0..c.window())
            .map(|_| c.try_acquire(false).unwrap())
            .collect();
        for p in ps {
            p.complete();
        }
    }
    assert_eq!(c.window(), 10);
    // A permit dropped without completing does not grow the window.
    c.record(0, Ok(0.9));
    c.evaluate();
    assert_eq!(c.window(), 5);
}

#[test]
fn fractional_increase_adds_up() {
    let clock = ManualClock::new(0);
    let mut config = cfg(2, 100);
    config.initial_window = 4;
    config.increase = 0.25;
    let c = Controller::new(config, clock);
    c.record(0, Ok(0.0));
    c.evaluate();
    for _ in 0..4 {
        let a = c.try_acquire(false).unwrap();
        let b = c.try_acquire(false).unwrap();
        a.complete();
        b.complete();
    }
    // Four completions while the window was in use (two of four in
    // flight) at 0.25 each: one more slot.
    assert_eq!(c.window(), 5);
}

#[test]
fn staleness_policies() {
    for (policy, want_growing, want_window) in [
        (OnStale::Hold, false, 50),
        (OnStale::Open, true, 50),
        (OnStale::Close, false, 10),
    ] {
        let clock = ManualClock::new(0);
        let mut config = cfg(10, 100);
        config.on_stale = policy;
        let c = Controller::new(config, clock.clone());
        c.record(0, Ok(0.9));
        c.evaluate();
        assert_eq!(c.window(), 50);
        // A failed query keeps the last reading valid until stale_after.
        clock.advance(10_000);
        c.record(0, Err("unreachable".into()));
        c.evaluate();
        assert_eq!(c.window(), 25, "{policy:?}: still an emergency reading");
        let c = Controller::new(
            AdaptiveConfig {
                on_stale: policy,
                ..cfg(10, 100)
            },
            clock.clone(),
        );
        c.record(0, Ok(0.9));
        c.evaluate();
        clock.advance(16_000);
        c.evaluate();
        assert_eq!(c.snapshot().signals[0].state, SignalState::Stale);
        assert_eq!(c.snapshot().growing, want_growing, "{policy:?}");
        assert_eq!(c.window(), want_window, "{policy:?}");
    }
}

#[test]
fn critical_reserve_sheds_normal_traffic_first() {
    let clock = ManualClock::new(0);
    let mut config = cfg(1, 10);
    config.critical_reserve = 0.2;
    let c = Controller::new(config, clock);
    let normal: Vec<_> = (0..8).map(|_| c.try_acquire(false).unwrap()).collect();
    assert!(c.try_acquire(false).is_none());
    let crit: Vec<_> = (0..2).map(|_| c.try_acquire(true).unwrap()).collect();
    assert!(c.try_acquire(true).is_none());
    drop((normal, crit));
    assert_eq!(c.inflight(), 0);
}

#[tokio::test]
async fn queue_is_fifo_bounded_and_left_on_timeout() {
    let clock = ManualClock::new(0);
    let mut config = cfg(1, 1);
    config.max_queue = 2;
    let c = Controller::new(config, clock);
    let held = c.try_acquire(false).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..2 {
        let (c, order) = (c.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let p = c.acquire(false, Duration::from_secs(5)).await;
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(p);
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.queue_len(), 2);
    // Queue full: refused at once.
    assert!(c.acquire(false, Duration::from_secs(5)).await.is_err());
    drop(held);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1]);
    // A wait that runs out leaves the queue.
    let held = c.try_acquire(false).unwrap();
    assert!(c.acquire(false, Duration::from_millis(50)).await.is_err());
    assert_eq!(c.queue_len(), 0);
    // A dropped wait leaves it at once too.
    let fut = c.acquire(false, Duration::from_secs(5));
    let _ = tokio::time::timeout(Duration::from_millis(20), fut).await;
    assert_eq!(c.queue_len(), 0);
    drop(held);
    assert_eq!(c.inflight(), 0);
}
