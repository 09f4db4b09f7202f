//! Configuration: one TOML file, decoded in two stages.
//!
//! 1. [`schema`]: serde structs mirroring the file. Unknown keys are
//!    collected with `serde_ignored` (serde's `deny_unknown_fields` would stop
//!    at the first), type errors with `serde_path_to_error`, one section or
//!    array element at a time so that one bad element does not hide the next.
//! 2. [`validate`]: conversion into the types below (`SocketAddr`,
//!    `Duration`, `NonZero*`), checking references between sections. Every
//!    problem is reported with its key path and line.

pub mod diag;
pub mod schema;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use diag::Diagnostics;
pub use diag::{ConfigError, ConfigErrors, KeyPath};
use schema::*;

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
}

/// `[backpressure]` (or an upstream's), when enabled.
#[derive(Clone, Debug, PartialEq)]
pub struct BackpressureConfig {
    pub prometheus: PrometheusUrl,
    pub interval: Duration,
    pub query_timeout: Duration,
    pub adaptive: crate::limits::adaptive::AdaptiveConfig,
}

/// Where Prometheus' HTTP API is: `http://host:port[/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix before `/api/v1/query` (no trailing slash).
    pub prefix: String,
}

impl std::fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
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

/// How a refusal is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Refusals are answered.
    Enforce,
    /// Refusals are computed, logged and counted, but the request passes.
    Shadow,
}

/// What to do with a request that carries no client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingId {
    /// Use the peer address as the client id.
    Ip,
    /// Answer 400 `missing_header`.
    Reject,
}

/// `[clients]`, validated.
#[derive(Clone, Debug)]
pub struct ClientsConfig {
    pub id_header: http::HeaderName,
    pub token_header: http::HeaderName,
    pub default_tokens: u64,
    pub missing_id: MissingId,
    pub window: Duration,
    pub mode: Mode,
    pub max_tracked_clients: usize,
    pub usage_header: Option<http::HeaderName>,
    /// The policy of unlisted clients; `None`: not limited.
    pub default: Option<crate::limits::rate::Quota>,
    /// Configured clients by id.
    pub limits: std::collections::BTreeMap<String, ClientLimit>,
}

/// One configured client, its missing fields filled from the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimit {
    pub quota: crate::limits::rate::Quota,
    pub enabled: bool,
    pub mode: Mode,
    /// SHA-256 digests of the client's API keys.
    pub api_keys: Vec<[u8; 32]>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            id_header: http::HeaderName::from_static("x-client-id"),
            token_header: http::HeaderName::from_static("x-token-estimate"),
            default_tokens: 0,
            missing_id: MissingId::Ip,
            window: Duration::from_secs(60),
            mode: Mode::Enforce,
            max_tracked_clients: 100_000,
            usage_header: None,
            default: None,
            limits: Default::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub tls: Vec<TlsListener>,
    pub threads: NonZeroUsize,
    pub admin_listen: SocketAddr,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub grace_period: Duration,
    pub max_header_size: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
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
}

/// Reads and validates the file at `path`.
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
    let server = validate_server(raw.server, base, d);

    let up_path = KeyPath::root().key("upstreams");
    let mut names = HashSet::new();
    let mut upstreams = Vec::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let p = up_path.index(i);
        if let Some(u) = validate_upstream(u, &p, base, d) {
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
        if let Some(r) = validate_route(r, i, &p, &upstreams, d) {
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
        Some(c) => validate_clients(c, d),
    };
    let forward_proxy = match raw.forward_proxy {
        None => Some(None),
        Some(f) => validate_forward_proxy(f, d),
    };
    let backpressure = match raw.backpressure {
        None => Some(None),
        Some(b) => validate_backpressure(b, &KeyPath::root().key("backpressure"), false, d),
    };
    if d.has_errors() {
        return None;
    }
    Some(Config {
        server: server?,
        upstreams,
        routes,
        clients: clients?,
        forward_proxy: forward_proxy?,
        backpressure: backpressure?,
    })
}

