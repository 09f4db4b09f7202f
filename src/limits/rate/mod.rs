//! Requests and tokens per window: a sliding-window limiter over count-min
//! tables, with an atomic check-and-add and refunds that land in the window
//! they were charged to.
//!
//! # Window arithmetic
//!
//! Time is cut into windows of `window_ms`; window `n` covers
//! `[n·W, (n+1)·W)`. A client's usage at time `t` in window `n` is estimated
//! as the previous window weighted by the part of it still inside the
//! sliding window, plus the current one (the estimate `pingora-limits`
//! exposes through `Rate::rate_with`):
//!
//! ```text
//! usage(t) = prev · (1 − f) + cur,   f = (t − n·W) / W
//! ```
//!
//! # Storage
//!
//! A [`WindowRing`] holds three [`CountTable`]s: the current window, the
//! previous one, and the next one, which the background rotation clears
//! ahead of time. So the request path never pays for clearing a table (a
//! table for two million clients is over a hundred megabytes): at a boundary
//! it simply moves to the table already prepared. A count packs requests
//! (high 24 bits) and tokens (low 40 bits) in one `AtomicU64`, so one atomic
//! add charges both.
//!
//! A table is one of:
//! - [`Sketch`]: a count-min sketch. `1 × 1` is the exact counter of one
//!   configured client, which no other client can disturb.
//! - [`ClientTable`]: the counts of many clients, keyed by a 64-bit
//!   fingerprint of their id in an open-addressing table sized for
//!   `max_tracked_clients` per window. Exact up to that capacity (two ids
//!   share a count only if their 64-bit hashes collide); a client that finds
//!   no free place spills into a small count-min sketch, so memory stays
//!   bounded and accuracy degrades gradually past the capacity. A pure
//!   count-min sketch in the same memory refuses a few percent of clients
//!   under their quota at two million clients (`cargo bench --bench
//!   clients` measures both).
//!
//! Pingora's `Rate` clears its whole sketch inline on the request that
//! crosses a window boundary, has no check-and-add, and cannot refund; this
//! module exists for those three reasons.

mod cell;
mod quota;
mod ring;
mod sketch;
mod table;

use std::sync::Arc;

use super::clock::Clock;
pub use cell::{Usage, MAX_RPM, MAX_TPM};
pub use quota::{Dimensions, Exceeded, OverQuota, Quota, QuotaState, Reservation};
use ring::WindowRing;
pub use sketch::Sketch;
pub use table::{ClientTable, CountTable, OverflowKind, TableKind, TablePlan};

/// The sliding-window limiter for one table size: either the crowd of
/// unlisted clients (a sketch), or one configured client (exact).
pub struct RateLimiter {
    ring: WindowRing,
    window_ms: u64,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// A limiter whose tables are of `kind`. Fails only when a client
    /// table's memory cannot be reserved.
    pub fn new(kind: TableKind, window_ms: u64, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let window_ms = window_ms.max(1);
        let n = clock.now_ms() / window_ms;
        Ok(RateLimiter {
            ring: WindowRing::new(kind, n)?,
            window_ms,
            clock,
        })
    }

