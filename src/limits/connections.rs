//! Connection caps per host: an atomic in-flight counter per host, and a
//! slot guard that gives its place back on drop — so a client that hangs
//! up, an upstream that fails or a timeout can never leak a slot.
//!
//! A [`HostRegistry`] is one namespace of counters; the gateway keeps two,
//! so that the reverse proxy's backends and the forward proxy's
//! destinations never share a count even when they are the same
//! `host:port`. Registries outlive reloads: a reload changes caps, never
//! active counts. A counter holds only what the admin API set (an
//! override); the cap a config sets is passed in by whoever holds the
//! config, so building a new config never touches a live counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The largest cap the admin API accepts (and so the largest a counter
/// holds); beyond it a cap means nothing a host could reach.
pub const MAX_CAP: u64 = u32::MAX as u64;

/// Marks "no override" in [`HostCounter::overridden`]; never a cap.
const NO_OVERRIDE: u64 = u64::MAX;

/// Marks a counter the fleet does not manage (see [`HostCounter::leases`]).
const UNMANAGED: u64 = u64::MAX;

/// One host's counter, and the cap the admin API set for it if any.
#[derive(Debug)]
pub struct HostCounter {
    pub host: String,
    active: AtomicU64,
    overridden: AtomicU64,
    /// Fleet mode: the leases this instance holds on the host (its share
    /// of the fleet's cap); connections never exceed them.
    leases: AtomicU64,
    /// Fleet mode: connections refused for want of a lease (not of the
    /// cap) since the fleet task last looked: demand it leases for.
    wanting: AtomicU64,
}

/// Where a host's cap comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CapSource {
    File,
    Api,
}

impl HostCounter {
    fn new(host: &str) -> Self {
        HostCounter {
            host: host.to_string(),
            active: AtomicU64::new(0),
            overridden: AtomicU64::new(NO_OVERRIDE),
            leases: AtomicU64::new(UNMANAGED),
            wanting: AtomicU64::new(0),
        }
    }

    /// Fleet mode: connections refused for want of a lease since the last
    /// call.
    pub fn take_wanting(&self) -> u64 {
        self.wanting.swap(0, Ordering::AcqRel)
    }

    /// Fleet mode: the leases held on this host (`None`: not managed).
    pub fn leases(&self) -> Option<u64> {
        match self.leases.load(Ordering::Acquire) {
            UNMANAGED => None,
            n => Some(n),
        }
    }

    /// Fleet mode: connections may use this many leases.
    pub fn set_leases(&self, n: u64) {
        self.leases.store(n.min(UNMANAGED - 1), Ordering::Release);
    }

    /// Back to the local cap alone.
    pub fn unmanage(&self) {
        self.leases.store(UNMANAGED, Ordering::Release);
    }

    /// Requests or tunnels in flight to this host.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// The cap set through the admin API, if any.
    pub fn overridden(&self) -> Option<u64> {
        match self.overridden.load(Ordering::Acquire) {
            NO_OVERRIDE => None,
            o => Some(o),
        }
    }

    /// The cap in force (0 = none) given the config's, and its source.
    pub fn cap(&self, configured: u64) -> (u64, CapSource) {
        match self.overridden() {
            Some(o) => (o, CapSource::Api),
            None => (configured, CapSource::File),
        }
    }

