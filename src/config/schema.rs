//! The file format: serde structs that mirror the TOML keys one to one.
//!
//! These types are never used past `config::validate`; the rest of the
//! gateway sees only the validated types in `config`. Values that need
//! parsing (addresses, durations, sizes, networks) stay strings here so that
//! validation can report each bad one with its key path, instead of serde
//! stopping at the first.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// Listeners, workers, admin endpoint, process settings.
    pub server: RawServer,
    /// Named pools of backend hosts.
    pub upstreams: Vec<RawUpstream>,
    /// Which upstream serves which host and path prefix.
    pub routes: Vec<RawRoute>,
    /// Client identity and per-client quotas.
    pub clients: Option<RawClients>,
    /// The forward proxy (CONNECT and absolute-form requests).
    pub forward_proxy: Option<RawForwardProxy>,
    /// The gateway-wide adaptive concurrency window.
    pub backpressure: Option<RawBackpressure>,
    /// Limits shared by a fleet of gateways, through Redis.
    pub fleet: Option<RawFleet>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawServer {
    /// Plain-HTTP proxy listeners, `host:port`.
    pub listen: Option<Vec<String>>,
    /// TLS-terminating proxy listeners.
    pub tls: Vec<RawTlsListener>,
    /// Worker threads per service.
    pub threads: Option<i64>,
    /// Admin REST endpoint, `/metrics`, `/health`, `/ready`.
    pub admin_listen: Option<String>,
    /// Admin gRPC endpoint (`floodgate.admin.v1.Admin`, reflection, health).
    pub grpc_listen: Option<String>,
    /// Serve gRPC over TLS with the first `[[server.tls]]` certificate.
    pub grpc_tls: Option<bool>,
    /// Peers (addresses or CIDR networks) whose `X-Forwarded-For` is kept.
    pub trusted_proxies: Vec<String>,
    /// Drain time on shutdown and upgrade.
    pub grace_period: Option<String>,
    /// Largest request header block accepted, bytes or `"64KiB"`; 431 beyond.
    pub max_header_size: Option<toml::Value>,
    /// Time a client has to send its whole request header after its first byte.
    pub header_timeout: Option<String>,
    /// Idle time a client connection is kept open between requests.
    pub keepalive_timeout: Option<String>,
    /// Time a client has to finish its TLS handshake.
    pub tls_handshake_timeout: Option<String>,
    /// Longest pause while a client sends its request body.
    pub body_idle_timeout: Option<String>,
    /// Time a client has to send its whole request body.
    pub body_timeout: Option<String>,
    /// Longest a client may leave the gateway unable to write its response.
    pub client_write_timeout: Option<String>,
    /// Request bodies up to this size are read in full before the request
    /// takes an upstream slot; bytes or `"1MiB"`; 0 = stream every body.
    pub request_buffer_size: Option<toml::Value>,
    /// Connections a proxy listener holds at most; 0 = no cap (default:
    /// from the process's file-descriptor limit).
    pub max_connections_per_listener: Option<i64>,
    /// Connections one client address holds at most on a listener (trusted
    /// proxies exempt); 0 = no cap.
    pub max_connections_per_ip: Option<i64>,
    /// Idle upstream connections kept in the pool, over all upstreams.
    pub upstream_keepalive_pool_size: Option<i64>,
    /// Unix socket used to hand listeners over on `--upgrade`.
    pub upgrade_sock: Option<String>,
    /// Where the pid file is written.
    pub pid_file: Option<String>,
    /// One access-log line per request.
    pub access_log: Option<bool>,
    /// Environment variable holding the bearer token for mutating admin calls.
    pub admin_token_env: Option<String>,
    /// Where changes made through the admin API persist.
    pub state_file: Option<String>,
    /// Watch the config file and reload when it changes.
    pub watch_config: Option<bool>,
}

/// `[[server.tls]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawTlsListener {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// PEM certificate chain.
    pub cert_file: Option<String>,
    /// PEM private key.
    pub key_file: Option<String>,
    /// Offer HTTP/2 through ALPN (default true).
    pub http2: Option<bool>,
}