fn validate_server(s: RawServer, base: &Path, d: &mut Diagnostics<'_>) -> Option<ServerConfig> {
    let p = KeyPath::root().key("server");
    let listen_given = s.listen.as_ref().is_none_or(|l| !l.is_empty());
    let listen = match s.listen {
        None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| socket_addr(a, &p.key("listen").index(i), d))
            .collect(),
    };
    let mut tls = Vec::new();
    for (i, t) in s.tls.into_iter().enumerate() {
        let tp = p.key("tls").index(i);
        let listen = required(t.listen, &tp.key("listen"), d)
            .and_then(|a| socket_addr(&a, &tp.key("listen"), d));
        let cert = required(t.cert_file, &tp.key("cert_file"), d)
            .and_then(|f| existing_file(&f, base, &tp.key("cert_file"), d));
        let key = required(t.key_file, &tp.key("key_file"), d)
            .and_then(|f| existing_file(&f, base, &tp.key("key_file"), d));
        if let (Some(listen), Some(cert_file), Some(key_file)) = (listen, cert, key) {
            tls.push(TlsListener {
                listen,
                cert_file,
                key_file,
                http2: t.http2.unwrap_or(true),
            });
        }
    }
    if !listen_given && tls.is_empty() {
        d.error(&p.key("listen"), "at least one listener is required");
    }
    let mut all: Vec<SocketAddr> = listen.clone();
    all.extend(tls.iter().map(|t| t.listen));
    let admin_listen = match s.admin_listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
        Some(a) => socket_addr(&a, &p.key("admin_listen"), d),
    };
    if let Some(a) = admin_listen {
        all.push(a);
    }
    let mut uniq = HashSet::new();
    for a in &all {
        if a.port() != 0 && !uniq.insert(*a) {
            d.error(&p, format!("address {a} is used by two listeners"));
        }
    }
    let threads = match s.threads {
        None => NonZeroUsize::new(1),
        Some(n) => positive(n, &p.key("threads"), d).and_then(NonZeroUsize::new),
    };
    let trusted_proxies = s
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| ip_net(t, &p.key("trusted_proxies").index(i), d))
        .collect();
    let grace_period = duration_or(s.grace_period, "10s", &p.key("grace_period"), d);
    let header_timeout = duration_or(s.header_timeout, "10s", &p.key("header_timeout"), d);
    let keepalive_timeout = duration_or(s.keepalive_timeout, "60s", &p.key("keepalive_timeout"), d);
    let max_header_size = match s.max_header_size {
        None => Some(64 * 1024),
        Some(v) => byte_size(&v, &p.key("max_header_size"), d),
    };
    if let Some(m) = max_header_size {
        // Pingora refuses header blocks over 1 MiB on its own.
        if !(1024..=1024 * 1024).contains(&m) {
            d.error(&p.key("max_header_size"), "must be between 1KiB and 1MiB");
        }
    }
    let pool = match s.upstream_keepalive_pool_size {
        None => Some(1024),
        Some(n) if n >= 0 => Some(n as usize),
        Some(_) => {
            d.error(&p.key("upstream_keepalive_pool_size"), "must be >= 0");
            None
        }
    };
    // Defaults are per instance (keyed by the admin port), so two gateways on
    // one machine never share Pingora's fixed /tmp paths.
    let tag = admin_listen.map_or(0, |a| a.port());
    let upgrade_sock = s
        .upgrade_sock
        .map(|f| base.join(f))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("floodgate-{tag}.upgrade.sock")));
    let pid_file = s
        .pid_file
        .map(|f| base.join(f))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("floodgate-{tag}.pid")));
    Some(ServerConfig {
        listen,
        tls,
        threads: threads?,
        admin_listen: admin_listen?,
        trusted_proxies,
        grace_period: grace_period?,
        max_header_size: max_header_size?,
        header_timeout: header_timeout?,
        keepalive_timeout: keepalive_timeout?,
        upstream_keepalive_pool_size: pool?,
        upgrade_sock,
        pid_file,
        access_log: s.access_log.unwrap_or(true),
        admin_token_env: s.admin_token_env,
        state_file: s.state_file.map(|f| base.join(f)),
        watch_config: s.watch_config.unwrap_or(true),
    })
}

