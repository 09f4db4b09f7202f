//! Live control: reloads and the admin API's lasting changes.
//!
//! A reload (the config file changed, SIGHUP, or `POST /api/v1/reload`)
//! parses and validates the file off the request path and builds a new
//! runtime from it, carrying limiter state over; only then is the snapshot
//! swapped. A bad file changes nothing: the old config keeps serving, every
//! error is logged, and `floodgate_config_reloads_total{result="rejected"}`
//! counts it. What cannot change without a restart (listeners, threads) is
//! reported as "restart required" while the rest applies.
//!
//! Changes made through the admin API (client limits, host caps) are
//! overrides layered over the file: a reload keeps them, and they are
//! written to `[server] state_file` (atomically) so a restart keeps them too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use super::overrides::{with_overrides, ClientOverride, Overrides};
use super::{Runtime, SharedRuntime};
use crate::config::{self, Config, ConfigError, ConfigErrors, KeyPath};
use crate::limits::clock::Clock;
use crate::limits::connections::{Hosts, Proxy, MAX_CAP};
use crate::limits::rate::{MAX_RPM, MAX_TPM};

/// What a successful reload changed.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    /// Keys whose new values apply only after a restart.
    pub restart_required: Vec<String>,
}

/// A client as the admin API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClientRecord {
    pub id: String,
    /// Requests per window; absent: the default's.
    pub rpm: Option<u64>,
    /// Tokens per window; absent: the default's.
    pub tpm: Option<u64>,
    /// `false`: not limited.
    pub enabled: bool,
    /// Where the limits come from: the config file or the admin API.
    #[schema(value_type = String, pattern = "^(file|api)$")]
    pub source: &'static str,
}

struct Inner {
    /// The last good config read from the file.
    base: Config,
    overrides: Overrides,
}

/// The one place that changes the running configuration.
pub struct ControlPlane {
    path: PathBuf,
    runtime: SharedRuntime,
    clock: Arc<dyn Clock>,
    hosts: Arc<Hosts>,
    inner: Mutex<Inner>,
    /// Bumped by every change of the overrides (what the fleet shares).
    version: std::sync::atomic::AtomicU64,
}

