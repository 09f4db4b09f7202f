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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::clock::Clock;

/// Bits of a cell that hold tokens; the rest hold requests.
const TOKEN_BITS: u32 = 40;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Largest request limit a window can count.
pub const MAX_RPM: u64 = (1 << (64 - TOKEN_BITS)) - 1;
/// Largest token limit a window can count.
pub const MAX_TPM: u64 = TOKEN_MASK;

const fn pack(requests: u64, tokens: u64) -> u64 {
    (requests << TOKEN_BITS) | (tokens & TOKEN_MASK)
}

const fn unpack(cell: u64) -> Usage {
    Usage {
        requests: cell >> TOKEN_BITS,
        tokens: cell & TOKEN_MASK,
    }
}

/// Requests and tokens, counted or estimated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
}

/// A count-min sketch of packed (requests, tokens) cells.
pub struct Sketch {
    cells: Box<[AtomicU64]>,
    depth: usize,
    mask: usize,
}

impl Sketch {
    /// `width` is rounded up to a power of two.
    pub fn new(depth: usize, width: usize) -> Self {
        let depth = depth.max(1);
        let width = width.max(1).next_power_of_two();
        Sketch {
            cells: (0..depth * width).map(|_| AtomicU64::new(0)).collect(),
            depth,
            mask: width - 1,
        }
    }

    /// Bytes held by the cells.
    pub fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU64>()
    }

    /// The cell of `hash` in each row (double hashing: one hash, `depth`
    /// independent-enough positions).
    #[inline]
    fn cells_of(&self, hash: u64) -> impl Iterator<Item = &AtomicU64> {
        let h1 = hash as usize;
        let h2 = ((hash >> 32) as usize) | 1;
        let width = self.mask + 1;
        (0..self.depth).map(move |r| {
            let col = h1.wrapping_add(r.wrapping_mul(h2)) & self.mask;
            &self.cells[r * width + col]
        })
    }

    /// The estimate for `hash`: the smallest count in its cells, per field.
    pub fn get(&self, hash: u64) -> Usage {
        let mut u = Usage {
            requests: u64::MAX,
            tokens: u64::MAX,
        };
        for c in self.cells_of(hash) {
            let v = unpack(c.load(Ordering::Relaxed));
            u.requests = u.requests.min(v.requests);
            u.tokens = u.tokens.min(v.tokens);
        }
        u
    }

    /// Adds `delta` and returns the new estimate.
    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        let d = pack(delta.requests, delta.tokens);
        let mut u = Usage {
            requests: u64::MAX,
            tokens: u64::MAX,
        };
        for c in self.cells_of(hash) {
            let v = unpack(c.fetch_add(d, Ordering::AcqRel).wrapping_add(d));
            u.requests = u.requests.min(v.requests);
            u.tokens = u.tokens.min(v.tokens);
        }
        u
    }

    /// Takes `delta` back, never below zero in any field.
    pub fn sub(&self, hash: u64, delta: Usage) {
        for c in self.cells_of(hash) {
            saturating_sub(c, delta);
        }
    }

    pub fn clear(&self) {
        for c in self.cells.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Places probed for a client before it spills into the overflow sketch.
const PROBES: usize = 32;
/// Rows and width of the overflow sketch of a [`ClientTable`].
const OVERFLOW_DEPTH: usize = 4;
const OVERFLOW_WIDTH: usize = 1 << 14;

/// Exact per-client counts in an open-addressing table keyed by 64-bit
/// fingerprints, with a count-min sketch for the clients that find no place.
pub struct ClientTable {
    /// `[fingerprint, packed count]` per place; fingerprint 0 = free.
    places: Box<[[AtomicU64; 2]]>,
    overflow: Sketch,
}

enum Place<'a> {
    Found(&'a AtomicU64),
    Absent,
    Full,
}

impl ClientTable {
    /// A table for `capacity` clients (at a load of two thirds).
    pub fn new(capacity: usize) -> Self {
        let n = (capacity.max(16) * 3).div_ceil(2);
        ClientTable {
            places: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            overflow: Sketch::new(OVERFLOW_DEPTH, OVERFLOW_WIDTH),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.places.len() * 16 + self.overflow.memory_bytes()
    }

    /// Finds the count of `hash`, claiming a free place if `insert`.
    #[inline]
    fn place(&self, hash: u64, insert: bool) -> Place<'_> {
        let fp = hash.max(1);
        let n = self.places.len();
        let start = ((hash as u128 * n as u128) >> 64) as usize;
        for i in 0..PROBES.min(n) {
            let [key, count] = &self.places[(start + i) % n];
            let k = key.load(Ordering::Acquire);
            if k == fp {
                return Place::Found(count);
            }
            if k == 0 {
                if !insert {
                    return Place::Absent;
                }
                match key.compare_exchange(0, fp, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Place::Found(count),
                    Err(other) if other == fp => return Place::Found(count),
                    Err(_) => {}
                }
            }
        }
        Place::Full
    }

    pub fn get(&self, hash: u64) -> Usage {
        match self.place(hash, false) {
            Place::Found(c) => unpack(c.load(Ordering::Acquire)),
            Place::Absent => Usage::default(),
            Place::Full => self.overflow.get(hash),
        }
    }

    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self.place(hash, true) {
            Place::Found(c) => {
                let d = pack(delta.requests, delta.tokens);
                unpack(c.fetch_add(d, Ordering::AcqRel).wrapping_add(d))
            }
            Place::Absent | Place::Full => self.overflow.add(hash, delta),
        }
    }

    pub fn sub(&self, hash: u64, delta: Usage) {
        match self.place(hash, false) {
            Place::Found(c) => saturating_sub(c, delta),
            Place::Absent => {}
            Place::Full => self.overflow.sub(hash, delta),
        }
    }

    pub fn clear(&self) {
        for [k, c] in self.places.iter() {
            k.store(0, Ordering::Relaxed);
            c.store(0, Ordering::Relaxed);
        }
        self.overflow.clear();
    }
}