fn validate_upstream(
    u: RawUpstream,
    p: &KeyPath,
    base: &Path,
    d: &mut Diagnostics<'_>,
) -> Option<UpstreamConfig> {
    let name = required(u.name, &p.key("name"), d).and_then(|n| name_ok(n, &p.key("name"), d));
    let backends = match u.backends {
        None => {
            d.error(
                &p.key("backends"),
                "missing: list at least one \"host:port\"",
            );
            None
        }
        Some(b) if b.is_empty() => {
            d.error(&p.key("backends"), "must list at least one \"host:port\"");
            None
        }
        Some(b) => {
            let v: Vec<_> = b
                .iter()
                .enumerate()
                .filter_map(|(i, a)| socket_addr(a, &p.key("backends").index(i), d))
                .collect();
            (v.len() == b.len()).then_some(v)
        }
    };
    let tls_on = u.tls.unwrap_or(false);
    if !tls_on {
        for (k, set) in [
            ("sni", u.sni.is_some()),
            ("ca_file", u.ca_file.is_some()),
            ("verify_cert", u.verify_cert.is_some()),
        ] {
            if set {
                d.error(&p.key(k), "only applies with tls = true");
            }
        }
    }
    let tls = if tls_on {
        let ca_file = match u.ca_file {
            None => Some(None),
            Some(f) => existing_file(&f, base, &p.key("ca_file"), d).map(Some),
        };
        let sni = match u.sni {
            Some(s) => s,
            None => backends
                .as_ref()
                .and_then(|b| b.first())
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
        };
        ca_file.map(|ca_file| {
            Some(UpstreamTls {
                sni,
                ca_file,
                verify_cert: u.verify_cert.unwrap_or(true),
            })
        })
    } else {
        Some(None)
    };
    let connect_timeout = duration_or(u.connect_timeout, "5s", &p.key("connect_timeout"), d);
    let read_timeout = duration_or(u.read_timeout, "60s", &p.key("read_timeout"), d);
    let write_timeout = duration_or(u.write_timeout, "60s", &p.key("write_timeout"), d);
    let idle_timeout = duration_or(u.idle_timeout, "60s", &p.key("idle_timeout"), d);
    let health_check_interval = duration_or(
        u.health_check_interval,
        "1s",
        &p.key("health_check_interval"),
        d,
    );
    let retries = match u.retries {
        None => Some(
            backends
                .as_ref()
                .map_or(0, |b| b.len().saturating_sub(1))
                .min(3),
        ),
        Some(n) if n >= 0 => Some(n as usize),
        Some(_) => {
            d.error(&p.key("retries"), "must be >= 0");
            None
        }
    };
    let max_connections = match u.max_connections {
        None => Some(0),
        Some(n) if n >= 0 => Some(n as u64),
        Some(_) => {
            d.error(&p.key("max_connections"), "must be >= 0");
            None
        }
    };
    let backpressure = match u.backpressure {
        None => Some(None),
        Some(b) => validate_backpressure(b, &p.key("backpressure"), true, d),
    };
    Some(UpstreamConfig {
        backpressure: backpressure?,
        max_connections: max_connections?,
        name: name?,
        backends: backends?,
        tls: tls?,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        write_timeout: write_timeout?,
        idle_timeout: idle_timeout?,
        health_check_interval: health_check_interval?,
        retries: retries?,
    })
}

fn validate_route(
    r: RawRoute,
    i: usize,
    p: &KeyPath,
    upstreams: &[UpstreamConfig],
    d: &mut Diagnostics<'_>,
) -> Option<RouteConfig> {
    let name = match r.name {
        Some(n) => name_ok(n, &p.key("name"), d),
        None => Some(format!("route{i}")),
    };
    let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        d.error(&p.key("path_prefix"), "must start with '/'");
    }
    let host = r.host.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        if h.is_empty() || h.contains(['/', ' ']) {
            d.error(&p.key("host"), "must be a host name, optionally with :port");
        }
    }
    let upstream = required(r.upstream, &p.key("upstream"), d).and_then(|u| {
        let idx = upstreams.iter().position(|x| x.name == u);
        if idx.is_none() {
            let known: Vec<_> = upstreams.iter().map(|x| x.name.as_str()).collect();
            let defined = if known.is_empty() {
                "no valid upstream is defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            d.error(
                &p.key("upstream"),
                format!("unknown upstream {u:?} ({defined})"),
            );
        }
        idx
    });
    let max_body_size = match &r.max_body_size {
        None => Some(None),
        Some(v) => byte_size(v, &p.key("max_body_size"), d).map(Some),
    };
    Some(RouteConfig {
        name: name?,
        host,
        path_prefix,
        upstream: upstream?,
        max_body_size: max_body_size?,
    })
}