/// `[[upstreams]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawUpstream {
    /// Name that routes refer to.
    pub name: Option<String>,
    /// `host:port` of each backend; several are load balanced.
    pub backends: Option<Vec<String>>,
    /// Speak HTTPS to the backends.
    pub tls: Option<bool>,
    /// Server name sent in TLS and checked against the certificate.
    pub sni: Option<String>,
    /// PEM file of CA certificates trusted for this upstream (default: system roots).
    pub ca_file: Option<String>,
    /// Verify the backend certificate and host name (default true).
    pub verify_cert: Option<bool>,
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Option<String>,
    /// Time to wait for each read from the upstream.
    pub read_timeout: Option<String>,
    /// Time to wait for each write to the upstream.
    pub write_timeout: Option<String>,
    /// Time an idle pooled connection is kept.
    pub idle_timeout: Option<String>,
    /// Interval of the active health check of each backend.
    pub health_check_interval: Option<String>,
    /// Further backends tried when connecting to one fails.
    pub retries: Option<i64>,
    /// Concurrent requests allowed to each backend host; 0 = no cap.
    pub max_connections: Option<i64>,
    /// This upstream's own adaptive concurrency window.
    pub backpressure: Option<RawBackpressure>,
    /// Headers set on (or removed from) every request to this upstream;
    /// values may name an environment variable: `"Bearer ${env:KEY}"`.
    pub request_headers: Option<RawHeaderRules>,
}

/// `[upstreams] request_headers = { set = { … }, remove = [ … ] }`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawHeaderRules {
    pub set: std::collections::BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// `[[routes]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRoute {
    /// Name used in metrics and logs.
    pub name: Option<String>,
    /// Host header this route matches (any host when absent).
    pub host: Option<String>,
    /// Path prefix this route matches; the longest matching prefix wins.
    pub path_prefix: Option<String>,
    /// Name of the upstream serving this route.
    pub upstream: Option<String>,
    /// Largest request body accepted, bytes or `"10MiB"`; 413 beyond.
    pub max_body_size: Option<toml::Value>,
    /// The LLM API behind the route: `openai`, `anthropic`, `gemini`,
    /// `auto` (recognised from the path), or `none`.
    pub api: Option<String>,
    /// The tokenizer of estimates: `o200k_base` or `cl100k_base`.
    pub tokenizer: Option<String>,
    /// Output tokens assumed when a request sets no output cap.
    pub default_output_tokens: Option<i64>,
}

/// `[clients]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawClients {
    /// Request header carrying the client id.
    pub id_header: Option<String>,
    /// Request header carrying the request's token cost.
    pub token_header: Option<String>,
    /// Token cost of a request without `token_header`.
    pub default_tokens: Option<i64>,
    /// `"ip"`: fall back to the peer address; `"reject"`: 400.
    pub missing_id: Option<String>,
    /// The "minute" of RPM and TPM.
    pub window: Option<String>,
    /// `"enforce"` or `"shadow"` (decide, log and count, refuse nothing).
    pub mode: Option<String>,
    /// Unlisted clients a window counts exactly from the start (the table
    /// grows with demand from there).
    pub max_tracked_clients: Option<i64>,
    /// Memory the unlisted clients' tables may take, bytes or `"256MiB"`.
    pub max_client_table_memory: Option<toml::Value>,
    /// What a client that hangs up is refunded: `"unstarted"` (only a
    /// request never sent upstream) or `"none"`.
    pub refund_on_client_abort: Option<String>,
    /// Response header an upstream reports actual token usage in.
    pub usage_header: Option<String>,
    /// Policy of clients without an entry; absent: not limited.
    pub default: Option<RawQuota>,
    /// Per-client policies.
    pub limits: std::collections::BTreeMap<String, RawClientLimit>,
    /// Per-model limits of every client (each counted on its own).
    pub models: std::collections::BTreeMap<String, RawModelQuota>,
}

/// `[clients] default = { rpm, tpm, max_concurrent }`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawQuota {
    /// Requests per window; absent: unlimited.
    pub rpm: Option<i64>,
    /// Tokens per window; absent: unlimited.
    pub tpm: Option<i64>,
    /// Requests in flight at once (a stream counts until it ends).
    pub max_concurrent: Option<i64>,
}

/// `models."<model>" = { rpm, tpm }`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawModelQuota {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

/// `[clients.limits.<id>]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawClientLimit {
    /// Requests per window; absent: the default's.
    pub rpm: Option<i64>,
    /// Tokens per window; absent: the default's.
    pub tpm: Option<i64>,
    /// `false`: this client is not limited.
    pub enabled: Option<bool>,
    /// `"enforce"` or `"shadow"`; absent: `[clients] mode`.
    pub mode: Option<String>,
    /// API keys of this client, as `"sha256:<64 hex digits>"`.
    pub api_keys: Vec<String>,
    /// May send `X-Request-Criticality: critical` (the critical reserve,
    /// no jitter).
    pub allow_criticality: Option<bool>,
    /// How long `X-Can-Wait` may make this client wait in a queue.
    pub max_wait: Option<String>,
    /// Requests in flight at once (a stream counts until it ends).
    pub max_concurrent: Option<i64>,
    /// This client's limits per model.
    pub models: std::collections::BTreeMap<String, RawModelQuota>,
}

