//! Configuration: one TOML file, decoded in two stages.
//!
//! 1. [`schema`]: serde structs mirroring the file. Unknown keys are
//!    collected with `serde_ignored` (serde's `deny_unknown_fields` would stop
//!    at the first), type errors with `serde_path_to_error`, one section or
//!    array element at a time so that one bad element does not hide the next.
//! 2. [`validate`]: conversion into the types below (`SocketAddr`,
//!    `Duration`, `NonZero*`), checking references between sections. Every
//!    problem is reported with its key path and line.

mod backpressure;
mod clients;
pub mod diag;
mod fleet;
mod forward_proxy;
mod routes;
pub mod schema;
mod server;
mod upstreams;
mod values;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use diag::Diagnostics;
pub use diag::{ConfigError, ConfigErrors, KeyPath};
use schema::*;

use crate::limits::clients::ClientsPolicy;
pub use values::{parse_byte_size, parse_duration};

/// Where the gateway looks for its config without `--conf`.
pub const DEFAULT_PATH: &str = "conf/floodgate.toml";

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub clients: ClientsConfig,
    pub forward_proxy: Option<ForwardProxyConfig>,
    /// The gateway-wide adaptive window, when enabled.
    pub backpressure: Option<BackpressureConfig>,
    /// Fleet mode, when configured.
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: limits shared by many gateways through Redis.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub redis_url: Option<String>,
    pub cluster_urls: Vec<String>,
    pub password_env: Option<String>,
    pub instance_id: String,
    pub sync_interval: Duration,
    pub command_timeout: Duration,
    pub lease_ttl: Duration,
    pub on_redis_down: crate::limits::fleet::OnDown,
    pub required: bool,
}

/// `[backpressure]` (or an upstream's), when enabled.
#[derive(Clone, Debug, PartialEq)]
pub struct BackpressureConfig {
    pub prometheus: PrometheusEndpoint,
    pub interval: Duration,
    pub query_timeout: Duration,
    pub adaptive: crate::limits::adaptive::AdaptiveConfig,
}

/// Where Prometheus' HTTP API is (`http[s]://host:port/prefix/`, always
/// ending in `/`), how to authenticate, and extra headers (a Mimir, Thanos
/// or Cortex tenant's `X-Scope-OrgID`, say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusEndpoint {
    pub url: url::Url,
    pub auth: Option<PrometheusAuth>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// CA certificates trusted for https (PEM), besides the web roots.
    pub ca_file: Option<PathBuf>,
}

/// Credentials for Prometheus, read from the environment (never from the
/// file, never logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrometheusAuth {
    /// `Authorization: Bearer <$token_env>`.
    Bearer { token_env: String },
    /// HTTP basic auth with the password in `$password_env`.
    Basic {
        username: String,
        password_env: String,
    },
}

impl std::fmt::Display for PrometheusEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl ForwardProxyConfig {
    /// The configured cap of a destination key (`host_limits`, else the
    /// default).
    pub fn cap_of(&self, key: &str) -> u64 {
        self.host_limits
            .get(key)
            .copied()
            .unwrap_or(self.default_max_connections)
    }
}

/// `[forward_proxy]`, when enabled.
#[derive(Clone, Debug)]
pub struct ForwardProxyConfig {
    pub listen: SocketAddr,
    pub default_max_connections: u64,
    /// Caps by host key (`host`, or `host:port` for ports other than 80/443).
    pub host_limits: std::collections::BTreeMap<String, u64>,
    pub policy: crate::limits::destinations::DestinationPolicy,
    pub connect_timeout: Duration,
}

/// What to do with a request that carries no client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingId {
    /// Use the peer address as the client id.
    Ip,
    /// Answer 400 `missing_header`.
    Reject,
}

/// `[clients]`, validated: how a request names its client and its cost,
/// and the quota policy.
#[derive(Clone, Debug)]
pub struct ClientsConfig {
    pub id_header: http::HeaderName,
    pub token_header: http::HeaderName,
    pub default_tokens: u64,
    pub missing_id: MissingId,
    pub usage_header: Option<http::HeaderName>,
    /// What a client that hangs up gets back.
    pub refund_on_client_abort: AbortRefund,
    pub policy: ClientsPolicy,
}

