//! Client quotas: who a client is under the config, and whether its next
//! request fits its requests-per-window and tokens-per-window.
//!
//! A configured client (`[clients.limits.<id>]`) has its own exact counter:
//! no other client's traffic can move it. Every other client is counted on
//! its own in one shared table sized by `max_tracked_clients` (exact up to
//! that many clients a window, estimated by a count-min sketch beyond), so
//! memory stays bounded however many distinct ids arrive.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::clock::Clock;
use super::fleet::{FleetQuotas, OnDown};
use super::rate::{OverQuota, OverflowKind, Quota, QuotaState, RateLimiter, TableKind};
use super::RejectReason;

mod charge;
mod concurrency;
mod decide;
mod stats;
pub use charge::{Charge, Settled};
pub use concurrency::InFlight;
pub use decide::TooMany;
pub use stats::{ClientCounters, ClientStats, Refusals};

/// How a refusal is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    /// Refusals are answered.
    Enforce,
    /// Refusals are computed, logged and counted, but the request passes.
    Shadow,
}

/// One configured client, its missing fields filled from the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientLimit {
    pub quota: Quota,
    pub enabled: bool,
    pub mode: Mode,
    /// SHA-256 digests of the client's API keys.
    pub api_keys: Vec<[u8; 32]>,
    /// What the client may ask of the adaptive windows.
    pub privileges: Privileges,
    /// Its requests in flight at once (`None`: no cap).
    pub max_concurrent: Option<u64>,
    /// Its limits per model, on top of its own.
    pub models: BTreeMap<String, Quota>,
}

/// What a client may ask of the adaptive windows with its own headers
/// (`X-Request-Criticality: critical`, `X-Can-Wait`). Nobody may unless
/// the config says so, or the request comes through a trusted proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// May use the critical reserve and skip jitter.
    pub critical: bool,
    /// May wait this long in a queue (beyond `queue_timeout`) when asking.
    pub max_wait: Option<std::time::Duration>,
}

/// The quota policy of every client: what `[clients]` says about limits
/// (identity and headers are the proxy's business).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientsPolicy {
    /// The "minute" of RPM and TPM.
    pub window: Duration,
    pub mode: Mode,
    /// Unlisted clients a window counts exactly from the start; the table
    /// grows with demand from there.
    pub max_tracked_clients: usize,
    /// Bytes the unlisted clients' three window tables may reserve.
    pub max_client_table_memory: usize,
    /// Which sketch counts unlisted clients past the table.
    pub overflow: OverflowKind,
    /// The policy of unlisted clients; `None`: not limited.
    pub default: Option<Quota>,
    /// Configured clients by id.
    pub limits: BTreeMap<String, ClientLimit>,
    /// Every client's limits per model (each client counted on its own).
    pub models: BTreeMap<String, Quota>,
    /// Requests in flight at once of each unlisted client.
    pub default_max_concurrent: Option<u64>,
    /// Fleet mode: the quotas are the fleet's, and what applies while its
    /// store is unreachable.
    pub fleet: Option<OnDown>,
}

impl Default for ClientsPolicy {
    fn default() -> Self {
        ClientsPolicy {
            window: Duration::from_secs(60),
            mode: Mode::Enforce,
            max_tracked_clients: 100_000,
            max_client_table_memory: 256 << 20,
            overflow: OverflowKind::Packed,
            default: None,
            limits: BTreeMap::new(),
            models: BTreeMap::new(),
            default_max_concurrent: None,
            fleet: None,
        }
    }
}

/// Longest client id accepted, in characters.
pub const MAX_CLIENT_ID: usize = 256;

/// Checks a client id: 1-256 characters of UTF-8, no control characters,
/// no leading or trailing white space.
pub fn check_client_id(id: &[u8]) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    // The usual id, printable ASCII without spaces, passes every rule
    // below: one look at each byte (the rules cost ~150 instructions a
    // request under callgrind, for an id sent with every request).
    if id.len() <= MAX_CLIENT_ID && id.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Ok(());
    }
    let s = std::str::from_utf8(id).map_err(|_| "is not UTF-8".to_string())?;
    let mut n = 0;
    for c in s.chars() {
        if c.is_control() {
            return Err("contains control characters".into());
        }
        n += 1;
    }
    if n > MAX_CLIENT_ID {
        return Err(format!("is longer than {MAX_CLIENT_ID} characters"));
    }
    if s.trim() != s {
        return Err("has leading or trailing spaces".into());
    }
    Ok(())
}