fn saturating_sub(c: &AtomicU64, delta: Usage) {
    let _ = c.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |cur| {
        let v = unpack(cur);
        Some(pack(
            v.requests.saturating_sub(delta.requests),
            v.tokens.saturating_sub(delta.tokens),
        ))
    });
}

/// How a limiter's tables are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One client, counted exactly.
    Exact,
    /// Many clients: a [`ClientTable`] for this many per window.
    Clients { capacity: usize },
    /// Many clients in a plain count-min sketch (for comparison).
    Sketch { depth: usize, width: usize },
}

/// The counts of one window.
pub enum CountTable {
    Sketch(Sketch),
    Clients(ClientTable),
}

impl CountTable {
    pub fn new(shape: Shape) -> Self {
        match shape {
            Shape::Exact => CountTable::Sketch(Sketch::new(1, 1)),
            Shape::Clients { capacity } => CountTable::Clients(ClientTable::new(capacity)),
            Shape::Sketch { depth, width } => CountTable::Sketch(Sketch::new(depth, width)),
        }
    }

    #[inline]
    pub fn get(&self, hash: u64) -> Usage {
        match self {
            CountTable::Sketch(t) => t.get(hash),
            CountTable::Clients(t) => t.get(hash),
        }
    }

    #[inline]
    pub fn add(&self, hash: u64, delta: Usage) -> Usage {
        match self {
            CountTable::Sketch(t) => t.add(hash, delta),
            CountTable::Clients(t) => t.add(hash, delta),
        }
    }

    #[inline]
    pub fn sub(&self, hash: u64, delta: Usage) {
        match self {
            CountTable::Sketch(t) => t.sub(hash, delta),
            CountTable::Clients(t) => t.sub(hash, delta),
        }
    }

    pub fn clear(&self) {
        match self {
            CountTable::Sketch(t) => t.clear(),
            CountTable::Clients(t) => t.clear(),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            CountTable::Sketch(t) => t.memory_bytes(),
            CountTable::Clients(t) => t.memory_bytes(),
        }
    }
}

const NO_WINDOW: u64 = u64::MAX;

struct Slot {
    /// The window this slot's table counts; `NO_WINDOW` while cleared for
    /// reuse.
    window: AtomicU64,
    table: CountTable,
}