fn validate_clients(c: RawClients, d: &mut Diagnostics<'_>) -> Option<ClientsConfig> {
    use crate::limits::rate::{Quota, MAX_RPM, MAX_TPM};
    let p = KeyPath::root().key("clients");
    let base = ClientsConfig::default();
    let header = |v: Option<String>, key: &str, d: &mut Diagnostics<'_>| match v {
        None => Some(None),
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(Some(n)),
            Err(_) => {
                d.error(&p.key(key), format!("{h:?} is not a valid header name"));
                None
            }
        },
    };
    let id_header = header(c.id_header, "id_header", d).map(|h| h.unwrap_or(base.id_header));
    let token_header =
        header(c.token_header, "token_header", d).map(|h| h.unwrap_or(base.token_header));
    let usage_header = header(c.usage_header, "usage_header", d);
    let default_tokens = match c.default_tokens {
        None => Some(0),
        Some(n) if n >= 0 => Some(n as u64),
        Some(_) => {
            d.error(&p.key("default_tokens"), "must be >= 0");
            None
        }
    };
    let missing_id = match c.missing_id.as_deref() {
        None | Some("ip") => Some(MissingId::Ip),
        Some("reject") => Some(MissingId::Reject),
        Some(o) => {
            d.error(
                &p.key("missing_id"),
                format!("{o:?}: must be \"ip\" or \"reject\""),
            );
            None
        }
    };
    let mode_of = |v: Option<&str>, path: &KeyPath, default: Mode, d: &mut Diagnostics<'_>| match v
    {
        None => Some(default),
        Some("enforce") => Some(Mode::Enforce),
        Some("shadow") => Some(Mode::Shadow),
        Some(o) => {
            d.error(path, format!("{o:?}: must be \"enforce\" or \"shadow\""));
            None
        }
    };
    let mode = mode_of(c.mode.as_deref(), &p.key("mode"), Mode::Enforce, d);
    let window = duration_or(c.window, "60s", &p.key("window"), d);
    if window.is_some_and(|w| w < Duration::from_millis(100)) {
        d.error(&p.key("window"), "must be at least 100ms");
    }
    let max_tracked_clients = match c.max_tracked_clients {
        None => Some(base.max_tracked_clients),
        Some(n) => positive(n, &p.key("max_tracked_clients"), d),
    };
    let limit = |v: Option<i64>, max: u64, path: &KeyPath, d: &mut Diagnostics<'_>| match v {
        None => Some(None),
        Some(n) if n >= 0 && (n as u64) <= max => Some(Some(n as u64)),
        Some(_) => {
            d.error(path, format!("must be between 0 and {max}"));
            None
        }
    };
    let default = match c.default {
        None => Some(None),
        Some(q) => {
            let dp = p.key("default");
            let rpm = limit(q.rpm, MAX_RPM, &dp.key("rpm"), d);
            let tpm = limit(q.tpm, MAX_TPM, &dp.key("tpm"), d);
            rpm.zip(tpm).map(|(rpm, tpm)| Some(Quota { rpm, tpm }))
        }
    };
    let mut limits = std::collections::BTreeMap::new();
    let mut key_owner: std::collections::HashMap<[u8; 32], String> = Default::default();
    for (id, l) in c.limits {
        let lp = p.key("limits").key(&id);
        if let Err(e) = crate::limits::clients::check_client_id(id.as_bytes()) {
            d.error(&lp, format!("client id {e}"));
            continue;
        }
        let fallback = default.flatten().unwrap_or_default();
        let rpm = limit(l.rpm, MAX_RPM, &lp.key("rpm"), d).map(|v| v.or(fallback.rpm));
        let tpm = limit(l.tpm, MAX_TPM, &lp.key("tpm"), d).map(|v| v.or(fallback.tpm));
        let cmode = mode_of(
            l.mode.as_deref(),
            &lp.key("mode"),
            mode.unwrap_or(Mode::Enforce),
            d,
        );
        let mut api_keys = Vec::new();
        for (i, k) in l.api_keys.iter().enumerate() {
            let kp = lp.key("api_keys").index(i);
            let digest = k
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            match digest {
                Some(dg) => {
                    if let Some(other) = key_owner.insert(dg, id.clone()) {
                        d.error(&kp, format!("this key is also client {other:?}'s"));
                    }
                    api_keys.push(dg);
                }
                None => d.error(
                    &kp,
                    "must be \"sha256:\" and 64 hex digits (e.g. `printf %s KEY | sha256sum`)",
                ),
            }
        }
        if let (Some(rpm), Some(tpm), Some(m)) = (rpm, tpm, cmode) {
            limits.insert(
                id,
                ClientLimit {
                    quota: Quota { rpm, tpm },
                    enabled: l.enabled.unwrap_or(true),
                    mode: m,
                    api_keys,
                },
            );
        }
    }
    Some(ClientsConfig {
        id_header: id_header?,
        token_header: token_header?,
        default_tokens: default_tokens?,
        missing_id: missing_id?,
        window: window?,
        mode: mode?,
        max_tracked_clients: max_tracked_clients?,
        usage_header: usage_header?,
        default: default?,
        limits,
    })
}

