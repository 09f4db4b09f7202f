//! `[server]`: listeners, workers, the admin endpoint, process settings.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

pub(super) fn validate_server(
    s: RawServer,
    base: &Path,
    d: &mut Diagnostics<'_>,
) -> Option<ServerConfig> {
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
    let grpc_listen = s
        .grpc_listen
        .as_ref()
        .and_then(|a| socket_addr(a, &p.key("grpc_listen"), d));
    all.extend(grpc_listen);
    let grpc_tls = s.grpc_tls.unwrap_or(false);
    if grpc_tls && tls.is_empty() {
        d.error(
            &p.key("grpc_tls"),
            "needs a [[server.tls]] listener: gRPC is served with its certificate",
        );
    }
    if grpc_tls && s.grpc_listen.is_none() {
        d.error(&p.key("grpc_tls"), "needs server.grpc_listen");
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
    let nonzero = |v: Option<Duration>, key: &str, d: &mut Diagnostics<'_>| {
        if v.is_some_and(|v| v.is_zero()) {
            d.error(&p.key(key), "must be more than 0");
            return None;
        }
        v
    };
    let tls_handshake_timeout = duration_or(
        s.tls_handshake_timeout,
        "10s",
        &p.key("tls_handshake_timeout"),
        d,
    );
    let tls_handshake_timeout = nonzero(tls_handshake_timeout, "tls_handshake_timeout", d);
    // "0s" passed, and answers said `Connection: keep-alive` on connections
    // then closed at once (found by a hostile-client run).
    let keepalive_timeout = nonzero(keepalive_timeout, "keepalive_timeout", d);
    let body_idle_timeout = duration_or(s.body_idle_timeout, "15s", &p.key("body_idle_timeout"), d);
    let body_idle_timeout = nonzero(body_idle_timeout, "body_idle_timeout", d);
    let body_timeout = duration_or(s.body_timeout, "60s", &p.key("body_timeout"), d);
    let body_timeout = nonzero(body_timeout, "body_timeout", d);
    let client_write_timeout = duration_or(
        s.client_write_timeout,
        "30s",
        &p.key("client_write_timeout"),
        d,
    );
    let client_write_timeout = nonzero(client_write_timeout, "client_write_timeout", d);
    let request_buffer_size = match &s.request_buffer_size {
        None => Some(1024 * 1024),
        Some(v) => byte_size(v, &p.key("request_buffer_size"), d).filter(|n| {
            let ok = *n <= 64 * 1024 * 1024;
            if !ok {
                d.error(&p.key("request_buffer_size"), "must be at most 64MiB");
            }
            ok
        }),
    };
    let cap = |v: Option<i64>, key: &str, d: &mut Diagnostics<'_>| match v {
        Some(n) if n < 0 => {
            d.error(&p.key(key), "must be >= 0 (0: no cap)");
            None
        }
        other => Some(other.map(|n| n as u64)),
    };
    let max_connections_per_listener = cap(
        s.max_connections_per_listener,
        "max_connections_per_listener",
        d,
    );
    let max_connections_per_ip = cap(s.max_connections_per_ip, "max_connections_per_ip", d);
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
        grpc_listen,
        grpc_tls,
        trusted_proxies,
        grace_period: grace_period?,
        max_header_size: max_header_size?,
        header_timeout: header_timeout?,
        keepalive_timeout: keepalive_timeout?,
        tls_handshake_timeout: tls_handshake_timeout?,
        body_idle_timeout: body_idle_timeout?,
        body_timeout: body_timeout?,
        client_write_timeout: client_write_timeout?,
        request_buffer_size: request_buffer_size?,
        max_connections_per_listener: max_connections_per_listener?,
        max_connections_per_ip: max_connections_per_ip?.unwrap_or(256),
        upstream_keepalive_pool_size: pool?,
        upgrade_sock,
        pid_file,
        access_log: s.access_log.unwrap_or(true),
        admin_token_env: s.admin_token_env,
        state_file: s.state_file.map(|f| base.join(f)),
        watch_config: s.watch_config.unwrap_or(true),
    })
}
