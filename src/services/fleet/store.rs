//! The fleet's store: Redis, one node or a Cluster, through redis-rs (a
//! multiplexed connection that reconnects by itself), and the key layout.
//!
//! Every key carries a hash tag, so that what one operation touches lives
//! in one Cluster slot:
//!
//! ```text
//! fg:{c:<client>}:q:<window>   hash  <instance>:r, <instance>:t  → own totals
//! fg:{h:<proxy>:<host>}:leases zset  <instance>:<n> scored by expiry (ms)
//! fg:{fleet}:instances         zset  <instance> scored by last heartbeat (ms)
//! fg:{fleet}:instance:<id>     hash  last_sync_ms, lag_ms, degraded, version
//! fg:{fleet}:overrides         string  the admin API's overrides (JSON)
//! fg:{fleet}:overrides:version string  bumped on every change
//! ```

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::FleetConfig;

/// A connection to one node or to a Cluster.
#[derive(Clone)]
pub enum Store {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Store::Node(c) => c.req_packed_command(cmd),
            Store::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Store::Node(c) => c.req_packed_commands(cmd, offset, count),
            Store::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Node(c) => c.get_db(),
            Store::Cluster(c) => c.get_db(),
        }
    }
}

impl Store {
    /// Connects to what the config names. The password comes from the
    /// variable `password_env` names; it is never logged.
    pub async fn connect(cfg: &FleetConfig) -> redis::RedisResult<Store> {
        let password = cfg
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|p| !p.is_empty());
        let info = |url: &str| -> redis::RedisResult<redis::ConnectionInfo> {
            let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
            if let Some(p) = &password {
                info.redis.password = Some(p.clone());
            }
            Ok(info)
        };
        if cfg.cluster_urls.is_empty() {
            let url = cfg.redis_url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            let client = redis::Client::open(info(url)?)?;
            let conf = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(
                    cfg.command_timeout
                        .max(std::time::Duration::from_millis(200)),
                )
                .set_response_timeout(cfg.command_timeout)
                .set_number_of_retries(1);
            Ok(Store::Node(
                ConnectionManager::new_with_config(client, conf).await?,
            ))
        } else {
            let nodes = cfg
                .cluster_urls
                .iter()
                .map(|u| info(u))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(
                    cfg.command_timeout
                        .max(std::time::Duration::from_millis(200)),
                )
                .response_timeout(cfg.command_timeout)
                .retries(1)
                .build()?;
            Ok(Store::Cluster(client.get_async_connection().await?))
        }
    }
}

/// The key of a client's totals in window `n`.
pub fn quota_key(client: &str, n: u64) -> String {
    format!("fg:{{c:{}}}:q:{n}", escape(client))
}

/// The key of a host's leases.
pub fn lease_key(proxy: &str, host: &str) -> String {
    format!("fg:{{h:{proxy}:{}}}:leases", escape(host))
}

pub const INSTANCES: &str = "fg:{fleet}:instances";
pub const OVERRIDES: &str = "fg:{fleet}:overrides";
pub const OVERRIDES_VERSION: &str = "fg:{fleet}:overrides:version";

pub fn instance_key(id: &str) -> String {
    format!("fg:{{fleet}}:instance:{}", escape(id))
}

/// A name inside a hash tag: `{` and `}` would end the tag early.
fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// Takes up to `want` more leases on a host for this instance, never past
/// `cap` across the fleet: expired leases go first, then new ones are
/// added with an expiry from Redis' own clock. Returns how many it added.
pub const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local room = cap - redis.call('ZCARD', KEYS[1])
local added = 0
for i = 3, #ARGV do
  if added >= room then break end
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  added = added + 1
end
redis.call('PEXPIRE', KEYS[1], ttl * 4)
return added
"#;

/// Renews the given leases (those still there): returns the ones lost.
pub const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) > now then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 4)
return lost
"#;

/// A heartbeat: this instance's entry, stale ones dropped; returns the
/// live instances and Redis' clock (ms).
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
return {redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), now}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_hash_tags() {
        assert_eq!(quota_key("alice", 7), "fg:{c:alice}:q:7");
        assert_eq!(quota_key("a}b{", 1), "fg:{c:a%7Db%7B}:q:1");
        assert_eq!(
            lease_key("reverse", "10.0.0.1:80"),
            "fg:{h:reverse:10.0.0.1:80}:leases"
        );
    }
}