/// The prefix of ids derived from a client's address (`ip:10.0.0.1`): a
/// namespace of its own, which an id header may not claim.
pub const IP_PREFIX: &str = "ip:";

/// Checks an id a request claims in a header: a valid id, and not one of
/// the `ip:` namespace.
pub fn check_claimed_id(id: &[u8]) -> Result<(), String> {
    check_client_id(id)?;
    if id.starts_with(IP_PREFIX.as_bytes()) {
        return Err(format!(
            "may not start with {IP_PREFIX:?} (ids of client addresses)"
        ));
    }
    Ok(())
}

/// A configured client and its exact counter.
pub struct ConfiguredClient {
    pub id: String,
    pub quota: Quota,
    pub enabled: bool,
    pub mode: Mode,
    /// Whether the client must present one of its API keys (so nobody can
    /// spend its quota by sending its id).
    pub requires_key: bool,
    pub privileges: Privileges,
    pub stats: Arc<ClientStats>,
    limiter: Arc<RateLimiter>,
    /// Its requests in flight, and their cap.
    inflight: Arc<AtomicU64>,
    max_concurrent: Option<u64>,
    /// Its limits per model (its own, and `[clients.models]`), each with an
    /// exact counter.
    models: HashMap<String, (Quota, Arc<RateLimiter>)>,
}

/// Every client policy and the limiter state behind them.
pub struct ClientPolicies {
    pub policy: ClientsPolicy,
    clients: HashMap<String, Arc<ConfiguredClient>, ahash::RandomState>,
    api_keys: HashMap<[u8; 32], String>,
    /// The counters of every unlisted client, under the default quota.
    unlisted: Option<Arc<RateLimiter>>,
    hasher: ahash::RandomState,
    /// Fleet mode: the other instances' usage, and what this one counted.
    fleet: Option<Arc<FleetQuotas>>,
    /// Unlisted clients' requests in flight.
    unlisted_inflight: Arc<concurrency::Unlisted>,
    /// Whether any client is limited at all (worked out once: a request
    /// asks, and the configured clients may be many).
    any_limits: bool,
}

impl std::fmt::Debug for ClientPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPolicies")
            .field("clients", &self.clients.len())
            .field("default", &self.policy.default)
            .finish()
    }
}

/// The outcome of a quota decision.
pub enum Decision {
    /// The client is not limited (no policy, or `enabled = false`).
    Unlimited,
    /// Admitted and charged; the charge settles or refunds itself.
    Admitted { charge: Charge, state: QuotaState },
    /// Refused (or, in shadow mode, would have been); `model`: by the
    /// limits of that model.
    Refused {
        reason: RejectReason,
        refusal: OverQuota,
        mode: Mode,
        model: Option<String>,
    },
}