/// `[forward_proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawForwardProxy {
    /// Run the forward proxy.
    pub enabled: Option<bool>,
    /// Its own listener, `host:port`.
    pub listen: Option<String>,
    /// Cap of concurrent connections per destination host; 0 = none.
    pub default_max_connections: Option<i64>,
    /// Caps of single hosts (`host` for ports 80 and 443, else `host:port`).
    pub host_limits: std::collections::BTreeMap<String, i64>,
    /// Destinations allowed: names, `*.suffix` patterns, IPs or CIDR networks.
    pub allow_hosts: Option<Vec<String>>,
    /// Destinations refused; wins over `allow_hosts`.
    pub deny_hosts: Option<Vec<String>>,
    /// Destination ports allowed; absent: any.
    pub allow_ports: Option<Vec<i64>>,
    /// Destination ports refused.
    pub deny_ports: Option<Vec<i64>>,
    /// Time to connect to a destination.
    pub connect_timeout: Option<String>,
}

/// `[backpressure]` and `[upstreams.backpressure]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawBackpressure {
    /// Run this window (default true when the table is present).
    pub enabled: Option<bool>,
    /// Prometheus. base URL (`http[s]://host:port[/prefix]`).
    pub prometheus_url: Option<String>,
    /// Extra headers on every query (`{ "X-Scope-OrgID" = "tenant" }`).
    pub prometheus_headers: std::collections::BTreeMap<String, String>,
    /// Environment variable holding a bearer token for Prometheus.
    pub prometheus_bearer_token_env: Option<String>,
    /// User name for HTTP basic auth to Prometheus.
    pub prometheus_username: Option<String>,
    /// Environment variable holding the basic-auth password.
    pub prometheus_password_env: Option<String>,
    /// PEM file of CA certificates trusted for an https Prometheus
    /// (default: the built-in web roots).
    pub prometheus_ca_file: Option<String>,
    /// Time between two readings of every query.
    pub interval: Option<String>,
    /// Time a query may take (default: half the interval).
    pub query_timeout: Option<String>,
    /// Floor of the window.
    pub min_window: Option<i64>,
    /// Ceiling of the window.
    pub max_window: Option<i64>,
    /// Window at start (default: `max_window`).
    pub initial_window: Option<i64>,
    /// Growth per completed request while all signals are clear (may be a
    /// fraction).
    pub increase: Option<f64>,
    /// Factor applied at an emergency reading.
    pub backoff: Option<f64>,
    /// Age after which a reading no longer counts (default 3 × interval).
    pub stale_after: Option<String>,
    /// `"hold"`, `"open"` or `"close"` once every reading is stale.
    pub on_stale: Option<String>,
    /// Longest wait for a slot in the queue; 0 = no queue.
    pub queue_timeout: Option<String>,
    /// Requests allowed to wait at once.
    pub max_queue: Option<i64>,
    /// Random delay up to this before forwarding (not for critical requests).
    pub jitter: Option<String>,
    /// Share of the window only critical requests may use (0 to 1).
    pub critical_reserve: Option<f64>,
    /// The signals.
    pub queries: Vec<RawQuery>,
}

/// `[[backpressure.queries]]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawQuery {
    /// Label in metrics and the admin API (default `q<index>`).
    pub name: Option<String>,
    /// PromQL yielding one number.
    pub query: Option<String>,
    /// At or above: the window stops growing and is cut gently.
    pub warning: Option<f64>,
    /// At or above: the window is cut by `backoff`.
    pub emergency: Option<f64>,
}

/// `[fleet]`
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawFleet {
    /// One Redis node: `redis://host:port` or `rediss://host:port`.
    pub redis_url: Option<String>,
    /// The nodes of a Redis Cluster (any of them; the rest are discovered).
    pub cluster_urls: Vec<String>,
    /// The variable holding Redis' password.
    pub password_env: Option<String>,
    /// This instance's name in the fleet.
    pub instance_id: Option<String>,
    /// How often the shared state is synced.
    pub sync_interval: Option<String>,
    /// The longest a Redis command may take before the fleet is degraded.
    pub command_timeout: Option<String>,
    /// How long a connection lease outlives its instance.
    pub lease_ttl: Option<String>,
    /// `local`, `allow` or `deny` while Redis is unreachable.
    pub on_redis_down: Option<String>,
    /// Whether `/ready` answers 503 while Redis is unreachable.
    pub required: Option<bool>,
}