fn validate_forward_proxy(
    f: RawForwardProxy,
    d: &mut Diagnostics<'_>,
) -> Option<Option<ForwardProxyConfig>> {
    use crate::limits::destinations::{DestinationPolicy, HostRule};
    let p = KeyPath::root().key("forward_proxy");
    let listen = match f.listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 3128))),
        Some(a) => socket_addr(&a, &p.key("listen"), d),
    };
    let cap = |n: i64, path: &KeyPath, d: &mut Diagnostics<'_>| {
        if n < 0 {
            d.error(path, "must be >= 0");
            return None;
        }
        Some(n as u64)
    };
    let default_max_connections = match f.default_max_connections {
        None => Some(25),
        Some(n) => cap(n, &p.key("default_max_connections"), d),
    };
    let mut host_limits = std::collections::BTreeMap::new();
    for (h, n) in &f.host_limits {
        let hp = p.key("host_limits").key(h);
        if h.is_empty() || h.contains(['/', ' ']) {
            d.error(
                &hp,
                "must be a host, or host:port for ports other than 80 and 443",
            );
        }
        if let Some(n) = cap(*n, &hp, d) {
            host_limits.insert(h.to_ascii_lowercase(), n);
        }
    }
    let explicit = f.allow_hosts.is_some()
        || f.deny_hosts.is_some()
        || f.allow_ports.is_some()
        || f.deny_ports.is_some();
    let rules = |v: Option<Vec<String>>, key: &str, d: &mut Diagnostics<'_>| -> Vec<HostRule> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match HostRule::parse(s) {
                Ok(r) => Some(r),
                Err(e) => {
                    d.error(&p.key(key).index(i), e);
                    None
                }
            })
            .collect()
    };
    let ports = |v: Option<Vec<i64>>, key: &str, d: &mut Diagnostics<'_>| -> Vec<u16> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match u16::try_from(*n) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    d.error(&p.key(key).index(i), "must be a port between 1 and 65535");
                    None
                }
            })
            .collect()
    };
    let policy = DestinationPolicy {
        allow_hosts: rules(f.allow_hosts, "allow_hosts", d),
        deny_hosts: rules(f.deny_hosts, "deny_hosts", d),
        allow_ports: ports(f.allow_ports, "allow_ports", d),
        deny_ports: ports(f.deny_ports, "deny_ports", d),
        explicit,
    };
    let connect_timeout = duration_or(f.connect_timeout, "5s", &p.key("connect_timeout"), d);
    if !f.enabled.unwrap_or(false) {
        return Some(None);
    }
    if let Some(l) = listen {
        if !l.ip().is_loopback() && !explicit {
            d.error(
                &p.key("listen"),
                "a forward proxy on a non-loopback address needs an explicit destination \
                 policy (allow_hosts, deny_hosts, allow_ports or deny_ports): an open proxy \
                 reaches every private network behind it",
            );
        }
    }
    Some(Some(ForwardProxyConfig {
        listen: listen?,
        default_max_connections: default_max_connections?,
        host_limits,
        policy,
        connect_timeout: connect_timeout?,
    }))
}