impl ClientPolicies {
    /// Builds the policies, keeping the counters of `previous` for clients
    /// whose limiter is unchanged (same window), so a rebuild never hands a
    /// client a fresh quota. Fails only when the unlisted clients' tables
    /// cannot be reserved.
    pub fn build(
        config: &ClientsPolicy,
        clock: Arc<dyn Clock>,
        previous: Option<&ClientPolicies>,
    ) -> Result<Self, String> {
        let window_ms = config.window.as_millis() as u64;
        let same_window = previous.is_some_and(|p| p.policy.window == config.window);
        let mut clients = HashMap::with_hasher(ahash::RandomState::new());
        let mut api_keys = HashMap::new();
        for (id, l) in &config.limits {
            let prev = previous.and_then(|p| p.clients.get(id));
            let limiter = prev
                .filter(|_| same_window)
                .map(|c| c.limiter.clone())
                .unwrap_or_else(|| Arc::new(RateLimiter::exact(window_ms, clock.clone())));
            let stats = prev.map(|c| c.stats.clone()).unwrap_or_default();
            let inflight = prev.map(|c| c.inflight.clone()).unwrap_or_default();
            // Its model limits: its own, then every client's; a counter
            // kept across rebuilds while the window is the same.
            let mut models = HashMap::new();
            for (m, q) in config.models.iter().chain(l.models.iter()) {
                let kept = prev
                    .filter(|_| same_window)
                    .and_then(|c| c.models.get(m))
                    .map(|(_, lim)| lim.clone());
                let lim =
                    kept.unwrap_or_else(|| Arc::new(RateLimiter::exact(window_ms, clock.clone())));
                models.insert(m.clone(), (*q, lim));
            }
            for k in &l.api_keys {
                api_keys.insert(*k, id.clone());
            }
            clients.insert(
                id.clone(),
                Arc::new(ConfiguredClient {
                    id: id.clone(),
                    quota: l.quota,
                    enabled: l.enabled,
                    mode: l.mode,
                    requires_key: !l.api_keys.is_empty(),
                    privileges: l.privileges,
                    stats,
                    limiter,
                    inflight,
                    max_concurrent: l.max_concurrent,
                    models,
                }),
            );
        }
        let kind = TableKind::Clients {
            capacity: config.max_tracked_clients,
            memory: config.max_client_table_memory,
            overflow: config.overflow,
        };
        let kept = previous
            .filter(|p| {
                same_window
                    && p.policy.max_tracked_clients == config.max_tracked_clients
                    && p.policy.max_client_table_memory == config.max_client_table_memory
                    && p.policy.overflow == config.overflow
            })
            .and_then(|p| p.unlisted.clone());
        // Unlisted clients are counted when a default quota or a model
        // limit applies to them.
        let needed = config.default.is_some() || !config.models.is_empty();
        let unlisted = match (needed, kept) {
            (false, _) => None,
            (true, Some(kept)) => Some(kept),
            (true, None) => Some(Arc::new(RateLimiter::new(kind, window_ms, clock.clone())?)),
        };
        let fleet = config.fleet.map(|on_down| {
            previous
                .filter(|p| same_window && p.policy.fleet == Some(on_down))
                .and_then(|p| p.fleet.clone())
                .unwrap_or_else(|| {
                    FleetQuotas::new(
                        window_ms,
                        clock.clone(),
                        on_down,
                        config.max_tracked_clients + config.limits.len(),
                    )
                })
        });
        let any_limits = unlisted.is_some()
            || config.default_max_concurrent.is_some()
            || clients.values().any(|c| c.enabled);
        Ok(ClientPolicies {
            any_limits,
            policy: config.clone(),
            clients,
            api_keys,
            unlisted,
            hasher: previous.map_or_else(ahash::RandomState::new, |p| p.hasher.clone()),
            fleet,
            unlisted_inflight: previous
                .map(|p| p.unlisted_inflight.clone())
                .unwrap_or_default(),
        })
    }

    /// The fleet's view of the quotas (fleet mode).
    pub fn fleet(&self) -> Option<&Arc<FleetQuotas>> {
        self.fleet.as_ref()
    }

    /// Whether any client has API keys (then an unknown key is refused).
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// The client an API key (its SHA-256 digest) belongs to.
    pub fn client_of_key(&self, digest: &[u8; 32]) -> Option<&str> {
        self.api_keys.get(digest).map(String::as_str)
    }

    pub fn configured(&self, id: &str) -> Option<&Arc<ConfiguredClient>> {
        self.clients.get(id)
    }

    /// Every configured client.
    pub fn all_configured(&self) -> impl Iterator<Item = &Arc<ConfiguredClient>> {
        self.clients.values()
    }

    /// The metric label for `id`: the id of a configured client, else
    /// `other`, so label values stay bounded.
    pub fn label<'a>(&self, id: &'a str) -> &'a str {
        if self.clients.contains_key(id) {
            id
        } else {
            "other"
        }
    }

    /// Whether any client is limited at all (if not, the request path skips
    /// identification). Asked by every request: worked out when built, not
    /// by a look at every configured client each time.
    pub fn any_limits(&self) -> bool {
        self.any_limits
    }

    fn policy_of<'a>(
        &'a self,
        id: &str,
        configured: Option<&'a Arc<ConfiguredClient>>,
    ) -> Option<(Quota, &'a Arc<RateLimiter>, u64, Mode)> {
        match configured {
            Some(c) if !c.enabled => None,
            Some(c) => Some((c.quota, &c.limiter, 0, c.mode)),
            None => {
                let q = self.policy.default?;
                let unlisted = self.unlisted.as_ref()?;
                Some((q, unlisted, self.hasher.hash_one(id), self.policy.mode))
            }
        }
    }

    /// Prepares the next window of every limiter. Off the request path.
    pub fn rotate(&self) {
        if let Some(c) = &self.unlisted {
            c.rotate();
        }
        for c in self.clients.values() {
            c.limiter.rotate();
            for (_, l) in c.models.values() {
                l.rotate();
            }
        }
    }

    /// Bytes held by the counters.
    pub fn memory_bytes(&self) -> usize {
        self.unlisted.as_ref().map_or(0, |c| c.memory_bytes())
            + self
                .clients
                .values()
                .map(|c| c.limiter.memory_bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
