//! The admin API's lasting changes: client limits and host caps layered
//! over the config file (and, in fleet mode, shared by every instance).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::limits::clients::ClientLimit;
use crate::limits::connections::Proxy;
use crate::limits::rate::Quota;

/// A client's limits set through the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOverride {
    /// Requests per window; absent: the default's.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per window; absent: the default's.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// `false`: not limited.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Everything the admin API changed; the content of `state_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub clients: BTreeMap<String, ClientOverride>,
    /// Caps of upstream backends, by `host:port`.
    #[serde(default)]
    pub hosts: BTreeMap<String, u64>,
    /// Caps of forward-proxy destinations, by destination key.
    #[serde(default)]
    pub forward_hosts: BTreeMap<String, u64>,
}

impl Overrides {
    pub(super) fn host_caps(&mut self, proxy: Proxy) -> &mut BTreeMap<String, u64> {
        match proxy {
            Proxy::Reverse => &mut self.hosts,
            Proxy::Forward => &mut self.forward_hosts,
        }
    }
}

impl Overrides {
    /// Reads a state file; a missing file is an empty state. Blocking.
    #[allow(clippy::disallowed_methods)]
    pub fn load(path: &Path) -> Result<Overrides, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("state file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
            Err(e) => Err(format!("state file {}: {e}", path.display())),
        }
    }

    /// Writes the file atomically: a temporary file, then a rename.
    /// Blocking.
    #[allow(clippy::disallowed_methods)]
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, path)
    }
}

/// The file's config with the API's client overrides layered on top.
pub fn with_overrides(base: &Config, overrides: &Overrides) -> Config {
    let mut c = base.clone();
    let default = c.clients.policy.default.unwrap_or_default();
    for (id, o) in &overrides.clients {
        let file = base.clients.policy.limits.get(id);
        c.clients.policy.limits.insert(
            id.clone(),
            ClientLimit {
                quota: Quota {
                    rpm: o.rpm.or(default.rpm),
                    tpm: o.tpm.or(default.tpm),
                },
                enabled: o.enabled,
                mode: file.map_or(base.clients.policy.mode, |f| f.mode),
                api_keys: file.map(|f| f.api_keys.clone()).unwrap_or_default(),
                privileges: file.map(|f| f.privileges).unwrap_or_default(),
                max_concurrent: file
                    .map(|f| f.max_concurrent)
                    .unwrap_or(base.clients.policy.default_max_concurrent),
                models: file.map(|f| f.models.clone()).unwrap_or_default(),
            },
        );
    }
    c
}
