//! Quotas shared by a fleet of gateways, as one instance sees them, with no
//! call to the shared store on the request path.
//!
//! Each instance decides from what it counted itself (its own
//! [`RateLimiter`](super::rate::RateLimiter), exact and race-free) plus
//! what the other instances had counted at the last sync:
//!
//! ```text
//! admit  ⇔  own(t) + others(t) + cost ≤ limit
//! others(t) = others_cur + others_prev · (1 − f)       (the sliding window)
//! ```
//!
//! A background task (`services::fleet`) writes each instance's own totals
//! per client and window to the store and reads everyone's back, every
//! `sync_interval`. Totals, not increments: a write that is retried, or
//! lands twice, changes nothing, and a refund is just a smaller total. So
//! over-admission of one client is bounded by what the *other* instances
//! admit while an instance's view of them is stale. That view is up to two
//! intervals old (the other's write was up to one interval old when read,
//! and the read is used for up to one more), so the bound is
//! `(instances − 1) × rate × 2 × sync_interval`. Proof: let B be the
//! instance that admits last, at t. It admitted because its own count plus
//! what it saw of the others (their totals as of t − 2 × sync_interval at
//! the oldest) was under the limit; so the fleet's total exceeds the limit
//! by at most what the others admitted in the last 2 × sync_interval
//! before t. Rounds that run late (a loaded machine, a slow Redis) stretch
//! the interval in that formula to the real one, and so does a view of a
//! client not used here lately: those are read too, up to a budget a
//! round, oldest first, so a view does not stay as it was the last time
//! the client came here (past the budget, views take turns and may be
//! older). A client new here is judged on its own count until the first
//! read, at most two intervals.
//!
//! While the store is unreachable ([`FleetQuotas::set_degraded`]) the
//! instance applies `on_redis_down`: its share of the limit
//! (`limit / live instances`, the last count known), the full limit alone,
//! or nothing at all.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::clock::Clock;
use super::rate::{Quota, Usage};

/// What an instance does while the fleet's store is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDown {
    /// Each instance enforces `limit / live instances` on its own.
    #[default]
    Local,
    /// Each instance enforces the whole limit on its own.
    Allow,
    /// Every limited request is refused until the store is back.
    Deny,
}

/// One client's usage in one window.
#[derive(Debug, Default)]
struct Cell {
    window: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
}

impl Cell {
    /// The cell's usage, if it is window `n`'s.
    fn get(&self, n: u64) -> Usage {
        if self.window.load(Ordering::Acquire) != n {
            return Usage::default();
        }
        Usage {
            requests: self.requests.load(Ordering::Acquire),
            tokens: self.tokens.load(Ordering::Acquire),
        }
    }

    /// Makes the cell window `n`'s (emptied if it held an older one);
    /// `false` when it holds a newer window already.
    fn claim(&self, n: u64) -> bool {
        let held = self.window.load(Ordering::Acquire);
        if held == n {
            return true;
        }
        if held > n && held != 0 {
            return false;
        }
        if self
            .window
            .compare_exchange(held, n, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.requests.store(0, Ordering::Release);
            self.tokens.store(0, Ordering::Release);
        }
        self.window.load(Ordering::Acquire) == n
    }

    fn set(&self, n: u64, u: Usage) {
        self.window.store(n, Ordering::Release);
        self.requests.store(u.requests, Ordering::Release);
        self.tokens.store(u.tokens, Ordering::Release);
    }
}

/// One client's counts: this instance's own totals (what the sync writes)
/// and the other instances' (what it read), for two windows each, by
/// window parity.
#[derive(Debug, Default)]
pub struct ClientCounts {
    own: [Cell; 2],
    others: [Cell; 2],
    /// Changed since the last sync wrote it.
    dirty: AtomicBool,
    /// The window it was last used in (entries idle for two windows are
    /// forgotten).
    last_used: AtomicU64,
    /// When (the clock's ms) a sync last read the others' totals; 0 never.
    viewed_at: AtomicU64,
}

/// A client's own totals to write: (window, usage) for each window held.
pub type OwnTotals = Vec<(u64, Usage)>;

/// The fleet's view of the client quotas.
pub struct FleetQuotas {
    window_ms: u64,
    clock: Arc<dyn Clock>,
    clients: DashMap<Arc<str>, Arc<ClientCounts>, ahash::RandomState>,
    degraded: AtomicBool,
    live: AtomicU64,
    on_down: OnDown,
    /// Clients followed at most (`max_tracked_clients`): past it, a new
    /// client is judged by this instance's count alone until one is
    /// forgotten, so memory stays bounded however many ids arrive.
    capacity: usize,
}

impl std::fmt::Debug for FleetQuotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetQuotas")
            .field("clients", &self.clients.len())
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish()
    }
}

/// How the fleet changes one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Judge `own + others` against the quota.
    Shared(Usage),
    /// The store is unreachable: judge `own` against this quota.
    Alone(Quota),
    /// The store is unreachable and `on_redis_down = "deny"`.
    Deny,
}