impl ControlPlane {
    pub fn new(
        path: PathBuf,
        base: Config,
        overrides: Overrides,
        runtime: SharedRuntime,
        clock: Arc<dyn Clock>,
        hosts: Arc<Hosts>,
    ) -> Self {
        for (h, cap) in &overrides.hosts {
            hosts.upstream.set_override(h, Some(*cap));
        }
        for (h, cap) in &overrides.forward_hosts {
            hosts.forward.set_override(h, Some(*cap));
        }
        ControlPlane {
            path,
            runtime,
            clock,
            hosts,
            inner: Mutex::new(Inner { base, overrides }),
            version: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.path
    }

    /// Whether the config file is watched for changes.
    pub fn watch_enabled(&self) -> bool {
        self.runtime.load().config.server.watch_config
    }

    /// The control plane's own lock: serialises changes to the running
    /// config; held for a rebuild, never across an await, never taken by a
    /// request.
    #[allow(clippy::disallowed_methods)]
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the config file and swaps in a runtime built from it.
    pub fn reload(&self, trigger: &str) -> Result<ReloadReport, ConfigErrors> {
        let result = self.try_reload();
        let m = &crate::metrics::metrics().config_reloads_total;
        match &result {
            Ok(r) => {
                m.with_label_values(&["success"]).inc();
                tracing::info!(
                    target: "reload",
                    trigger,
                    restart_required = ?r.restart_required,
                    "config reloaded from {}",
                    self.path.display()
                );
                for k in &r.restart_required {
                    tracing::warn!(target: "reload", "{k} changed: restart required for it to apply");
                }
            }
            Err(e) => {
                m.with_label_values(&["rejected"]).inc();
                for err in &e.errors {
                    tracing::error!(target: "reload", trigger, "config rejected, old config kept: {err}");
                }
            }
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ConfigErrors> {
        let base = config::load(&self.path)?;
        let mut inner = self.lock();
        let current = self.runtime.load_full();
        let next = self.build(&base, &inner.overrides, &current)?;
        let report = ReloadReport {
            restart_required: restart_required(&current.config, &next.config),
        };
        self.runtime.store(Arc::new(next));
        inner.base = base;
        Ok(report)
    }

    fn build(
        &self,
        base: &Config,
        overrides: &Overrides,
        current: &Runtime,
    ) -> Result<Runtime, ConfigErrors> {
        let cfg = with_overrides(base, overrides);
        Runtime::build(cfg, self.clock.clone(), self.hosts.clone(), Some(current)).map_err(
            |mut e| {
                e.file = Some(self.path.display().to_string());
                e
            },
        )
    }

    /// Applies a state change: rebuild, swap, persist. On failure nothing
    /// changes.
    fn change(&self, f: impl FnOnce(&mut Overrides)) -> Result<(), ChangeError> {
        let mut inner = self.lock();
        let mut overrides = inner.overrides.clone();
        f(&mut overrides);
        let current = self.runtime.load_full();
        let next = self
            .build(&inner.base, &overrides, &current)
            .map_err(|e| ChangeError::Rejected(e.to_string()))?;
        self.persist(&current.config, &overrides)?;
        self.runtime.store(Arc::new(next));
        inner.overrides = overrides;
        self.bump();
        Ok(())
    }

    fn bump(&self) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The overrides' version: it changes with every change.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Everything the admin API changed.
    pub fn overrides(&self) -> Overrides {
        self.lock().overrides.clone()
    }

    /// Replaces every override at once (the fleet's shared copy): the
    /// runtime rebuilt, persisted, then applied, host caps included.
    pub fn replace_overrides(&self, o: Overrides) -> Result<(), ChangeError> {
        let mut inner = self.lock();
        if inner.overrides == o {
            return Ok(());
        }
        let current = self.runtime.load_full();
        let next = self
            .build(&inner.base, &o, &current)
            .map_err(|e| ChangeError::Rejected(e.to_string()))?;
        self.persist(&current.config, &o)?;
        for (proxy, old, new) in [
            (Proxy::Reverse, &inner.overrides.hosts, &o.hosts),
            (
                Proxy::Forward,
                &inner.overrides.forward_hosts,
                &o.forward_hosts,
            ),
        ] {
            let registry = self.hosts.registry(proxy);
            for h in old.keys().filter(|h| !new.contains_key(*h)) {
                registry.set_override(h, None);
            }
            for (h, cap) in new {
                registry.set_override(h, Some(*cap));
            }
        }
        self.runtime.store(Arc::new(next));
        inner.overrides = o;
        self.bump();
        Ok(())
    }

    fn persist(&self, config: &Config, overrides: &Overrides) -> Result<(), ChangeError> {
        match &config.server.state_file {
            Some(path) => overrides.save(path).map_err(|e| {
                ChangeError::NotSaved(format!("cannot write state file {}: {e}", path.display()))
            }),
            None => Ok(()),
        }
    }

    /// Every client the config or the API defines.
    pub fn clients(&self) -> Vec<ClientRecord> {
        let inner = self.lock();
        let rt = self.runtime.load();
        let mut out: Vec<ClientRecord> = rt
            .config
            .clients
            .policy
            .limits
            .iter()
            .map(|(id, l)| ClientRecord {
                id: id.clone(),
                rpm: l.quota.rpm,
                tpm: l.quota.tpm,
                enabled: l.enabled,
                source: if inner.overrides.clients.contains_key(id) {
                    "api"
                } else {
                    "file"
                },
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn client(&self, id: &str) -> Option<ClientRecord> {
        self.clients().into_iter().find(|c| c.id == id)
    }

    /// Creates or replaces an API override for `id`; `Ok(true)`: it replaced
    /// one.
    pub fn put_client(&self, id: &str, o: ClientOverride) -> Result<bool, ChangeError> {
        crate::limits::clients::check_client_id(id.as_bytes())
            .map_err(|e| ChangeError::Rejected(format!("client id {e}")))?;
        if o.rpm.is_some_and(|r| r > MAX_RPM) {
            return Err(ChangeError::Rejected(format!(
                "rpm must be at most {MAX_RPM}"
            )));
        }
        if o.tpm.is_some_and(|t| t > MAX_TPM) {
            return Err(ChangeError::Rejected(format!(
                "tpm must be at most {MAX_TPM}"
            )));
        }
        {
            let inner = self.lock();
            let c = &inner.overrides.clients;
            if !c.contains_key(id) && c.len() >= MAX_API_OVERRIDES {
                return Err(too_many("client"));
            }
        }
        let mut existed = false;
        self.change(|s| {
            existed = s.clients.insert(id.to_string(), o).is_some();
        })?;
        Ok(existed)
    }

    /// Removes `id`'s API override; the file's value applies again.
    /// `Ok(false)`: there was none.
    pub fn delete_client(&self, id: &str) -> Result<bool, ChangeError> {
        if !self.lock().overrides.clients.contains_key(id) {
            return Ok(false);
        }
        self.change(|s| {
            s.clients.remove(id);
        })?;
        Ok(true)
    }

    /// Which proxy `host` means when the caller does not say: a backend of
    /// an upstream, else a forward-proxy destination (when the forward
    /// proxy runs); `None` when it is neither.
    pub fn proxy_of(&self, host: &str) -> Option<Proxy> {
        let rt = self.runtime.load();
        if rt
            .upstreams
            .iter()
            .any(|u| u.host_infos().any(|h| h.host == host))
        {
            Some(Proxy::Reverse)
        } else {
            rt.config.forward_proxy.as_ref().map(|_| Proxy::Forward)
        }
    }

    /// Sets (`Some`) or removes (`None`) an API cap for `host`: persisted
    /// first, then applied, so a failed write changes nothing.
    /// `Ok(false)`: removing, and there was nothing to remove.
    pub fn set_host_cap(
        &self,
        proxy: Proxy,
        host: &str,
        cap: Option<u64>,
    ) -> Result<bool, ChangeError> {
        if cap.is_some_and(|c| c > MAX_CAP) {
            return Err(ChangeError::Rejected(format!(
                "max_connections must be at most {MAX_CAP}"
            )));
        }
        let mut inner = self.lock();
        let mut overrides = inner.overrides.clone();
        let changed = match cap {
            Some(c) => {
                let caps = overrides.host_caps(proxy);
                if !caps.contains_key(host) && caps.len() >= MAX_API_OVERRIDES {
                    return Err(too_many("host cap"));
                }
                caps.insert(host.to_string(), c);
                true
            }
            None => overrides.host_caps(proxy).remove(host).is_some(),
        };
        if !changed {
            return Ok(false);
        }
        self.persist(&self.runtime.load().config, &overrides)?;
        self.hosts.registry(proxy).set_override(host, cap);
        inner.overrides = overrides;
        self.bump();
        Ok(true)
    }
}

/// The most client overrides, and the most host caps of each proxy, the
/// admin API keeps: every change rewrites the state file and rebuilds the
/// runtime, so their number is bounded.
pub const MAX_API_OVERRIDES: usize = 10_000;

fn too_many(what: &str) -> ChangeError {
    ChangeError::Rejected(format!(
        "at most {MAX_API_OVERRIDES} {what} overrides: delete one first"
    ))
}

/// Why a change through the control plane did not happen (nothing
/// changed either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// The change itself is invalid (the caller's to fix).
    Rejected(String),
    /// It could not be persisted (the state file could not be written).
    NotSaved(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Rejected(m) | ChangeError::NotSaved(m) => f.write_str(m),
        }
    }
}

/// Keys whose change needs a restart: listeners, threads, process settings.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.server, &new.server);
    let mut v = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            v.push(key.to_string());
        }
    };
    check("server.listen", o.listen == n.listen);
    let tls = |c: &Config| {
        c.server
            .tls
            .iter()
            .map(|t| (t.listen, t.cert_file.clone(), t.key_file.clone(), t.http2))
            .collect::<Vec<_>>()
    };
    check("server.tls", tls(old) == tls(new));
    check("server.threads", o.threads == n.threads);
    check("server.admin_listen", o.admin_listen == n.admin_listen);
    check("server.grpc_listen", o.grpc_listen == n.grpc_listen);
    check("server.grpc_tls", o.grpc_tls == n.grpc_tls);
    check(
        "server.admin_token_env",
        o.admin_token_env == n.admin_token_env,
    );
    check("server.upgrade_sock", o.upgrade_sock == n.upgrade_sock);
    check("server.pid_file", o.pid_file == n.pid_file);
    check("server.grace_period", o.grace_period == n.grace_period);
    check(
        "server.upstream_keepalive_pool_size",
        o.upstream_keepalive_pool_size == n.upstream_keepalive_pool_size,
    );
    check(
        "forward_proxy.listen",
        old.forward_proxy.as_ref().map(|f| f.listen)
            == new.forward_proxy.as_ref().map(|f| f.listen),
    );
    v
}

/// The config errors of a state file that cannot be read.
pub fn state_error(path: &Path, message: String) -> ConfigErrors {
    ConfigErrors {
        file: Some(path.display().to_string()),
        errors: vec![ConfigError {
            path: KeyPath::root().key("server").key("state_file"),
            line: None,
            message,
        }],
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::limits::rate::Quota;

    #[test]
    fn overrides_layer_over_the_file() {
        let base = config::parse(
            "[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"a\"\n[clients]\ndefault = { rpm = 10, tpm = 100 }\n[clients.limits.x]\nrpm = 5\nmode = \"shadow\"\n",
            Path::new("."),
        )
        .unwrap();
        let mut overrides = Overrides::default();
        overrides.clients.insert(
            "x".into(),
            ClientOverride {
                rpm: Some(50),
                tpm: None,
                enabled: true,
            },
        );
        overrides.clients.insert(
            "new".into(),
            ClientOverride {
                rpm: None,
                tpm: Some(7),
                enabled: false,
            },
        );
        let c = with_overrides(&base, &overrides);
        let x = &c.clients.policy.limits["x"];
        assert_eq!(
            x.quota,
            Quota {
                rpm: Some(50),
                tpm: Some(100)
            }
        );
        assert_eq!(x.mode, crate::limits::clients::Mode::Shadow);
        let n = &c.clients.policy.limits["new"];
        assert_eq!(
            n.quota,
            Quota {
                rpm: Some(10),
                tpm: Some(7)
            }
        );
        assert!(!n.enabled);
    }

    #[test]
    fn state_file_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("overrides.json");
        assert_eq!(Overrides::load(&p).unwrap(), Overrides::default());
        let mut s = Overrides::default();
        s.hosts.insert("h:1".into(), 3);
        s.save(&p).unwrap();
        assert_eq!(Overrides::load(&p).unwrap(), s);
        assert!(!p.with_extension("tmp").exists());
        std::fs::write(&p, "{not json").unwrap();
        assert!(Overrides::load(&p).is_err());
    }
}