    /// An exact counter for one client.
    pub fn exact(window_ms: u64, clock: Arc<dyn Clock>) -> Self {
        let n = clock.now_ms() / window_ms.max(1);
        RateLimiter {
            ring: WindowRing::exact(n),
            window_ms: window_ms.max(1),
            clock,
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    pub fn memory_bytes(&self) -> usize {
        self.ring.memory_bytes()
    }

    /// Clears the tables of the current and next window when not already
    /// prepared. Run by the background rotation at least once per window.
    pub fn rotate(&self) {
        let (n, into, _) = self.position(self.clock.now_ms());
        self.ring.rotate(n, into, self.window_ms);
    }

    /// (window, elapsed fraction in ‰ of it, ms left in it)
    fn position(&self, now: u64) -> (u64, u64, u64) {
        let n = now / self.window_ms;
        let into = now % self.window_ms;
        (n, into, self.window_ms - into)
    }

    /// The sliding estimate for `hash` at `now`.
    fn estimate(&self, hash: u64, n: u64, into: u64) -> Usage {
        let (cur, prev) = self.counts(hash, n);
        self.slide(cur, prev, into)
    }

    /// `hash`'s counts in window `n` and the one before it.
    fn counts(&self, hash: u64, n: u64) -> (Usage, Usage) {
        let cur = self.ring.table(n).map(|t| t.get(hash)).unwrap_or_default();
        let prev = n
            .checked_sub(1)
            .and_then(|p| self.ring.table(p))
            .map(|t| t.get(hash))
            .unwrap_or_default();
        (cur, prev)
    }

    /// The sliding estimate from a window's count and the previous one's,
    /// `into` ms into the window.
    #[inline]
    fn slide(&self, cur: Usage, prev: Usage, into: u64) -> Usage {
        Usage {
            requests: cur.requests + self.weigh(prev.requests, into),
            tokens: cur.tokens + self.weigh(prev.tokens, into),
        }
    }

    /// The part of a previous-window count still inside the sliding window,
    /// `into` ms into the current one (rounded down).
    #[inline]
    fn weigh(&self, v: u64, into: u64) -> u64 {
        let left = self.window_ms - into;
        // In 64 bits when the product fits (every count a window can
        // hold in practice): a 128-bit division is a call of its own.
        match v.checked_mul(left) {
            Some(p) => p / self.window_ms,
            None => ((v as u128 * left as u128) / self.window_ms as u128) as u64,
        }
    }

    /// Current usage of `hash` under `quota`, without charging anything.
    pub fn peek(&self, hash: u64, quota: Quota) -> QuotaState {
        let (n, into, reset_ms) = self.position(self.clock.now_ms());
        QuotaState {
            quota,
            used: self.estimate(hash, n, into),
            reset_ms,
            window_ms: self.window_ms,
        }
    }

    /// Admits one request costing `tokens` if both quotas allow it, charging
    /// it at once (check and add as one step: concurrent requests of one
    /// client cannot be admitted past its quota). A refusal charges nothing.
    pub fn check_and_charge(
        &self,
        hash: u64,
        tokens: u64,
        quota: Quota,
    ) -> Result<(Reservation, QuotaState), OverQuota> {
        let now = self.clock.now_ms();
        let (n, into, reset_ms) = self.position(now);
        let state = |used| QuotaState {
            quota,
            used,
            reset_ms,
            window_ms: self.window_ms,
        };
        // Each window's table is looked up once for the whole decision (a
        // client table is behind an `ArcSwap`), and each count read once
        // for the check before charging.
        let cur_table = self.ring.table(n);
        let prev_table = n.checked_sub(1).and_then(|p| self.ring.table(p));
        let read =
            |t: &Option<ring::TableRef<'_>>| t.as_ref().map(|t| t.get(hash)).unwrap_or_default();
        for t in [&cur_table, &prev_table].into_iter().flatten() {
            t.touch(hash);
        }
        let (cur, prev) = (read(&cur_table), read(&prev_table));
        let before = self.slide(cur, prev, into);
        if let Some(r) = self.refusal_from(before, tokens, quota, cur, prev, into) {
            return Err(OverQuota {
                exceeded: r.0,
                retry_after_ms: r.1,
                state: state(before),
            });
        }
        // Only limited dimensions are counted: an unlimited one could
        // never refuse, and not counting it keeps the cell from overflowing.
        let charge = Usage {
            requests: u64::from(quota.rpm.is_some()),
            tokens: if quota.tpm.is_some() { tokens } else { 0 },
        };
        let Some(table) = cur_table else {
            // The rotation is behind (a stalled thread): admit uncounted
            // rather than count into a table that is about to be cleared.
            return Ok((
                Reservation {
                    window: n,
                    hash,
                    charged: Usage::default(),
                },
                state(before),
            ));
        };
        // Charge first, then read everything the decision depends on: of
        // two racing requests, each adds before it reads, so at least one
        // sees the other's charge and neither is admitted past the quota
        // (however many requests race, and whatever the previous window
        // holds). The add returns the exact current-window count.
        let after_cur = table.add(hash, charge);
        let now = self.clock.now_ms();
        let after = if now / self.window_ms == n {
            let prev = read(&prev_table);
            let (_, into_now, _) = self.position(now);
            let w = |v| self.weigh(v, into_now);
            Usage {
                requests: after_cur.requests + w(prev.requests),
                tokens: after_cur.tokens + w(prev.tokens),
            }
        } else {
            // The window moved on while this request charged: its charge is
            // in what is now the previous window; judge it from there.
            let (n_now, into_now, _) = self.position(now);
            self.estimate(hash, n_now, into_now)
        };
        let over_rpm = quota.rpm.is_some_and(|l| after.requests > l);
        let over_tpm = quota.tpm.is_some_and(|l| after.tokens > l);
        if over_rpm || over_tpm {
            table.sub(hash, charge);
            let exceeded = if over_rpm {
                Exceeded::Requests
            } else {
                Exceeded::Tokens
            };
            let now_est = self.estimate(hash, n, into);
            let retry = self
                .refusal(hash, now_est, tokens, quota, n, into)
                .map_or(1, |r| r.1);
            return Err(OverQuota {
                exceeded,
                retry_after_ms: retry,
                state: state(now_est),
            });
        }
        Ok((
            Reservation {
                window: n,
                hash,
                charged: charge,
            },
            state(after),
        ))
    }

    /// Whether `used` plus one request of `tokens` breaks `quota`; if so,
    /// which quota and the wait until it would fit.
    fn refusal(
        &self,
        hash: u64,
        used: Usage,
        tokens: u64,
        quota: Quota,
        n: u64,
        into: u64,
    ) -> Option<(Exceeded, u64)> {
        let (cur, prev) = self.counts(hash, n);
        self.refusal_from(used, tokens, quota, cur, prev, into)
    }

    /// [`Self::refusal`], from the counts (`cur`, `prev`) already read.
    fn refusal_from(
        &self,
        used: Usage,
        tokens: u64,
        quota: Quota,
        cur: Usage,
        prev: Usage,
        into: u64,
    ) -> Option<(Exceeded, u64)> {
        let mut worst: Option<(Exceeded, u64)> = None;
        let mut consider =
            |which, limit: Option<u64>, used: u64, cost: u64, cur: u64, prev: u64| {
                if let Some(l) = limit {
                    if used + cost > l {
                        let wait = self.wait_ms(l, cost, cur, prev, into);
                        if worst.is_none_or(|(_, w)| wait > w) {
                            worst = Some((which, wait));
                        }
                    }
                }
            };
        consider(
            Exceeded::Requests,
            quota.rpm,
            used.requests,
            1,
            cur.requests,
            prev.requests,
        );
        consider(
            Exceeded::Tokens,
            quota.tpm,
            used.tokens,
            tokens,
            cur.tokens,
            prev.tokens,
        );
        worst
    }

    /// Milliseconds until `cost` fits under `limit`, as the previous
    /// window's weight decays and, if need be, the current window becomes
    /// the previous one.
    fn wait_ms(&self, limit: u64, cost: u64, cur: u64, prev: u64, into: u64) -> u64 {
        let w = self.window_ms as u128;
        let left = (self.window_ms - into) as u128;
        if cost > limit {
            return self.window_ms * 2;
        }
        let room = (limit - cost) as u128;
        let cur = cur as u128;
        let prev = prev as u128;
        if cur <= room {
            // Within this window: need prev·(left − x)/W ≤ room − cur.
            if prev == 0 {
                return 1;
            }
            let keep = ((room - cur) * w) / prev; // largest (left − x)
            return (left.saturating_sub(keep) as u64).max(1);
        }
        // Next window: need cur·(W − y)/W ≤ room, y into the next window.
        let keep = (room * w) / cur;
        (left + w.saturating_sub(keep)).min(2 * w) as u64
    }

    /// Takes back a charge (a refusal further down the request path, or a
    /// failed upstream request). A charge whose window has left the ring has
    /// expired already and is not refunded.
    pub fn refund(&self, r: &Reservation, what: Usage) {
        let what = Usage {
            requests: what.requests.min(r.charged.requests),
            tokens: what.tokens.min(r.charged.tokens),
        };
        if let Some(t) = self.ring.table(r.window) {
            t.sub(r.hash, what);
        }
    }

    /// Replaces a token charge by the actual count: charges the difference
    /// or takes it back, in the charge's window when it is still held, else
    /// (more tokens) in the current one. An actual count past [`MAX_TPM`] is
    /// counted as `MAX_TPM` (more than any quota): returns whether it was
    /// clamped.
    pub fn settle_tokens(&self, r: &mut Reservation, actual: u64) -> bool {
        let clamped = actual > MAX_TPM;
        let actual = actual.min(MAX_TPM);
        let charged = r.charged.tokens;
        if actual > charged {
            let n = self.clock.now_ms() / self.window_ms;
            if let Some(t) = self.ring.table(r.window).or_else(|| self.ring.table(n)) {
                t.add_tokens_capped(r.hash, actual - charged, MAX_TPM);
            }
        } else if actual < charged {
            self.refund(
                r,
                Usage {
                    requests: 0,
                    tokens: charged - actual,
                },
            );
        }
        r.charged.tokens = actual;
        clamped
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests;