/// Three tables in rotation: previous, current, and next (cleared ahead).
pub struct WindowRing {
    slots: [Slot; 3],
}

impl WindowRing {
    fn new(shape: Shape, now_window: u64) -> Self {
        let slot = |w: u64| Slot {
            window: AtomicU64::new(w),
            table: CountTable::new(shape),
        };
        let mut slots = [slot(NO_WINDOW), slot(NO_WINDOW), slot(NO_WINDOW)];
        for w in [now_window.saturating_sub(1), now_window, now_window + 1] {
            slots[(w % 3) as usize].window = AtomicU64::new(w);
        }
        WindowRing { slots }
    }

    /// The table counting window `n`, if the ring holds it.
    #[inline]
    fn table(&self, n: u64) -> Option<&CountTable> {
        let s = &self.slots[(n % 3) as usize];
        (s.window.load(Ordering::Acquire) == n).then_some(&s.table)
    }

    /// Prepares the current and next windows' tables. Off the request path.
    fn rotate(&self, now_window: u64) {
        for w in [now_window, now_window + 1] {
            let s = &self.slots[(w % 3) as usize];
            if s.window.load(Ordering::Acquire) != w {
                s.window.store(NO_WINDOW, Ordering::Release);
                s.table.clear();
                s.window.store(w, Ordering::Release);
            }
        }
    }

    fn memory_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.table.memory_bytes()).sum()
    }
}

/// A client's limits per window; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// Which quota refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
}

/// What a client has left, for the rate-limit response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaState {
    pub quota: Quota,
    /// Estimated usage after this decision.
    pub used: Usage,
    /// Milliseconds until the current window ends.
    pub reset_ms: u64,
    pub window_ms: u64,
}

impl QuotaState {
    pub fn requests_remaining(&self) -> Option<u64> {
        self.quota.rpm.map(|l| l.saturating_sub(self.used.requests))
    }

    pub fn tokens_remaining(&self) -> Option<u64> {
        self.quota.tpm.map(|l| l.saturating_sub(self.used.tokens))
    }

    /// The limited quotas: (which, limit, remaining).
    pub fn dimensions(&self) -> Vec<(Exceeded, u64, u64)> {
        let mut v = Vec::with_capacity(2);
        if let (Some(l), Some(r)) = (self.quota.rpm, self.requests_remaining()) {
            v.push((Exceeded::Requests, l, r));
        }
        if let (Some(l), Some(r)) = (self.quota.tpm, self.tokens_remaining()) {
            v.push((Exceeded::Tokens, l, r));
        }
        v
    }

    /// The quota to report: the one that refused, else the one closest to
    /// exhaustion (smallest remaining share).
    pub fn tightest(&self, refused: Option<Exceeded>) -> Option<(Exceeded, u64, u64)> {
        let dims = self.dimensions();
        match refused {
            Some(r) => dims.into_iter().find(|d| d.0 == r),
            // remaining/limit compared as r·L' < r'·L.
            None => dims.into_iter().min_by(|a, b| {
                (a.2 as u128 * b.1.max(1) as u128).cmp(&(b.2 as u128 * a.1.max(1) as u128))
            }),
        }
    }
}

/// A refusal: which quota, and how long until enough of it frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub exceeded: Exceeded,
    pub retry_after_ms: u64,
    pub state: QuotaState,
}

/// What an admitted request was charged, and to which window: a refund or a
/// settlement after the window moved on still lands where the charge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub window: u64,
    pub hash: u64,
    pub charged: Usage,
}

/// The sliding-window limiter for one table size: either the crowd of
/// unlisted clients (a sketch), or one configured client (exact).
pub struct RateLimiter {
    ring: WindowRing,
    window_ms: u64,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    /// A limiter whose tables have `shape`.
    pub fn new(shape: Shape, window_ms: u64, clock: Arc<dyn Clock>) -> Self {
        let window_ms = window_ms.max(1);
        let n = clock.now_ms() / window_ms;
        RateLimiter {
            ring: WindowRing::new(shape, n),
            window_ms,
            clock,
        }
    }

