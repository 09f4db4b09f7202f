//! Fleet mode: one set of limits across many gateways, shared through
//! Redis by this background task — never by the request path.
//!
//! Every `sync_interval`, in one round:
//!
//! ```text
//! heartbeat   this instance into the live set; the live count back
//! quotas      own totals per client and window out, the others' in
//! leases      each capped host: leases up to use + a small credit,
//!             renewed every lease_ttl / 3, the surplus given back
//! overrides   the admin API's changes: published when made here,
//!             applied when another instance made them
//! ```
//!
//! A round that fails (Redis down, or slower than `command_timeout` a
//! command) leaves the instance degraded: the request path applies
//! `on_redis_down`, nothing counted is dropped (own totals are written
//! again once Redis answers), and the next round tries again.

mod leases;
mod quotas;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use crate::config::FleetConfig;
use crate::runtime::control::ControlPlane;
use crate::runtime::SharedRuntime;
use leases::Leases;
use store::{Store, HEARTBEAT, INSTANCES, OVERRIDES, OVERRIDES_VERSION};

/// One instance of the fleet, as the last heartbeat saw it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub instance_id: String,
    /// Milliseconds since its last heartbeat (Redis' clock).
    pub last_seen_ms: u64,
    pub this_instance: bool,
}

/// What `GET /api/v1/fleet` shows and `/ready` looks at.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct FleetState {
    pub instance_id: String,
    /// Whether the last round reached Redis.
    pub up: bool,
    pub degraded: bool,
    /// Unix time (ms) of the last round that reached Redis.
    pub last_sync_unix_ms: Option<u64>,
    /// How long the last round took.
    pub last_sync_ms: f64,
    pub last_error: Option<String>,
    pub instances: Vec<Member>,
    /// Clients synced in the last round: those used here since the one
    /// before (written and read), and idle ones whose view was refreshed.
    pub clients_synced: usize,
    pub required: bool,
}

/// The fleet's status, shared with the admin API.
#[derive(Debug, Default)]
pub struct FleetStatus {
    state: ArcSwap<FleetState>,
    ready: AtomicBool,
}

impl FleetStatus {
    pub fn snapshot(&self) -> Arc<FleetState> {
        self.state.load_full()
    }

    /// Whether `/ready` may answer 200: always, unless `required` and the
    /// store is unreachable.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct FleetService {
    cfg: FleetConfig,
    runtime: SharedRuntime,
    control: Arc<ControlPlane>,
    status: Arc<FleetStatus>,
}

impl FleetService {
    pub fn new(
        cfg: FleetConfig,
        runtime: SharedRuntime,
        control: Arc<ControlPlane>,
        status: Arc<FleetStatus>,
    ) -> Self {
        status.ready.store(!cfg.required, Ordering::Release);
        status.state.store(Arc::new(FleetState {
            instance_id: cfg.instance_id.clone(),
            required: cfg.required,
            ..FleetState::default()
        }));
        FleetService {
            cfg,
            runtime,
            control,
            status,
        }
    }
}

/// What survives from one round to the next.
struct Round {
    store: Option<Store>,
    leases: Leases,
    heartbeat: redis::Script,
    /// The overrides version last seen in Redis, and the local one last
    /// published or applied.
    remote_version: Option<u64>,
    local_version: u64,
    first: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl FleetService {
    /// One round against Redis; `Err` leaves the instance degraded.
    async fn round(&self, r: &mut Round) -> Result<FleetState, String> {
        let cfg = &self.cfg;
        if r.store.is_none() {
            let s = tokio::time::timeout(cfg.command_timeout * 10, Store::connect(cfg))
                .await
                .map_err(|_| "connecting to Redis timed out".to_string())?
                .map_err(|e| format!("connecting to Redis: {e}"))?;
            r.store = Some(s);
        }
        let Some(store) = r.store.clone() else {
            return Err("no connection".into());
        };
        let rt = self.runtime.load_full();
        let ttl_ms = cfg.lease_ttl.as_millis() as u64;
        // Heartbeat: membership and Redis' clock.
        let mut conn = store.clone();
        let (members, now): (Vec<(String, u64)>, u64) = r
            .heartbeat
            .key(INSTANCES)
            .arg(&cfg.instance_id)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| format!("heartbeat: {e}"))?;
        let live = members.len().max(1) as u64;
        let quotas = match rt.clients.fleet() {
            Some(f) => {
                f.set_live(live);
                let q = quotas::sync(&store, f, &cfg.instance_id)
                    .await
                    .map_err(|e| format!("quotas: {e}"))?;
                f.set_degraded(false);
                q.synced
            }
            None => 0,
        };
        r.leases
            .sync(&store, &rt, live)
            .await
            .map_err(|e| format!("leases: {e}"))?;
        self.overrides(&store, r).await?;
        Ok(FleetState {
            instance_id: cfg.instance_id.clone(),
            up: true,
            degraded: false,
            last_sync_unix_ms: Some(unix_ms()),
            last_sync_ms: 0.0,
            last_error: None,
            instances: members
                .into_iter()
                .map(|(id, seen)| Member {
                    this_instance: id == cfg.instance_id,
                    instance_id: id,
                    last_seen_ms: now.saturating_sub(seen),
                })
                .collect(),
            clients_synced: quotas,
            required: cfg.required,
        })
    }

