//! Time as the limiters see it: injectable, so unit tests need no sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Milliseconds on a clock that never goes backwards.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// Wall-clock milliseconds since the Unix epoch, so that window boundaries
/// fall at the same instants on every instance of a fleet. Never goes back:
/// a wall-clock step backwards holds the last reading until time catches up.
#[derive(Debug, Default)]
pub struct SystemClock {
    last: AtomicU64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Written at most once a millisecond, so threads do not fight over
        // the cache line.
        let prev = self.last.load(Ordering::Relaxed);
        if wall > prev {
            self.last.fetch_max(wall, Ordering::Relaxed);
            wall
        } else {
            prev
        }
    }
}

/// [`SystemClock`] read once a millisecond by a thread of its own, so that
/// reading it is one atomic load (a decision reads the time twice: reading
/// the system clock costs more than the rest of a configured client's
/// decision). It lags the system clock by at most a tick, and never goes
/// back. The thread ends when the clock is dropped.
#[derive(Debug)]
pub struct CoarseClock {
    now: AtomicU64,
}

/// How often the coarse clock is read.
const TICK: std::time::Duration = std::time::Duration::from_millis(1);

impl CoarseClock {
    /// Starts the clock and its thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let system = SystemClock::default();
        let clock = Arc::new(CoarseClock {
            now: AtomicU64::new(system.now_ms()),
        });
        let weak = Arc::downgrade(&clock);
        std::thread::Builder::new()
            .name("floodgate-clock".into())
            .spawn(move || {
                while let Some(c) = weak.upgrade() {
                    c.now.fetch_max(system.now_ms(), Ordering::Relaxed);
                    drop(c);
                    // Its own thread: nothing else waits on this sleep.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(clock)
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start_ms),
        })
    }

    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_system_clock() {
        let c = CoarseClock::start().unwrap();
        let s = SystemClock::default();
        let a = c.now_ms();
        assert!(s.now_ms().abs_diff(a) < 1000);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while c.now_ms() == a {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock never ticked"
            );
            std::thread::yield_now();
        }
    }
}