    /// Takes a slot unless the host is at its cap (the override, else
    /// `configured`; 0 = none). Check and increment are one atomic step:
    /// the cap is never exceeded, however many requests race for the last
    /// slot.
    pub fn try_acquire(self: &Arc<Self>, configured: u64) -> Option<HostSlot> {
        let (cap, _) = self.cap(configured);
        // In fleet mode the leases held bound a capped host too.
        let leases = self.leases.load(Ordering::Acquire);
        let limit = match (cap, leases) {
            (0, _) => None,
            (c, UNMANAGED) => Some(c),
            (c, l) => Some(c.min(l)),
        };
        let taken =
            self.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| match limit {
                    None => Some(a + 1),
                    Some(l) => (a < l).then_some(a + 1),
                });
        match taken {
            Ok(before) => {
                tracing::debug!(target: "connections", host = %self.host, active = before + 1, "open");
                Some(HostSlot(self.clone()))
            }
            Err(_) => {
                if leases != UNMANAGED && leases < cap {
                    self.wanting.fetch_add(1, Ordering::AcqRel);
                }
                None
            }
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

/// One namespace of host counters.
#[derive(Debug, Default)]
pub struct HostRegistry {
    hosts: RwLock<HashMap<String, Arc<HostCounter>>>,
}

// The map's lock is taken when a counter is looked up by name: by the
// forward proxy once per destination connection (after its policy passed),
// and off the request path (runtime builds, the admin API, scrapes). The
// reverse proxy holds its backends' counters directly and never takes it.
#[allow(clippy::disallowed_methods)]
impl HostRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `host`, created if new.
    pub fn counter(&self, host: &str) -> Arc<HostCounter> {
        if let Some(c) = self.get(host) {
            return c;
        }
        let Ok(mut m) = self.hosts.write() else {
            // A poisoned lock (a panic elsewhere): count without sharing.
            return Arc::new(HostCounter::new(host));
        };
        m.entry(host.to_string())
            .or_insert_with(|| Arc::new(HostCounter::new(host)))
            .clone()
    }

    pub fn get(&self, host: &str) -> Option<Arc<HostCounter>> {
        self.hosts.read().ok()?.get(host).cloned()
    }

    /// Sets (`Some`, at most [`MAX_CAP`]) or clears (`None`) the admin
    /// override of `host`'s cap.
    pub fn set_override(&self, host: &str, cap: Option<u64>) {
        let c = match cap {
            Some(_) => self.counter(host),
            None => match self.get(host) {
                Some(c) => c,
                None => return,
            },
        };
        let v = cap.map_or(NO_OVERRIDE, |c| c.min(MAX_CAP));
        c.overridden.store(v, Ordering::Release);
    }

    /// Every counter, sorted by host.
    pub fn counters(&self) -> Vec<Arc<HostCounter>> {
        let Ok(m) = self.hosts.read() else {
            return Vec::new();
        };
        let mut v: Vec<_> = m.values().cloned().collect();
        v.sort_by(|a, b| a.host.cmp(&b.host));
        v
    }

    /// Drops counters nobody holds, uses or overrides (forward-proxy
    /// destinations come and go); `keep` names hosts the config lists.
    pub fn sweep(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(mut m) = self.hosts.write() {
            m.retain(|host, c| {
                keep(host) || Arc::strong_count(c) > 1 || c.active() > 0 || c.overridden().is_some()
            });
        }
    }

    /// Counters held, for a bound on what client traffic can make it keep.
    pub fn len(&self) -> usize {
        self.hosts.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The two namespaces: the reverse proxy's backends and the forward
/// proxy's destinations.
#[derive(Debug, Default)]
pub struct Hosts {
    pub upstream: HostRegistry,
    pub forward: HostRegistry,
}

impl Hosts {
    pub fn registry(&self, proxy: Proxy) -> &HostRegistry {
        match proxy {
            Proxy::Reverse => &self.upstream,
            Proxy::Forward => &self.forward,
        }
    }
}

/// Which proxy a host's counter belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    /// An upstream's backend.
    Reverse,
    /// A forward-proxy destination.
    Forward,
}

impl Proxy {
    pub fn as_str(self) -> &'static str {
        match self {
            Proxy::Reverse => "reverse",
            Proxy::Forward => "forward",
        }
    }
}

/// A snapshot of one host, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct HostInfo {
    pub host: String,
    /// An upstream's backend, or a forward-proxy destination.
    pub proxy: Proxy,
    pub active: u64,
    pub max_connections: u64,
    pub source: CapSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_exact_and_slots_come_back() {
        let r = HostRegistry::new();
        let c = r.counter("a:80");
        let s1 = c.try_acquire(2).unwrap();
        let s2 = c.try_acquire(2).unwrap();
        assert!(c.try_acquire(2).is_none());
        drop(s1);
        let s3 = c.try_acquire(2).unwrap();
        assert_eq!(c.active(), 2);
        drop((s2, s3));
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn zero_is_unlimited_and_overrides_win() {
        let r = HostRegistry::new();
        let c = r.counter("a");
        let slots: Vec<_> = (0..100).map(|_| c.try_acquire(0).unwrap()).collect();
        assert_eq!(c.active(), 100);
        drop(slots);
        r.set_override("a", Some(1));
        assert_eq!(c.cap(0), (1, CapSource::Api));
        let _s = c.try_acquire(0).unwrap();
        assert!(c.try_acquire(0).is_none());
        r.set_override("a", None);
        assert_eq!(c.cap(5), (5, CapSource::File));
        // The "no override" marker can never be set as a cap.
        r.set_override("a", Some(u64::MAX));
        assert_eq!(c.cap(0), (MAX_CAP, CapSource::Api));
        r.set_override("nobody", None);
        assert!(r.get("nobody").is_none());
    }

    #[test]
    fn racing_threads_never_exceed_the_cap() {
        let r = HostRegistry::new();
        let c = r.counter("h");
        let peak = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(slot) = c.try_acquire(3) {
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
        let a = r.counter("a");
        let slot = a.try_acquire(1).unwrap();
        drop(a);
        r.counter("b");
        r.sweep(&|_| false);
        assert!(r.get("a").is_some(), "held slot");
        assert!(r.get("b").is_none());
        drop(slot);
        r.sweep(&|h| h == "a");
        assert!(r.get("a").is_some(), "configured");
    }
}
