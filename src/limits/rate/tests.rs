//! The limiter's behaviour over windows, refunds and races.

use super::*;
use crate::limits::clock::ManualClock;

const W: u64 = 60_000;

fn quota(rpm: u64, tpm: u64) -> Quota {
    Quota {
        rpm: Some(rpm),
        tpm: Some(tpm),
    }
}

fn limiter(clock: &Arc<ManualClock>) -> RateLimiter {
    RateLimiter::exact(W, clock.clone())
}

#[test]
fn admits_exactly_the_quota_in_one_window() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(5, 1_000_000);
    for i in 0..5 {
        let (_, s) = l.check_and_charge(1, 10, q).unwrap();
        assert_eq!(s.requests_remaining(), Some(4 - i));
    }
    let r = l.check_and_charge(1, 10, q).unwrap_err();
    assert_eq!(r.exceeded, Exceeded::Requests);
    // A refusal charges nothing.
    assert_eq!(
        l.peek(1, q).used,
        Usage {
            requests: 5,
            tokens: 50
        }
    );
}

#[test]
fn tokens_refuse_without_charging_requests() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(100, 100);
    l.check_and_charge(1, 80, q).unwrap();
    let r = l.check_and_charge(1, 30, q).unwrap_err();
    assert_eq!(r.exceeded, Exceeded::Tokens);
    assert_eq!(
        l.peek(1, q).used,
        Usage {
            requests: 1,
            tokens: 80
        }
    );
    l.check_and_charge(1, 20, q).unwrap();
}

/// The weight of a previous window's count, in 64 bits when the product
/// fits and in 128 when it does not, is the exact floor of v·left/W.
#[test]
fn the_weight_of_a_count_is_exact_at_every_size() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    for v in [
        0,
        1,
        7,
        1 << 20,
        u64::MAX / W,
        u64::MAX / W + 1,
        u64::MAX / 2,
        u64::MAX,
    ] {
        for into in [0, 1, W / 4, W / 2, W - 1] {
            let exact = (u128::from(v) * u128::from(W - into) / u128::from(W)) as u64;
            assert_eq!(l.weigh(v, into), exact, "{v} {into}");
        }
    }
}

#[test]
fn sliding_window_weighs_the_previous_window() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(10, 1_000);
    for _ in 0..10 {
        l.check_and_charge(1, 0, q).unwrap();
    }
    // Rotation prepared the next window; a quarter into it, 75% of the
    // previous window still counts: 7.5 → 7 used, 3 left.
    l.rotate();
    clock.advance(W + W / 4);
    l.rotate();
    assert_eq!(l.peek(1, q).used.requests, 7);
    for _ in 0..3 {
        l.check_and_charge(1, 0, q).unwrap();
    }
    let r = l.check_and_charge(1, 0, q).unwrap_err();
    // 3 + 10·(1 − f) ≤ 9 once f ≥ 0.4, i.e. 9 s after this point.
    assert_eq!(r.retry_after_ms, 9_000, "{r:?}");
    // No double burst at the boundary: right after it, the previous
    // window counts in full.
    let clock2 = ManualClock::new(10 * W + W - 1);
    let l2 = limiter(&clock2);
    for _ in 0..10 {
        l2.check_and_charge(1, 0, q).unwrap();
    }
    clock2.advance(1);
    l2.rotate();
    assert!(l2.check_and_charge(1, 0, q).is_err());
}

#[test]
fn retry_after_is_when_enough_frees() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(10, 1_000);
    for _ in 0..10 {
        l.check_and_charge(1, 0, q).unwrap();
    }
    // All in the current window: the earliest fit is 1/10 into the next.
    let r = l.check_and_charge(1, 0, q).unwrap_err();
    assert_eq!(r.retry_after_ms, W + W / 10);
    l.rotate();
    clock.advance(r.retry_after_ms);
    l.rotate();
    assert!(l.check_and_charge(1, 0, q).is_ok());
}

#[test]
fn two_windows_later_everything_is_free() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(3, 30);
    for _ in 0..3 {
        l.check_and_charge(1, 10, q).unwrap();
    }
    clock.advance(2 * W);
    l.rotate();
    assert_eq!(l.peek(1, q).used, Usage::default());
}

#[test]
fn refunds_and_settlement_land_in_the_charged_window() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = quota(100, 1_000);
    let (mut r, _) = l.check_and_charge(1, 100, q).unwrap();
    // The window moves on before the response ends.
    l.rotate();
    clock.advance(W);
    l.rotate();
    l.settle_tokens(&mut r, 40);
    // Previous window now holds 1 request and 40 tokens, at full weight.
    assert_eq!(
        l.peek(1, q).used,
        Usage {
            requests: 1,
            tokens: 40
        }
    );
    l.settle_tokens(&mut r, 70);
    assert_eq!(l.peek(1, q).used.tokens, 70);
    l.refund(
        &r,
        Usage {
            requests: 1,
            tokens: 70,
        },
    );
    assert_eq!(l.peek(1, q).used, Usage::default());
    // A refund for an expired window does nothing (no underflow).
    clock.advance(3 * W);
    l.rotate();
    l.refund(
        &r,
        Usage {
            requests: 1,
            tokens: 70,
        },
    );
    assert_eq!(l.peek(1, q).used, Usage::default());
}

#[test]
fn unlimited_dimensions_are_not_counted() {
    let clock = ManualClock::new(10 * W);
    let l = limiter(&clock);
    let q = Quota {
        rpm: Some(2),
        tpm: None,
    };
    l.check_and_charge(1, u64::MAX / 2, q).unwrap();
    l.check_and_charge(1, u64::MAX / 2, q).unwrap();
    assert!(l.check_and_charge(1, 1, q).is_err());
    assert_eq!(l.peek(1, q).used.tokens, 0);
}