/// What a client that hangs up before its response ends is refunded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortRefund {
    /// Everything, but only when the request was never sent upstream; once
    /// sent, the upstream may be doing the work: the estimate (or the usage
    /// seen so far, if larger) stays charged.
    Unstarted,
    /// Nothing: what was charged stays charged.
    None,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            id_header: http::HeaderName::from_static("x-client-id"),
            token_header: http::HeaderName::from_static("x-token-estimate"),
            default_tokens: 0,
            missing_id: MissingId::Ip,
            usage_header: None,
            refund_on_client_abort: AbortRefund::Unstarted,
            policy: ClientsPolicy::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub tls: Vec<TlsListener>,
    pub threads: NonZeroUsize,
    pub admin_listen: SocketAddr,
    /// The admin gRPC endpoint (`None`: none); `grpc_tls`: over TLS, with the first TLS cert.
    pub grpc_listen: Option<SocketAddr>,
    pub grpc_tls: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub grace_period: Duration,
    pub max_header_size: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub body_timeout: Duration,
    pub client_write_timeout: Duration,
    /// Bodies up to this many bytes are buffered before upstream slots.
    pub request_buffer_size: usize,
    /// `None`: derived from the file-descriptor limit at start.
    pub max_connections_per_listener: Option<u64>,
    pub max_connections_per_ip: u64,
    pub upstream_keepalive_pool_size: usize,
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
    pub access_log: bool,
    pub admin_token_env: Option<String>,
    pub state_file: Option<PathBuf>,
    pub watch_config: bool,
}

#[derive(Clone, Debug)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub http2: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub backends: Vec<SocketAddr>,
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub health_check_interval: Duration,
    pub retries: usize,
    /// Concurrent requests allowed to each backend host; 0 = no cap.
    pub max_connections: u64,
    /// This upstream's own adaptive window.
    pub backpressure: Option<BackpressureConfig>,
    /// Headers set on or removed from every request to it (provider keys).
    pub request_headers: HeaderRules,
}

#[derive(Clone, Debug)]
pub struct UpstreamTls {
    pub sni: String,
    pub ca_file: Option<PathBuf>,
    pub verify_cert: bool,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// Largest request body accepted; `None`: no limit.
    pub max_body_size: Option<usize>,
    /// The LLM API behind the route (`None`: not an LLM route).
    pub api: Option<LlmApi>,
    /// The tokenizer of its estimates.
    pub tokenizer: Tokenizer,
    /// Output tokens assumed when a request sets no output cap.
    pub default_output_tokens: u64,
}

/// The LLM API a route serves: where usage is read, how a request's cost
/// is estimated, where its model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmApi {
    OpenAi,
    Anthropic,
    Gemini,
    /// Recognised from each request's path.
    Auto,
}

/// The BPE vocabulary of token estimates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tokenizer {
    /// GPT-4o and later.
    #[default]
    O200k,
    /// GPT-4, GPT-3.5.
    Cl100k,
}

/// Headers set on, or removed from, every request to an upstream.
#[derive(Clone, Debug, Default)]
pub struct HeaderRules {
    pub set: Vec<(http::HeaderName, SecretTemplate)>,
    pub remove: Vec<http::HeaderName>,
}

/// A header value that may name environment variables (`${env:NAME}`):
/// resolved when a runtime is built, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretTemplate(String);

impl std::fmt::Debug for SecretTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretTemplate {
    pub fn new(s: String) -> Self {
        SecretTemplate(s)
    }

    /// The environment variables it names; `Err` when a `${` is not closed.
    pub fn vars(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find("${") {
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or("an unclosed ${")?;
            let name = after[..end]
                .strip_prefix("env:")
                .ok_or("only ${env:NAME} is understood")?;
            if name.is_empty() {
                return Err("${env:} names no variable".into());
            }
            out.push(name.to_string());
            rest = &after[end + 1..];
        }
        Ok(out)
    }

    /// The value, every `${env:NAME}` replaced; `Err` names a variable
    /// that is not set.
    pub fn resolve(&self) -> Result<http::HeaderValue, String> {
        let mut v = self.0.clone();
        for name in self.vars()? {
            let val = std::env::var(&name)
                .map_err(|_| format!("the environment variable {name} is not set"))?;
            v = v.replace(&format!("${{env:{name}}}"), &val);
        }
        let mut h = http::HeaderValue::from_str(&v)
            .map_err(|_| "the value is not a valid header value".to_string())?;
        h.set_sensitive(true);
        Ok(h)
    }
}

/// Reads and validates the file at `path`. Blocking: runs at start, in
/// `--check`, and in the control plane's blocking reloads.
#[allow(clippy::disallowed_methods)]
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: Some(path.display().to_string()),
        errors: vec![ConfigError {
            path: KeyPath::root(),
            line: None,
            message: format!("cannot read file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&src, base).map_err(|mut e| {
        e.file = Some(path.display().to_string());
        e
    })
}

/// Parses and validates config text. Relative file paths in it are resolved
/// against `base` (the config file's directory).
pub fn parse(src: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let mut d = Diagnostics::new(src);
    let table: toml::Table = match toml::from_str(src) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.message().to_string();
            match e.span() {
                Some(s) => d.error_at_offset(&KeyPath::root(), s.start, msg),
                None => d.error(&KeyPath::root(), msg),
            }
            return Err(d.finish());
        }
    };
    let raw = decode(&table, &mut d);
    let config = validate(raw, base, &mut d);
    if d.has_errors() {
        return Err(d.finish());
    }
    // `validate` returns a config whenever it recorded no error.
    config.ok_or_else(|| d.finish())
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "upstreams",
    "routes",
    "clients",
    "forward_proxy",
    "backpressure",
    "fleet",
];