    /// An exact counter for one client.
    pub fn exact(window_ms: u64, clock: Arc<dyn Clock>) -> Self {
        Self::new(Shape::Exact, window_ms, clock)
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
        self.ring.rotate(self.clock.now_ms() / self.window_ms);
    }

    /// (window, elapsed fraction in ‰ of it, ms left in it)
    fn position(&self, now: u64) -> (u64, u64, u64) {
        let n = now / self.window_ms;
        let into = now % self.window_ms;
        (n, into, self.window_ms - into)
    }

    /// The sliding estimate for `hash` at `now`.
    fn estimate(&self, hash: u64, n: u64, into: u64) -> Usage {
        let cur = self.ring.table(n).map(|t| t.get(hash)).unwrap_or_default();
        let prev = match n.checked_sub(1).and_then(|p| self.ring.table(p)) {
            Some(t) => t.get(hash),
            None => Usage::default(),
        };
        let left = self.window_ms - into;
        let weigh = |v: u64| ((v as u128 * left as u128) / self.window_ms as u128) as u64;
        Usage {
            requests: cur.requests + weigh(prev.requests),
            tokens: cur.tokens + weigh(prev.tokens),
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
    ) -> Result<(Reservation, QuotaState), Refusal> {
        let now = self.clock.now_ms();
        let (n, into, reset_ms) = self.position(now);
        let state = |used| QuotaState {
            quota,
            used,
            reset_ms,
            window_ms: self.window_ms,
        };
        let before = self.estimate(hash, n, into);
        if let Some(r) = self.refusal(hash, before, tokens, quota, n, into) {
            return Err(Refusal {
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
        let Some(table) = self.ring.table(n) else {
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
        let after_cur = table.add(hash, charge);
        // Re-check with what concurrent requests added meanwhile: the add
        // returned the exact current-window count including them.
        let prev_part = Usage {
            requests: before
                .requests
                .saturating_sub(after_cur.requests.saturating_sub(charge.requests)),
            tokens: before
                .tokens
                .saturating_sub(after_cur.tokens.saturating_sub(charge.tokens)),
        };
        let after = Usage {
            requests: after_cur.requests + prev_part.requests,
            tokens: after_cur.tokens + prev_part.tokens,
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
            return Err(Refusal {
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
        let cur = self.ring.table(n).map(|t| t.get(hash)).unwrap_or_default();
        let prev = n
            .checked_sub(1)
            .and_then(|p| self.ring.table(p))
            .map(|t| t.get(hash))
            .unwrap_or_default();
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
    /// (more tokens) in the current one.
    pub fn settle_tokens(&self, r: &mut Reservation, actual: u64) {
        let charged = r.charged.tokens;
        if actual > charged {
            let extra = Usage {
                requests: 0,
                tokens: actual - charged,
            };
            let n = self.clock.now_ms() / self.window_ms;
            if let Some(t) = self.ring.table(r.window).or_else(|| self.ring.table(n)) {
                t.add(r.hash, extra);
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
    }
}

#[cfg(test)]
mod tests {
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
        for shape in [
            Shape::Sketch {
                depth: 4,
                width: 1 << 14,
            },
            Shape::Clients { capacity: 1000 },
        ] {
            let l = RateLimiter::new(shape, W, clock.clone());
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
    fn client_table_is_exact_to_capacity_then_spills() {
        let t = ClientTable::new(1000);
        let one = Usage {
            requests: 1,
            tokens: 2,
        };
        let hashes: Vec<u64> = (1..=5000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for h in &hashes {
            assert_eq!(t.add(*h, one), one);
        }
        // Past capacity, every client is still counted at least once.
        for h in &hashes {
            assert!(t.get(*h).requests >= 1);
        }
        for h in &hashes[..1000] {
            assert_eq!(t.get(*h), one);
            t.sub(*h, one);
            assert_eq!(t.get(*h), Usage::default());
        }
        t.clear();
        assert_eq!(t.get(hashes[0]), Usage::default());
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

    #[test]
    fn packing_round_trips() {
        let u = unpack(pack(MAX_RPM, MAX_TPM));
        assert_eq!(
            u,
            Usage {
                requests: MAX_RPM,
                tokens: MAX_TPM
            }
        );
    }
}