#[test]
fn sketch_keeps_clients_apart() {
    let clock = ManualClock::new(10 * W);
    let q = quota(5, 1_000);
    for kind in [
        TableKind::Sketch {
            depth: 4,
            width: 1 << 14,
        },
        TableKind::Clients {
            capacity: 1000,
            memory: 1 << 20,
            overflow: OverflowKind::Packed,
        },
        TableKind::Clients {
            capacity: 1000,
            memory: 1 << 20,
            overflow: OverflowKind::Pingora,
        },
    ] {
        let l = RateLimiter::new(kind, W, clock.clone()).unwrap();
        for client in 0..1000u64 {
            let h = client.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for _ in 0..5 {
                l.check_and_charge(h, 1, q).unwrap();
            }
            assert!(l.check_and_charge(h, 1, q).is_err());
        }
    }
}

#[test]
fn concurrent_requests_never_over_admit() {
    let clock = ManualClock::new(10 * W);
    let l = Arc::new(limiter(&clock));
    let q = quota(1000, 1_000_000);
    let admitted: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                s.spawn(move || {
                    (0..1000)
                        .filter(|_| l.check_and_charge(7, 3, q).is_ok())
                        .count() as u64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 1000);
    assert_eq!(
        l.peek(7, q).used,
        Usage {
            requests: 1000,
            tokens: 3000
        }
    );
}

/// The reproduction: quota 10, 10 requests in the previous window, four
/// threads racing half a window later: 5 fit, and never more are admitted.
#[test]
fn concurrent_requests_never_over_admit_with_a_previous_window() {
    for trial in 0..2_000 {
        let clock = ManualClock::new(10 * W);
        let l = Arc::new(limiter(&clock));
        let q = quota(10, 1_000_000);
        for _ in 0..10 {
            l.check_and_charge(7, 1, q).unwrap();
        }
        l.rotate();
        clock.advance(W + W / 2);
        l.rotate();
        let barrier = std::sync::Barrier::new(4);
        let admitted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let (l, barrier) = (&l, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (0..3)
                            .filter(|_| l.check_and_charge(7, 1, q).is_ok())
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(
            admitted <= 5,
            "trial {trial}: {admitted} admitted where 5 fit"
        );
    }
}

/// Many threads charge while the clock crosses a window boundary (and the
/// rotation runs), with a non-empty previous window: whatever the
/// interleaving, the sliding usage after the race is within both quotas.
#[test]
fn racing_across_a_window_boundary_never_over_admits() {
    const MS: u64 = 1_000;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    for trial in 0..300 {
        let clock = ManualClock::new(10 * MS + 500);
        let l = RateLimiter::exact(MS, clock.clone());
        let q = quota(20 + rand(20), 400 + rand(400));
        // A previous window holding part of the quota.
        for _ in 0..rand(20) {
            let _ = l.check_and_charge(7, rand(20), q);
        }
        l.rotate();
        clock.set(11 * MS + MS - 3);
        l.rotate();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (l, clock, done) = (&l, &clock, &done);
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        let mut n = 0;
                        while !done.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                            let _ = l.check_and_charge(7, (t * 7 + n) % 25, q);
                            n += 1;
                        }
                    })
                })
                .collect();
            // The clock walks over the boundary, a millisecond at a time.
            for _ in 0..6 {
                std::thread::yield_now();
                clock.advance(1);
                l.rotate();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            for w in workers {
                w.join().unwrap();
            }
        });
        let used = l.peek(7, q).used;
        assert!(
            used.requests <= q.rpm.unwrap() && used.tokens <= q.tpm.unwrap(),
            "trial {trial}: {used:?} over {q:?}"
        );
    }
}

/// A request that read the clock just before a window boundary and charged
/// just after it (a preempted thread) is judged where its charge landed:
/// it cannot push the new window past the quota that requests in the new
/// window already filled.
#[test]
fn a_charge_that_straddles_the_boundary_is_judged_after_it() {
    use std::sync::Mutex;
    type Hook = Box<dyn FnOnce() + Send>;
    struct Scripted {
        now: ManualClock,
        /// Runs inside the next clock read, which then returns `stale`.
        hook: Mutex<Option<(Hook, u64)>>,
    }
    impl Clock for Scripted {
        fn now_ms(&self) -> u64 {
            let hook = self.hook.lock().unwrap().take();
            match hook {
                Some((f, stale)) => {
                    f();
                    stale
                }
                None => self.now.now_ms(),
            }
        }
    }
    let clock = Arc::new(Scripted {
        now: ManualClock::default(),
        hook: Mutex::new(None),
    });
    clock.now.set(10 * W);
    let l = Arc::new(RateLimiter::exact(W, clock.clone()));
    let q = quota(10, 1_000_000);
    for _ in 0..5 {
        l.check_and_charge(7, 0, q).unwrap();
    }
    l.rotate();
    // Request A reads the clock at the window's last millisecond; before it
    // charges, the clock moves on and the new window fills up.
    let end_of_window = 11 * W - 1;
    let (l2, c2) = (l.clone(), clock.clone());
    *clock.hook.lock().unwrap() = Some((
        Box::new(move || {
            c2.now.set(11 * W + 1);
            l2.rotate();
            let mut admitted = 0;
            while l2.check_and_charge(7, 0, q).is_ok() {
                admitted += 1;
            }
            // 5 in the previous window weigh 4: 6 fit.
            assert_eq!(admitted, 6);
        }),
        end_of_window,
    ));
    assert!(
        l.check_and_charge(7, 0, q).is_err(),
        "the straddling request would make 11 of 10"
    );
    let used = l.peek(7, q).used;
    assert_eq!(used.requests, 10, "{used:?}");
}