    /// The admin API's overrides, shared: Redis' copy applies at start and
    /// whenever another instance changed it; a change made here is
    /// published.
    async fn overrides(&self, store: &Store, r: &mut Round) -> Result<(), String> {
        let mut conn = store.clone();
        let remote: Option<u64> = redis::cmd("GET")
            .arg(OVERRIDES_VERSION)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("overrides: {e}"))?;
        let local = self.control.version();
        let changed_here = !r.first && local != r.local_version;
        if changed_here {
            let json =
                serde_json::to_string(&self.control.overrides()).map_err(|e| e.to_string())?;
            let (_, v): ((), u64) = redis::pipe()
                .set(OVERRIDES, json)
                .incr(OVERRIDES_VERSION, 1)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("publishing overrides: {e}"))?;
            r.remote_version = Some(v);
            r.local_version = local;
            return Ok(());
        }
        if remote.is_some() && remote != r.remote_version {
            let json: Option<String> = redis::cmd("GET")
                .arg(OVERRIDES)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("overrides: {e}"))?;
            if let Some(o) = json.and_then(|j| serde_json::from_str(&j).ok()) {
                let control = self.control.clone();
                let applied = tokio::task::spawn_blocking(move || control.replace_overrides(o))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Err(e) = applied {
                    tracing::warn!(target: "fleet", "the fleet's overrides do not apply here: {e}");
                }
            }
            r.remote_version = remote;
        }
        r.first = false;
        r.local_version = self.control.version();
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let m = crate::metrics::metrics();
        let mut r = Round {
            store: None,
            leases: Leases::new(&self.cfg.instance_id, self.cfg.lease_ttl),
            heartbeat: redis::Script::new(HEARTBEAT),
            remote_version: None,
            local_version: 0,
            first: true,
        };
        let mut tick = tokio::time::interval(self.cfg.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let started = Instant::now();
            // The round's whole budget: a slow Redis delays the sync, never
            // a request.
            let budget = self.cfg.sync_interval.max(self.cfg.command_timeout * 4);
            let result = match tokio::time::timeout(budget, self.round(&mut r)).await {
                Ok(r) => r,
                Err(_) => Err(format!("a round took over {budget:?}")),
            };
            let took = started.elapsed();
            m.fleet_sync_duration_seconds.observe(took.as_secs_f64());
            let rt = self.runtime.load_full();
            match result {
                Ok(mut state) => {
                    // Back from an outage: write every total again at the
                    // next sync (Redis may have lost them).
                    if last_ok.is_none_or(|t| t.elapsed() > self.cfg.sync_interval * 3) {
                        if let Some(f) = rt.clients.fleet() {
                            f.mark_all_dirty();
                        }
                    }
                    state.last_sync_ms = took.as_secs_f64() * 1000.0;
                    m.fleet_up.set(1);
                    m.fleet_instances.set(state.instances.len() as i64);
                    self.status.ready.store(true, Ordering::Release);
                    self.status.state.store(Arc::new(state));
                    last_ok = Some(Instant::now());
                }
                Err(e) => {
                    m.fleet_sync_errors_total.inc();
                    m.fleet_up.set(0);
                    let live = rt.clients.fleet().map_or(1, |f| f.live());
                    if let Some(f) = rt.clients.fleet() {
                        f.set_degraded(true);
                    }
                    r.leases.fall_back(&rt, self.cfg.on_redis_down, live);
                    if !self.cfg.required {
                        self.status.ready.store(true, Ordering::Release);
                    } else {
                        self.status.ready.store(false, Ordering::Release);
                    }
                    let mut state = (*self.status.snapshot()).clone();
                    state.up = false;
                    state.degraded = true;
                    state.last_error = Some(e.clone());
                    self.status.state.store(Arc::new(state));
                    // A connection that failed is rebuilt next round.
                    if last_ok.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        r.store = None;
                    }
                    tracing::warn!(target: "fleet", "fleet sync failed (degraded: on_redis_down applies): {e}");
                }
            }
        }
        // Shutting down: leases back, out of the live set.
        if let Some(store) = r.store.clone() {
            let release = async {
                r.leases.release_all(&store).await;
                let mut conn = store.clone();
                let _: redis::RedisResult<()> = redis::cmd("ZREM")
                    .arg(INSTANCES)
                    .arg(&self.cfg.instance_id)
                    .query_async(&mut conn)
                    .await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), release).await;
        }
    }
}
