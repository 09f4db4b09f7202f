//! Connections a listener holds: a cap for the listener and one per client
//! address, each an atomic count with a guard that gives its place back on
//! drop — so that a flood of idle connections runs into a cap, not into the
//! process's file-descriptor limit (where every listener, the admin one
//! included, would stop accepting).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The caps of one listener; 0 = none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub per_listener: u64,
    pub per_ip: u64,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Listener,
    Address,
}

/// The open connections of one listener, in total and by client address.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    total: AtomicU64,
    by_ip: RwLock<HashMap<IpAddr, Arc<AtomicU64>>>,
}

/// A connection's place; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    ip: Option<(IpAddr, Arc<AtomicU64>)>,
}

/// Takes a place in `counter` unless it holds `cap` (0 = none) already.
fn take(counter: &AtomicU64, cap: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (cap == 0 || n < cap).then_some(n + 1)
        })
        .is_ok()
}

// The map's lock is taken once when a connection opens and once when it
// closes (off the request path: no request waits on it).
#[allow(clippy::disallowed_methods)]
impl ConnectionGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> u64 {
        self.by_ip
            .read()
            .ok()
            .and_then(|m| m.get(&ip).map(|c| c.load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    /// Admits a connection from `ip` (`exempt`: no per-address cap, for a
    /// trusted proxy that carries many clients).
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        caps: ConnectionCaps,
        exempt: bool,
    ) -> Result<ConnectionPermit, Full> {
        if !take(&self.total, caps.per_listener) {
            return Err(Full::Listener);
        }
        let mut permit = ConnectionPermit {
            gate: self.clone(),
            ip: None,
        };
        let Some(ip) = ip.filter(|_| caps.per_ip > 0 && !exempt) else {
            return Ok(permit);
        };
        // The place is taken under the map's lock (read), so that the last
        // connection of an address closing (which removes its entry under
        // the write lock) cannot orphan a counter this one is taking.
        let taken = {
            let map = self.by_ip.read().map_err(|_| Full::Address)?;
            map.get(&ip).map(|c| (take(c, caps.per_ip), c.clone()))
        };
        let counter = match taken {
            Some((true, c)) => c,
            Some((false, _)) => return Err(Full::Address),
            None => {
                let mut map = self.by_ip.write().map_err(|_| Full::Address)?;
                let c = map.entry(ip).or_default().clone();
                if !take(&c, caps.per_ip) {
                    return Err(Full::Address);
                }
                c
            }
        };
        permit.ip = Some((ip, counter));
        Ok(permit)
    }
}

#[allow(clippy::disallowed_methods)]
impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.total.fetch_sub(1, Ordering::AcqRel);
        if let Some((ip, counter)) = self.ip.take() {
            if counter.fetch_sub(1, Ordering::AcqRel) == 1 {
                // The last connection of this address: forget it, unless
                // another one arrived meanwhile.
                if let Ok(mut m) = self.gate.by_ip.write() {
                    if counter.load(Ordering::Acquire) == 0 {
                        m.remove(&ip);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests may block
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let g = ConnectionGate::new();
        let caps = ConnectionCaps {
            per_listener: 3,
            per_ip: 2,
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = g.admit(Some(a), caps, false).unwrap();
        let _p2 = g.admit(Some(a), caps, false).unwrap();
        assert_eq!(g.admit(Some(a), caps, false).unwrap_err(), Full::Address);
        // A trusted proxy is not capped per address.
        let _p3 = g.admit(Some(a), caps, true).unwrap();
        assert_eq!(g.admit(Some(b), caps, false).unwrap_err(), Full::Listener);
        drop(p1);
        let _p4 = g.admit(Some(b), caps, false).unwrap();
        assert_eq!(g.open(), 3);
        assert_eq!(g.open_from(a), 1);
        drop((_p2, _p3, _p4));
        assert_eq!(g.open(), 0);
        assert!(g.by_ip.read().unwrap().is_empty(), "addresses forgotten");
    }
}
