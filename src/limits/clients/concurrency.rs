//! Requests in flight per client (`max_concurrent`): a stream counts until
//! it ends. Exact for every client: a configured client has its own
//! counter; an unlisted one has an entry in a map only while it has
//! requests in flight (so the map holds the clients active now, never
//! every client seen).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// The unlisted clients' counters, by the hash of their id.
#[derive(Debug, Default)]
pub struct Unlisted {
    counters: DashMap<u64, Arc<AtomicU64>, ahash::RandomState>,
}

/// A request's place under its client's `max_concurrent`; given back on
/// drop.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicU64>,
    /// An unlisted client's entry, removed with its last request.
    entry: Option<(Arc<Unlisted>, u64)>,
}

/// Takes a place in `counter` unless it holds `cap` already.
fn take(counter: &AtomicU64, cap: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

/// A configured client's place; `None` when it holds `cap` already.
pub fn enter(counter: &Arc<AtomicU64>, cap: u64) -> Option<InFlight> {
    take(counter, cap).then(|| InFlight {
        counter: counter.clone(),
        entry: None,
    })
}

impl Unlisted {
    /// An unlisted client's place (`key`: its id's hash).
    pub fn enter(self: &Arc<Self>, key: u64, cap: u64) -> Option<InFlight> {
        // Taken under the entry's shard lock, so that a last request
        // leaving (which removes the entry under it) cannot orphan this
        // counter.
        let counter = self.counters.entry(key).or_default();
        if !take(&counter, cap) {
            return None;
        }
        let c = counter.clone();
        drop(counter);
        Some(InFlight {
            counter: c,
            entry: Some((self.clone(), key)),
        })
    }
}

impl InFlight {
    /// Requests in flight for the client now (this one included).
    pub fn count(&self) -> u64 {
        self.counter.load(Ordering::Acquire)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.counter.fetch_sub(1, Ordering::AcqRel) - 1;
        if let (0, Some((map, key))) = (left, &self.entry) {
            map.counters
                .remove_if(key, |_, c| c.load(Ordering::Acquire) == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_exact_and_come_back() {
        let u = Arc::new(Unlisted::default());
        let a = u.enter(1, 2).unwrap();
        let b = u.enter(1, 2).unwrap();
        assert!(u.enter(1, 2).is_none());
        let other = u.enter(2, 2).unwrap();
        drop(a);
        let c = u.enter(1, 2).unwrap();
        assert_eq!(c.count(), 2);
        drop((b, c, other));
        assert!(
            u.counters.is_empty(),
            "entries leave with their last request"
        );
        let counter = Arc::new(AtomicU64::new(0));
        let x = enter(&counter, 1).unwrap();
        assert!(enter(&counter, 1).is_none());
        drop(x);
        assert!(enter(&counter, 1).is_some());
    }
}