/// Stage 1: decode each section, collecting unknown keys and type errors.
fn decode(table: &toml::Table, d: &mut Diagnostics<'_>) -> RawConfig {
    let root = KeyPath::root();
    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            d.error(&root.key(key), "unknown key");
        }
    }
    let mut raw = RawConfig::default();
    if let Some(v) = table.get("server") {
        raw.server = decode_value(v, &root.key("server"), d).unwrap_or_default();
    }
    if let Some(v) = table.get("backpressure") {
        raw.backpressure = decode_value(v, &root.key("backpressure"), d);
    }
    if let Some(v) = table.get("forward_proxy") {
        raw.forward_proxy = decode_value(v, &root.key("forward_proxy"), d);
    }
    if let Some(v) = table.get("clients") {
        raw.clients = decode_value(v, &root.key("clients"), d);
    }
    if let Some(v) = table.get("fleet") {
        raw.fleet = decode_value(v, &root.key("fleet"), d);
    }
    raw.upstreams = decode_array(table, "upstreams", d);
    raw.routes = decode_array(table, "routes", d);
    raw
}

/// Decodes each element of the array at `key` on its own; an element with a
/// type error is reported and replaced by its default so that validation
/// goes on.
fn decode_array<T: DeserializeOwned + Default>(
    table: &toml::Table,
    key: &str,
    d: &mut Diagnostics<'_>,
) -> Vec<T> {
    let path = KeyPath::root().key(key);
    match table.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| decode_value(v, &path.index(i), d))
            .collect(),
        Some(_) => {
            d.error(&path, "must be an array of tables (`[[...]]`)");
            Vec::new()
        }
    }
}

fn decode_value<T: DeserializeOwned>(
    v: &toml::Value,
    path: &KeyPath,
    d: &mut Diagnostics<'_>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(path.join_ignored(&p));
    let de = serde_ignored::Deserializer::new(v.clone(), &mut on_unknown);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    for p in unknown {
        d.error(&p, "unknown key");
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            let p = path.join_serde(e.path());
            d.error(&p, clean_serde_message(&e.inner().to_string()));
            None
        }
    }
}

fn clean_serde_message(m: &str) -> String {
    m.trim().trim_end_matches('.').to_string()
}

/// Stage 2: convert and cross-check. Returns `None` only when an error was
/// recorded.
fn validate(raw: RawConfig, base: &Path, d: &mut Diagnostics<'_>) -> Option<Config> {
    let server = server::validate_server(raw.server, base, d);

    let up_path = KeyPath::root().key("upstreams");
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let p = up_path.index(i);
        if let Some(u) = upstreams::validate_upstream(u, &p, base, d) {
            if !names.insert(u.name.clone()) {
                d.error(
                    &p.key("name"),
                    format!("duplicate upstream name {:?}", u.name),
                );
            }
            upstreams.push(u);
        }
    }

    let route_path = KeyPath::root().key("routes");
    if raw.routes.is_empty() {
        d.error(&route_path, "at least one [[routes]] entry is required");
    }
    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let p = route_path.index(i);
        if let Some(r) = routes::validate_route(r, i, &p, &upstreams, d) {
            if !seen.insert((r.host.clone(), r.path_prefix.clone())) {
                d.error(
                    &p.key("path_prefix"),
                    "another route already has this host and path_prefix",
                );
            }
            routes.push(r);
        }
    }
    let clients = match raw.clients {
        None => Some(ClientsConfig::default()),
        Some(c) => clients::validate_clients(c, d),
    };
    let forward_proxy = match raw.forward_proxy {
        None => Some(None),
        Some(f) => forward_proxy::validate_forward_proxy(f, d),
    };
    let backpressure = match raw.backpressure {
        None => Some(None),
        Some(b) => backpressure::validate_backpressure(
            b,
            &KeyPath::root().key("backpressure"),
            base,
            false,
            d,
        ),
    };
    let fleet = match raw.fleet {
        None => Some(None),
        Some(f) => fleet::validate_fleet(f, d).map(Some),
    };
    if d.has_errors() {
        return None;
    }
    let mut clients = clients?;
    let fleet = fleet?;
    clients.policy.fleet = fleet.as_ref().map(|f| f.on_redis_down);
    Some(Config {
        server: server?,
        upstreams,
        routes,
        clients,
        forward_proxy: forward_proxy?,
        backpressure: backpressure?,
        fleet,
    })
}

#[cfg(test)]
mod tests;