/// `[backpressure]`; `enabled` defaults to false for the global table (as
/// the contract says) and to true for an upstream's own table.
fn validate_backpressure(
    b: RawBackpressure,
    p: &KeyPath,
    default_enabled: bool,
    d: &mut Diagnostics<'_>,
) -> Option<Option<BackpressureConfig>> {
    use crate::limits::adaptive::{AdaptiveConfig, OnStale, SignalConfig};
    let prometheus = match b.prometheus_url.as_deref() {
        None => Some(PrometheusUrl {
            host: "127.0.0.1".into(),
            port: 9090,
            prefix: String::new(),
        }),
        Some(u) => {
            let parsed = u.strip_prefix("http://").and_then(|rest| {
                let (hostport, prefix) = match rest.find('/') {
                    Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                    None => (rest, ""),
                };
                let (host, port) = match hostport.rsplit_once(':') {
                    Some((h, p)) => (h, p.parse::<u16>().ok()?),
                    None => (hostport, 80),
                };
                (!host.is_empty()).then(|| PrometheusUrl {
                    host: host.trim_matches(['[', ']']).to_string(),
                    port,
                    prefix: prefix.to_string(),
                })
            });
            if parsed.is_none() {
                d.error(
                    &p.key("prometheus_url"),
                    format!("{u:?} is not an http://host:port URL"),
                );
            }
            parsed
        }
    };
    let interval = duration_or(b.interval, "5s", &p.key("interval"), d);
    if interval.is_some_and(|i| i < Duration::from_millis(100)) {
        d.error(&p.key("interval"), "must be at least 100ms");
    }
    let query_timeout = match (b.query_timeout, interval) {
        (Some(t), _) => duration_or(Some(t), "1s", &p.key("query_timeout"), d),
        (None, Some(i)) => Some(i / 2),
        (None, None) => None,
    };
    if let (Some(t), Some(i)) = (query_timeout, interval) {
        if t >= i {
            d.error(&p.key("query_timeout"), "must be shorter than interval");
        }
    }
    let stale_after = match (b.stale_after, interval) {
        (Some(t), _) => duration_or(Some(t), "15s", &p.key("stale_after"), d),
        (None, Some(i)) => Some(i * 3),
        (None, None) => None,
    };
    let count = |v: Option<i64>, default: u64, key: &str, d: &mut Diagnostics<'_>| match v {
        None => Some(default),
        Some(n) if n >= 1 => Some(n as u64),
        Some(_) => {
            d.error(&p.key(key), "must be >= 1");
            None
        }
    };
    let min_window = count(b.min_window, 10, "min_window", d);
    let max_window = count(b.max_window, 1000, "max_window", d);
    if let (Some(lo), Some(hi)) = (min_window, max_window) {
        if lo > hi {
            d.error(&p.key("min_window"), "must be <= max_window");
        }
    }
    let initial_window = match b.initial_window {
        None => max_window,
        Some(n) => {
            let v = count(Some(n), 1, "initial_window", d);
            if let (Some(v), Some(lo), Some(hi)) = (v, min_window, max_window) {
                if v < lo || v > hi {
                    d.error(
                        &p.key("initial_window"),
                        "must be within [min_window, max_window]",
                    );
                }
            }
            v
        }
    };
    let increase = match b.increase {
        None => Some(1.0),
        Some(x) if x.is_finite() && x >= 0.001 => Some(x),
        Some(_) => {
            d.error(&p.key("increase"), "must be a number >= 0.001");
            None
        }
    };
    let backoff = match b.backoff {
        None => Some(0.5),
        Some(x) if x > 0.0 && x < 1.0 => Some(x),
        Some(_) => {
            d.error(&p.key("backoff"), "must be between 0 and 1 (exclusive)");
            None
        }
    };
    let critical_reserve = match b.critical_reserve {
        None => Some(0.0),
        Some(x) if (0.0..1.0).contains(&x) => Some(x),
        Some(_) => {
            d.error(&p.key("critical_reserve"), "must be in [0, 1)");
            None
        }
    };
    let on_stale = match b.on_stale.as_deref() {
        None | Some("hold") => Some(OnStale::Hold),
        Some("open") => Some(OnStale::Open),
        Some("close") => Some(OnStale::Close),
        Some(o) => {
            d.error(
                &p.key("on_stale"),
                format!("{o:?}: must be \"hold\", \"open\" or \"close\""),
            );
            None
        }
    };
    let queue_timeout = duration_or(b.queue_timeout, "0s", &p.key("queue_timeout"), d);
    let max_queue = match b.max_queue {
        None => Some(if queue_timeout.is_some_and(|q| !q.is_zero()) {
            100
        } else {
            0
        }),
        Some(n) if n >= 0 => Some(n as usize),
        Some(_) => {
            d.error(&p.key("max_queue"), "must be >= 0");
            None
        }
    };
    let jitter = duration_or(b.jitter, "0s", &p.key("jitter"), d);
    let mut signals = Vec::new();
    let mut names = HashSet::new();
    for (i, q) in b.queries.into_iter().enumerate() {
        let qp = p.key("queries").index(i);
        let name = q.name.unwrap_or_else(|| format!("q{i}"));
        if !names.insert(name.clone()) {
            d.error(&qp.key("name"), format!("duplicate query name {name:?}"));
        }
        let query = required(q.query, &qp.key("query"), d);
        let warning = required(q.warning, &qp.key("warning"), d);
        let emergency = required(q.emergency, &qp.key("emergency"), d);
        if let (Some(w), Some(e)) = (warning, emergency) {
            if !(w.is_finite() && e.is_finite()) || w > e {
                d.error(&qp.key("warning"), "must be a number <= emergency");
            }
        }
        if let (Some(query), Some(warning), Some(emergency)) = (query, warning, emergency) {
            signals.push(SignalConfig {
                name,
                query,
                warning,
                emergency,
            });
        }
    }
    if !b.enabled.unwrap_or(default_enabled) {
        return Some(None);
    }
    Some(Some(BackpressureConfig {
        prometheus: prometheus?,
        interval: interval?,
        query_timeout: query_timeout?,
        adaptive: AdaptiveConfig {
            min_window: min_window?,
            max_window: max_window?,
            initial_window: initial_window?,
            increase: increase?,
            backoff: backoff?,
            stale_after: stale_after?,
            on_stale: on_stale?,
            queue_timeout: queue_timeout?,
            max_queue: max_queue?,
            critical_reserve: critical_reserve?,
            jitter: jitter?,
            signals,
        },
    }))
}