impl FleetQuotas {
    pub fn new(
        window_ms: u64,
        clock: Arc<dyn Clock>,
        on_down: OnDown,
        capacity: usize,
    ) -> Arc<Self> {
        Arc::new(FleetQuotas {
            window_ms: window_ms.max(1),
            clock,
            clients: DashMap::with_hasher(ahash::RandomState::new()),
            degraded: AtomicBool::new(false),
            live: AtomicU64::new(1),
            on_down,
            capacity: capacity.max(1),
        })
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    fn counts(&self, id: &str) -> Option<Arc<ClientCounts>> {
        if let Some(c) = self.clients.get(id) {
            return Some(c.clone());
        }
        if self.clients.len() >= self.capacity {
            return None;
        }
        Some(
            self.clients
                .entry(Arc::from(id))
                .or_insert_with(|| Arc::new(ClientCounts::default()))
                .clone(),
        )
    }

    /// What the fleet adds to a decision for `id`, at the clock's now.
    pub fn verdict(&self, id: &str, quota: Quota) -> Verdict {
        if self.degraded.load(Ordering::Acquire) {
            return match self.on_down {
                OnDown::Allow => Verdict::Alone(quota),
                OnDown::Deny => Verdict::Deny,
                OnDown::Local => {
                    let live = self.live.load(Ordering::Acquire).max(1);
                    let share = |l: u64| l.div_ceil(live);
                    Verdict::Alone(Quota {
                        rpm: quota.rpm.map(share),
                        tpm: quota.tpm.map(share),
                    })
                }
            };
        }
        Verdict::Shared(self.others(id))
    }

    /// The other instances' sliding-window usage of `id`'s quotas.
    pub fn others(&self, id: &str) -> Usage {
        let Some(c) = self.clients.get(id).map(|c| c.clone()) else {
            return Usage::default();
        };
        let now = self.clock.now_ms();
        let n = now / self.window_ms;
        let into = now % self.window_ms;
        let cur = c.others[(n % 2) as usize].get(n);
        let prev = n
            .checked_sub(1)
            .map(|p| c.others[(p % 2) as usize].get(p))
            .unwrap_or_default();
        let left = (self.window_ms - into) as u128;
        let w = |v: u64| ((v as u128 * left) / self.window_ms as u128) as u64;
        Usage {
            requests: cur.requests + w(prev.requests),
            tokens: cur.tokens + w(prev.tokens),
        }
    }

    /// Counts what this instance admitted (or, negative, took back) for
    /// `id` in window `n`.
    pub fn record(&self, id: &str, n: u64, requests: i64, tokens: i64) {
        if requests == 0 && tokens == 0 {
            return;
        }
        let Some(c) = self.counts(id) else {
            return;
        };
        let cell = &c.own[(n % 2) as usize];
        if !cell.claim(n) {
            // A window older than the one the cell holds: already written.
            return;
        }
        let add = |a: &AtomicU64, d: i64| {
            if d >= 0 {
                a.fetch_add(d as u64, Ordering::AcqRel);
            } else {
                let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(d.unsigned_abs()))
                });
            }
        };
        add(&cell.requests, requests);
        add(&cell.tokens, tokens);
        c.last_used.store(n, Ordering::Release);
        c.dirty.store(true, Ordering::Release);
    }

    /// The clients to sync, with their own totals to write (empty: read
    /// only). Every client used here since the last sync writes its totals
    /// and reads the others' back; of the clients followed but not used
    /// since, the `read_budget` whose view of the others is oldest read
    /// theirs, so a view does not stay as it was the last time the client
    /// came here (a refund or a burst elsewhere since would be missed by
    /// its next request here). Clients idle for two windows are forgotten.
    /// So the store's load follows the clients in use, not the requests.
    pub fn to_sync(&self, read_budget: usize) -> Vec<(Arc<str>, OwnTotals)> {
        let n = self.clock.now_ms() / self.window_ms;
        self.clients
            .retain(|_, c| c.last_used.load(Ordering::Acquire) + 2 >= n);
        let mut out = Vec::new();
        // The `read_budget` oldest views among the clean clients: a max-heap
        // of that size, so only those clients' ids are cloned.
        let mut clean: BinaryHeap<(u64, Arc<str>)> = BinaryHeap::with_capacity(read_budget);
        for e in self.clients.iter() {
            let c = e.value();
            if !c.dirty.swap(false, Ordering::AcqRel) {
                let viewed_at = c.viewed_at.load(Ordering::Acquire);
                if clean.len() < read_budget {
                    clean.push((viewed_at, e.key().clone()));
                } else if clean.peek().is_some_and(|(newest, _)| viewed_at < *newest) {
                    clean.pop();
                    clean.push((viewed_at, e.key().clone()));
                }
                continue;
            }
            let own = c
                .own
                .iter()
                .filter_map(|cell| {
                    let w = cell.window.load(Ordering::Acquire);
                    (w > 0 && w + 1 >= n).then(|| (w, cell.get(w)))
                })
                .collect();
            out.push((e.key().clone(), own));
        }
        out.extend(clean.into_iter().map(|(_, id)| (id, Vec::new())));
        out
    }

    /// Writes every client's totals again at the next sync (after the
    /// store was away: it may have lost them).
    pub fn mark_all_dirty(&self) {
        for c in self.clients.iter() {
            c.dirty.store(true, Ordering::Release);
        }
    }

    /// A write of `id`'s totals failed: write them again next time.
    pub fn retry(&self, id: &str) {
        if let Some(c) = self.clients.get(id) {
            c.dirty.store(true, Ordering::Release);
        }
    }

    /// What a sync read: the other instances' totals for `id` in window `n`.
    pub fn set_others(&self, id: &str, n: u64, others: Usage) {
        if let Some(c) = self.clients.get(id) {
            c.others[(n % 2) as usize].set(n, others);
            c.viewed_at
                .store(self.clock.now_ms().max(1), Ordering::Release);
        }
    }

    /// The store is (un)reachable.
    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Release);
    }

    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// The instances alive at the last heartbeat (this one included).
    pub fn set_live(&self, n: u64) {
        self.live.store(n.max(1), Ordering::Release);
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire)
    }

    /// The window of the clock's now.
    pub fn window_now(&self) -> u64 {
        self.clock.now_ms() / self.window_ms
    }

    /// Clients followed.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::clock::ManualClock;

    fn q(rpm: u64) -> Quota {
        Quota {
            rpm: Some(rpm),
            tpm: None,
        }
    }

    #[test]
    fn others_slide_and_own_totals_are_absolute() {
        let clock = ManualClock::new(60_000);
        let f = FleetQuotas::new(60_000, clock.clone(), OnDown::Local, 100);
        // Window 1 (the cell of window 0's parity was never used).
        f.record("a", 1, 3, 30);
        f.record("a", 1, -1, -10);
        let s = f.to_sync(8);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].1,
            vec![(
                1,
                Usage {
                    requests: 2,
                    tokens: 20
                }
            )]
        );
        // Nothing used since: nothing to write, the others' to read.
        assert_eq!(f.to_sync(8), vec![(Arc::from("a"), vec![])]);
        assert!(f.to_sync(0).is_empty());
        f.set_others(
            "a",
            1,
            Usage {
                requests: 10,
                tokens: 0,
            },
        );
        assert_eq!(
            f.verdict("a", q(100)),
            Verdict::Shared(Usage {
                requests: 10,
                tokens: 0
            })
        );
        // Half-way into the next window, the previous one weighs half.
        clock.set(120_000 + 30_000);
        assert_eq!(f.others("a").requests, 5);
    }

    /// A client not used here since the last sync still has its view of
    /// the others read, oldest view first, within the budget: a refund or
    /// a burst at another instance reaches this one's next decision.
    #[test]
    fn views_of_idle_clients_are_refreshed_oldest_first() {
        let clock = ManualClock::new(60_000);
        let f = FleetQuotas::new(60_000, clock.clone(), OnDown::Local, 100);
        for id in ["a", "b", "c"] {
            f.record(id, 1, 1, 0);
        }
        assert_eq!(
            f.to_sync(0).len(),
            3,
            "used since the last sync: all written"
        );
        clock.set(61_000);
        f.set_others("b", 1, Usage::default());
        clock.set(62_000);
        f.set_others("a", 1, Usage::default());
        // "c" was never read, then "b" is the oldest.
        let ids = |v: Vec<(Arc<str>, OwnTotals)>| {
            let mut ids: Vec<String> = v
                .into_iter()
                .map(|(id, own)| {
                    assert!(own.is_empty(), "nothing to write");
                    id.to_string()
                })
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(f.to_sync(1)), ["c"]);
        assert_eq!(ids(f.to_sync(2)), ["b", "c"]);
        assert_eq!(ids(f.to_sync(10)), ["a", "b", "c"]);
        // Another instance refunded: the next read shows it.
        f.set_others(
            "a",
            1,
            Usage {
                requests: 4,
                tokens: 0,
            },
        );
        f.set_others("a", 1, Usage::default());
        assert_eq!(f.others("a"), Usage::default());
    }

    #[test]
    fn degraded_applies_the_fallback() {
        let clock = ManualClock::new(0);
        let f = FleetQuotas::new(60_000, clock, OnDown::Local, 100);
        f.set_live(3);
        f.set_degraded(true);
        assert_eq!(f.verdict("a", q(100)), Verdict::Alone(q(34)));
        let deny = FleetQuotas::new(60_000, ManualClock::new(0), OnDown::Deny, 100);
        deny.set_degraded(true);
        assert_eq!(deny.verdict("a", q(100)), Verdict::Deny);
    }
}
