//! Connection caps per host: an atomic in-flight counter per host, and a
//! slot guard that gives its place back on drop — so a client that hangs
//! up, an upstream that fails or a timeout can never leak a slot.
//!
//! One [`HostRegistry`] serves the reverse proxy (backend `host:port`) and
//! the forward proxy (destination host). It outlives config reloads: a
//! reload changes caps, never active counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One host's counter and cap.
#[derive(Debug)]
pub struct HostCounter {
    pub host: String,
    active: AtomicU64,
    /// The cap from the config; 0 = none.
    configured: AtomicU64,
    /// A cap set through the admin API; `u64::MAX` = none set.
    overridden: AtomicU64,
}

const NO_OVERRIDE: u64 = u64::MAX;

/// Where a host's cap comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapSource {
    File,
    Api,
}

impl HostCounter {
    fn new(host: &str, cap: u64) -> Self {
        HostCounter {
            host: host.to_string(),
            active: AtomicU64::new(0),
            configured: AtomicU64::new(cap),
            overridden: AtomicU64::new(NO_OVERRIDE),
        }
    }

    /// Requests or tunnels in flight to this host.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// The cap in force (0 = none) and where it comes from.
    pub fn limit(&self) -> (u64, CapSource) {
        match self.overridden.load(Ordering::Acquire) {
            NO_OVERRIDE => (self.configured.load(Ordering::Acquire), CapSource::File),
            o => (o, CapSource::Api),
        }
    }

    /// Takes a slot unless the host is at its cap. Check and increment are
    /// one atomic step: the cap is never exceeded, however many requests
    /// race for the last slot.
    pub fn try_acquire(self: &Arc<Self>) -> Option<HostSlot> {
        let (limit, _) = self.limit();
        let taken = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (limit == 0 || a < limit).then_some(a + 1)
            });
        match taken {
            Ok(before) => {
                tracing::debug!(target: "connections", host = %self.host, active = before + 1, "open");
                Some(HostSlot(self.clone()))
            }
            Err(_) => None,
        }
    }
}

/// A held place under a host's cap; released on drop.
#[derive(Debug)]
pub struct HostSlot(Arc<HostCounter>);

impl HostSlot {
    pub fn host(&self) -> &str {
        &self.0.host
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let after = self.0.active.fetch_sub(1, Ordering::AcqRel) - 1;
        tracing::debug!(target: "connections", host = %self.0.host, active = after, "close");
    }
}

/// Every host with a counter.
#[derive(Debug, Default)]
pub struct HostRegistry {
    hosts: RwLock<HashMap<String, Arc<HostCounter>>>,
}

/// A snapshot of one host, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostInfo {
    pub host: String,
    pub active: u64,
    pub max_connections: u64,
    pub source: CapSource,
}

// The map's lock is taken when a host's counter is looked up by name: by the
// forward proxy once per destination connection, and off the request path
// (reloads, the admin API, scrapes). The reverse proxy holds its backends'
// counters directly and never takes it.
#[allow(clippy::disallowed_methods)]
impl HostRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `host`, created with `default_cap` if new.
    pub fn counter(&self, host: &str, default_cap: u64) -> Arc<HostCounter> {
        if let Some(c) = self.hosts.read().ok().and_then(|m| m.get(host).cloned()) {
            return c;
        }
        let Ok(mut m) = self.hosts.write() else {
            // A poisoned lock (a panic elsewhere): count without sharing.
            return Arc::new(HostCounter::new(host, default_cap));
        };
        m.entry(host.to_string())
            .or_insert_with(|| Arc::new(HostCounter::new(host, default_cap)))
            .clone()
    }

    /// Sets the configured cap of `host` (at start and on reload).
    pub fn configure(&self, host: &str, cap: u64) -> Arc<HostCounter> {
        let c = self.counter(host, cap);
        c.configured.store(cap, Ordering::Release);
        c
    }

    /// Sets (`Some`) or clears (`None`) the admin override of `host`'s cap.
    /// Returns false for a host nobody configured or connected to.
    pub fn set_override(&self, host: &str, cap: Option<u64>) -> bool {
        let c = match (cap, self.get(host)) {
            (_, Some(c)) => c,
            (Some(_), None) => self.counter(host, 0),
            (None, None) => return false,
        };
        c.overridden
            .store(cap.unwrap_or(NO_OVERRIDE), Ordering::Release);
        true
    }

    pub fn get(&self, host: &str) -> Option<Arc<HostCounter>> {
        self.hosts.read().ok()?.get(host).cloned()
    }

    /// Every host, sorted by name.
    pub fn list(&self) -> Vec<HostInfo> {
        let Ok(m) = self.hosts.read() else {
            return Vec::new();
        };
        let mut v: Vec<HostInfo> = m
            .values()
            .map(|c| {
                let (max_connections, source) = c.limit();
                HostInfo {
                    host: c.host.clone(),
                    active: c.active(),
                    max_connections,
                    source,
                }
            })
            .collect();
        v.sort_by(|a, b| a.host.cmp(&b.host));
        v
    }

    /// Drops counters nobody holds, uses or overrides (forward-proxy
    /// destinations come and go); `keep` names hosts the config lists.
    pub fn sweep(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(mut m) = self.hosts.write() {
            m.retain(|host, c| {
                keep(host)
                    || Arc::strong_count(c) > 1
                    || c.active() > 0
                    || c.overridden.load(Ordering::Acquire) != NO_OVERRIDE
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_exact_and_slots_come_back() {
        let r = HostRegistry::new();
        let c = r.configure("a:80", 2);
        let s1 = c.try_acquire().unwrap();
        let s2 = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        drop(s1);
        let s3 = c.try_acquire().unwrap();
        assert_eq!(c.active(), 2);
        drop((s2, s3));
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn zero_is_unlimited_and_overrides_win() {
        let r = HostRegistry::new();
        let c = r.configure("a", 0);
        let slots: Vec<_> = (0..100).map(|_| c.try_acquire().unwrap()).collect();
        assert_eq!(c.active(), 100);
        drop(slots);
        assert!(r.set_override("a", Some(1)));
        assert_eq!(c.limit(), (1, CapSource::Api));
        let _s = c.try_acquire().unwrap();
        assert!(c.try_acquire().is_none());
        assert!(r.set_override("a", None));
        assert_eq!(c.limit(), (0, CapSource::File));
        assert!(!r.set_override("nobody", None));
    }

    #[test]
    fn racing_threads_never_exceed_the_cap() {
        let r = HostRegistry::new();
        let c = r.configure("h", 3);
        let peak = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(slot) = c.try_acquire() {
                            peak.fetch_max(c.active(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn sweep_keeps_what_is_in_use() {
        let r = HostRegistry::new();
        let a = r.counter("a", 1);
        let slot = a.try_acquire().unwrap();
        drop(a);
        r.counter("b", 1);
        r.sweep(&|_| false);
        assert!(r.get("a").is_some(), "held slot");
        assert!(r.get("b").is_none());
        drop(slot);
        r.sweep(&|h| h == "a");
        assert!(r.get("a").is_some(), "configured");
    }
}
