//! Connection caps across the fleet: a host's slots are leases in Redis
//! (a sorted set scored by expiry, taken by a Lua script that never adds
//! one past the cap). Each instance holds a small credit of leases beyond
//! what it uses, refilled here in the background; its host counter admits
//! a connection only under the leases it holds, so the request path never
//! waits on Redis and the cap holds for the whole fleet.
//!
//! Leases are renewed every `lease_ttl / 3`; a crashed instance's expire
//! after `lease_ttl`. A lease in use (a long tunnel, a stream) is renewed
//! as long as its instance lives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{lease_key, Store, ACQUIRE, RENEW};
use crate::limits::connections::{HostCounter, Proxy};
use crate::limits::fleet::OnDown;
use crate::runtime::Runtime;

/// The leases this instance holds on one host.
#[derive(Debug, Default)]
struct Held {
    members: Vec<String>,
    renewed: Option<Instant>,
    /// Until when the host counts as in use here (its leases are kept).
    busy_until: Option<Instant>,
}

/// How long leases are kept after a host was last in use here (so that a
/// burst a moment later finds them).
const KEEP: Duration = Duration::from_secs(2);

/// Every host's leases, kept by the fleet task (one task: no lock).
#[derive(Debug)]
pub struct Leases {
    instance: String,
    ttl: Duration,
    next: u64,
    held: HashMap<(Proxy, String), Held>,
    acquire: redis::Script,
    renew: redis::Script,
}

impl Leases {
    pub fn new(instance: &str, ttl: Duration) -> Self {
        Leases {
            instance: instance.to_string(),
            ttl,
            next: 0,
            held: HashMap::new(),
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
        }
    }

    /// The capped hosts of `rt`, with their counters and caps.
    fn capped(rt: &Runtime) -> Vec<(Proxy, String, u64, Arc<HostCounter>)> {
        rt.host_infos()
            .into_iter()
            .filter(|h| h.max_connections > 0)
            .map(|h| {
                let c = rt.hosts.registry(h.proxy).counter(&h.host);
                (h.proxy, h.host, h.max_connections, c)
            })
            .collect()
    }

    /// Brings every capped host's leases to what it uses plus a small
    /// credit, renews them, and gives back what is not needed.
    pub async fn sync(&mut self, store: &Store, rt: &Runtime, live: u64) -> redis::RedisResult<()> {
        let hosts = Self::capped(rt);
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut first_error = None;
        for (proxy, host, cap, counter) in &hosts {
            if let Err(e) = self
                .host(store, *proxy, host, *cap, counter, live, ttl_ms)
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        // Hosts no longer capped (a reload): their leases go back.
        let gone: Vec<_> = self
            .held
            .keys()
            .filter(|k| !hosts.iter().any(|(p, h, ..)| *p == k.0 && *h == k.1))
            .cloned()
            .collect();
        for k in gone {
            if let Some(h) = self.held.remove(&k) {
                let _ = release(store, k.0, &k.1, &h.members).await;
            }
            rt.hosts.registry(k.0).counter(&k.1).unmanage();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn host(
        &mut self,
        store: &Store,
        proxy: Proxy,
        host: &str,
        cap: u64,
        counter: &Arc<HostCounter>,
        live: u64,
        ttl_ms: u64,
    ) -> redis::RedisResult<()> {
        let key = lease_key(proxy.as_str(), host);
        let mut conn = store.clone();
        let renew_every = self.ttl / 3;
        let held = self.held.entry((proxy, host.to_string())).or_default();
        // Renew (and learn which leases expired while Redis was away).
        if held.renewed.is_none_or(|t| t.elapsed() >= renew_every) && !held.members.is_empty() {
            let mut inv = self.renew.key(&key);
            inv.arg(ttl_ms);
            for m in &held.members {
                inv.arg(m);
            }
            let lost: Vec<String> = inv.invoke_async(&mut conn).await?;
            held.members.retain(|m| !lost.contains(m));
            held.renewed = Some(Instant::now());
        }
        // What it uses, what was refused for want of a lease since the
        // last round, and a credit: a share of the cap no other instance
        // can be short of (`cap / 2·live`, at most 16), at least one while
        // the host is in use here.
        let active = counter.active();
        let wanting = counter.take_wanting();
        if active > 0 || wanting > 0 {
            held.busy_until = Some(Instant::now() + KEEP);
        }
        let busy = held.busy_until.is_some_and(|t| Instant::now() < t);
        let spare = (cap / (2 * live.max(1))).min(16).max(u64::from(busy));
        let want = (active + wanting + spare).min(cap);
        let have = held.members.len() as u64;
        if have < want {
            let new: Vec<String> = (0..want - have)
                .map(|_| {
                    self.next += 1;
                    format!("{}:{}", self.instance, self.next)
                })
                .collect();
            let mut inv = self.acquire.key(&key);
            inv.arg(cap).arg(ttl_ms);
            for m in &new {
                inv.arg(m);
            }
            let added: u64 = inv.invoke_async(&mut conn).await?;
            held.members.extend(new.into_iter().take(added as usize));
            if held.renewed.is_none() {
                held.renewed = Some(Instant::now());
            }
        } else if !busy && have > want + spare {
            // Give back the surplus, never below what is in use: lower the
            // local limit first, then release what is still unused.
            let keep = want.max(counter.active());
            counter.set_leases(keep);
            let keep = keep.max(counter.active()) as usize;
            let surplus: Vec<String> = held.members.drain(keep.min(held.members.len())..).collect();
            release(store, proxy, host, &surplus).await?;
        }
        counter.set_leases(held.members.len() as u64);
        crate::metrics::metrics()
            .fleet_lease_credit
            .with_label_values(&[host])
            .set(held.members.len() as i64 - counter.active() as i64);
        Ok(())
    }

    /// The store is unreachable: each capped host falls back to what
    /// `on_redis_down` says (its share of the cap, the whole cap, or none).
    pub fn fall_back(&self, rt: &Runtime, on_down: OnDown, live: u64) {
        for (_, _, cap, counter) in Self::capped(rt) {
            match on_down {
                OnDown::Local => counter.set_leases(cap / live.max(1)),
                OnDown::Allow => counter.unmanage(),
                OnDown::Deny => counter.set_leases(0),
            }
        }
    }

    /// Gives every lease back (shutdown).
    pub async fn release_all(&mut self, store: &Store) {
        for ((proxy, host), h) in self.held.drain() {
            let _ = release(store, proxy, &host, &h.members).await;
        }
    }
}

async fn release(
    store: &Store,
    proxy: Proxy,
    host: &str,
    members: &[String],
) -> redis::RedisResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    let mut conn = store.clone();
    redis::cmd("ZREM")
        .arg(lease_key(proxy.as_str(), host))
        .arg(members)
        .query_async::<()>(&mut conn)
        .await
}
