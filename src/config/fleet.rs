//! `[fleet]`: limits shared by many gateways through Redis.

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;
use crate::limits::fleet::OnDown;

pub(super) fn validate_fleet(f: RawFleet, d: &mut Diagnostics<'_>) -> Option<FleetConfig> {
    let p = KeyPath::root().key("fleet");
    let url_ok = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    if let Some(u) = &f.redis_url {
        if !url_ok(u) {
            d.error(&p.key("redis_url"), "must be a redis:// or rediss:// URL");
        } else if u.contains('@') {
            d.error(
                &p.key("redis_url"),
                "no credentials in the URL: put the password in the variable password_env names",
            );
        }
    }
    for (i, u) in f.cluster_urls.iter().enumerate() {
        if !url_ok(u) || u.contains('@') {
            d.error(
                &p.key("cluster_urls").index(i),
                "must be a redis:// or rediss:// URL without credentials",
            );
        }
    }
    if f.redis_url.is_some() && !f.cluster_urls.is_empty() {
        d.error(
            &p,
            "set redis_url (one node) or cluster_urls (a Cluster), not both",
        );
    }
    let sync_interval = duration_or(f.sync_interval, "100ms", &p.key("sync_interval"), d);
    let command_timeout = duration_or(f.command_timeout, "20ms", &p.key("command_timeout"), d);
    let lease_ttl = duration_or(f.lease_ttl, "15s", &p.key("lease_ttl"), d);
    if let Some(s) = sync_interval {
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&s) {
            d.error(&p.key("sync_interval"), "must be between 10ms and 10s");
        }
    }
    if let (Some(c), Some(s)) = (command_timeout, sync_interval) {
        if c.is_zero() || c > s {
            d.error(
                &p.key("command_timeout"),
                "must be above 0 and at most sync_interval",
            );
        }
    }
    if let (Some(l), Some(s)) = (lease_ttl, sync_interval) {
        if l < s * 6 {
            d.error(
                &p.key("lease_ttl"),
                "must be at least 6 × sync_interval (leases are renewed every lease_ttl / 3)",
            );
        }
    }
    let on_redis_down = match f.on_redis_down.as_deref() {
        None | Some("local") => Some(OnDown::Local),
        Some("allow") => Some(OnDown::Allow),
        Some("deny") => Some(OnDown::Deny),
        Some(o) => {
            d.error(
                &p.key("on_redis_down"),
                format!("{o:?}: must be \"local\", \"allow\" or \"deny\""),
            );
            None
        }
    };
    let instance_id = match f.instance_id {
        Some(id) if id.is_empty() || id.len() > 128 || id.contains(['{', '}', ' ']) => {
            d.error(
                &p.key("instance_id"),
                "must be 1-128 characters without spaces or braces",
            );
            None
        }
        Some(id) => Some(id),
        None => Some(default_instance_id()),
    };
    Some(FleetConfig {
        redis_url: f.redis_url,
        cluster_urls: f.cluster_urls,
        password_env: f.password_env,
        instance_id: instance_id?,
        sync_interval: sync_interval?,
        command_timeout: command_timeout?,
        lease_ttl: lease_ttl?,
        on_redis_down: on_redis_down?,
        required: f.required.unwrap_or(false),
    })
}

/// The host name and the process id.
fn default_instance_id() -> String {
    #[allow(clippy::disallowed_methods)] // read once, at config load
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "floodgate".into());
    format!("{host}-{}", std::process::id())
}