// ---- value helpers: each records its own error and returns None on failure

fn required<T>(v: Option<T>, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<T> {
    if v.is_none() {
        d.error(p, "missing required key");
    }
    v
}

fn name_ok(n: String, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        d.error(p, "must be 1-64 characters of [A-Za-z0-9_.-]");
        return None;
    }
    Some(n)
}

fn positive(n: i64, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<usize> {
    if n <= 0 {
        d.error(p, "must be > 0");
        return None;
    }
    Some(n as usize)
}

fn socket_addr(a: &str, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<SocketAddr> {
    match a.parse::<SocketAddr>() {
        Ok(s) => Some(s),
        Err(_) => {
            // A host name is resolved once, at load time.
            use std::net::ToSocketAddrs;
            match a.to_socket_addrs().map(|mut it| it.next()) {
                Ok(Some(s)) if a.contains(':') => Some(s),
                _ => {
                    d.error(p, format!("{a:?} is not a valid \"host:port\" address"));
                    None
                }
            }
        }
    }
}

fn ip_net(s: &str, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ipnet::IpNet::from(ip));
    }
    d.error(p, format!("{s:?} is not an IP address or CIDR network"));
    None
}

/// Parses a duration string with a unit: `"250ms"`, `"5s"`, `"1m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} needs a unit, e.g. \"250ms\", \"5s\", \"1m\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

fn duration_or(
    v: Option<String>,
    default: &str,
    p: &KeyPath,
    d: &mut Diagnostics<'_>,
) -> Option<Duration> {
    let s = v.as_deref().unwrap_or(default);
    match parse_duration(s) {
        Ok(x) => Some(x),
        Err(e) => {
            d.error(p, e);
            None
        }
    }
}

fn byte_size(v: &toml::Value, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<usize> {
    match v {
        toml::Value::Integer(n) if *n >= 0 => Some(*n as usize),
        toml::Value::String(s) => match parse_byte_size(s) {
            Some(n) => Some(n),
            None => {
                d.error(
                    p,
                    format!("{s:?} is not a size (e.g. 65536, \"64KiB\", \"1MiB\")"),
                );
                None
            }
        },
        _ => {
            d.error(p, "must be a byte count or a string like \"64KiB\"");
            None
        }
    }
}

/// Parses `"64KiB"`, `"1MiB"`, `"512"`, `"10kb"` into bytes.
pub fn parse_byte_size(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn existing_file(f: &str, base: &Path, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<PathBuf> {
    let path = base.join(f);
    if !path.is_file() {
        d.error(p, format!("file {} does not exist", path.display()));
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests;
