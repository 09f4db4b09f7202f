//! Assembles the Pingora server from a validated config: the proxy service
//! on every listener, the health checks, and the admin endpoint.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use std::path::Path;

use crate::admin::{Admin, AdminService};
use crate::config::Config;
use crate::proxy::guard::{EdgeApp, Listeners};
use crate::proxy::Gateway;
use crate::runtime::control::{ControlPlane, Overrides};
use crate::runtime::{Runtime, SharedRuntime};
use crate::services::health::HealthChecks;

/// Command-line options that shape the server.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Take the listeners over from a running instance (`--upgrade`).
    pub upgrade: bool,
    /// Detach from the terminal.
    pub daemon: bool,
    /// The config file's version, read just before the config was loaded
    /// (`services::watcher::file_version`): the watcher reloads if the file
    /// differs from it once its watch is in place.
    pub config_version: Option<u64>,
}

/// Pingora's process settings, from our `[server]` table.
fn server_conf(c: &Config) -> ServerConf {
    let s = &c.server;
    let mut conf = ServerConf {
        threads: s.threads.get(),
        // Measured faster on this kind of machine: no cross-thread stealing.
        work_stealing: false,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.grace_period.as_secs().clamp(1, 5)),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        pid_file: s.pid_file.display().to_string(),
        ..ServerConf::default()
    };
    // Retries beyond our own per-upstream count are Pingora's reuse retries.
    conf.max_retries = c.upstreams.iter().map(|u| u.retries).max().unwrap_or(0) + 2;
    conf
}

/// Pingora's HTTP settings: an idle HTTP/2 connection is closed after
/// `keepalive_timeout`, as an idle HTTP/1 one is.
fn server_options(c: &Config) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.h2_idle_timeout = Some(c.server.keepalive_timeout);
    o
}

/// A TLS listener's acceptor (HTTP/2 offered by ALPN when `http2`). The
/// files are loaded here first, so that a bad one is an error, not a panic.
fn tls_acceptor(t: &crate::config::TlsListener) -> Result<Arc<Acceptor>, String> {
    let cert = t.cert_file.display().to_string();
    let key = t.key_file.display().to_string();
    match pingora::tls::load_certs_and_key_files(&cert, &key) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "server.tls {}: no certificate or key found",
                t.listen
            ))
        }
        Err(e) => return Err(format!("server.tls {}: {e}", t.listen)),
    }
    let mut tls = TlsSettings::intermediate(&cert, &key)
        .map_err(|e| format!("server.tls {}: {e}", t.listen))?;
    if t.http2 {
        tls.enable_h2();
    }
    Ok(Arc::new(tls.build()))
}

/// File descriptors kept for everything but client connections: upstream
/// connections are counted per client connection below; these are for
/// the admin API, logs, the config watcher and the like.
const RESERVED_FDS: u64 = 256;

/// The connections one listener holds at most: as configured, else from
/// the file-descriptor limit (raised to its hard limit first), shared by
/// the listeners, each client connection counted with one upstream
/// connection — so that a flood reaches this cap, never the process's
/// limit, where every listener (the admin one too) would stop accepting.
fn per_listener_cap(c: &Config) -> u64 {
    if let Some(n) = c.server.max_connections_per_listener {
        return n;
    }
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let listeners = (c.server.listen.len()
        + c.server.tls.len()
        + usize::from(c.forward_proxy.is_some())) as u64;
    (nofile.saturating_sub(RESERVED_FDS) / (2 * listeners.max(1))).max(16)
}

/// The admin listener, with `SO_REUSEPORT`: while an old process drains
/// after an upgrade (its `/ready` answering 503), the new one listens on
/// the same port.
fn bind_admin(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The admin bearer token, from the variable `admin_token_env` names. An
/// admin endpoint off loopback refuses to start without one.
fn admin_token(config: &Config) -> Result<Option<String>, String> {
    let token = match &config.server.admin_token_env {
        None => None,
        // Asked for a token and none there: refuse, rather than serve the
        // admin API without one.
        Some(name) => match std::env::var(name) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                return Err(format!(
                    "server.admin_token_env names {name}, which is not set or is empty: \
                     set it to the admin token, or remove admin_token_env"
                ))
            }
        },
    };
    let listeners = std::iter::once(("admin_listen", config.server.admin_listen))
        .chain(config.server.grpc_listen.map(|a| ("grpc_listen", a)));
    for (key, addr) in listeners {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "server.{key} {addr} is not a loopback address: set server.admin_token_env to \
                 the name of an environment variable holding the admin token, and set that variable"
            ));
        }
    }
    Ok(token)
}

/// Everything `run` needs, built and checked before any listener opens.
pub struct Prepared {
    pub server: Server,
    pub runtime: SharedRuntime,
}

/// Builds the server. Binds the admin port here, so that a port in use is a
/// start-up error with a clear message.
pub fn prepare(config: Config, path: &Path, opts: &RunOptions) -> Result<Prepared, String> {
    // Before any listener opens: SIGHUP reloads instead of killing.
    let sighup =
        crate::services::watcher::install_sighup().map_err(|e| format!("SIGHUP handler: {e}"))?;
    // SIGTERM (shutdown) and SIGQUIT (upgrade) also mark the gateway as
    // draining; Pingora's own handlers still do the rest.
    let draining = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGQUIT] {
        signal_hook::flag::register(sig, draining.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let token = admin_token(&config)?;
    let overrides = match &config.server.state_file {
        Some(f) => Overrides::load(f)
            .map_err(|e| crate::runtime::control::state_error(f, e).to_string())?,
        None => Overrides::default(),
    };
    let conf = server_conf(&config);
    let clock: Arc<dyn crate::limits::clock::Clock> = crate::limits::clock::CoarseClock::start()
        .map_err(|e| format!("cannot start the clock thread: {e}"))?;
    let hosts = Arc::new(crate::limits::connections::Hosts::default());
    let effective = crate::runtime::control::with_overrides(&config, &overrides);
    let runtime = Runtime::build(effective.clone(), clock.clone(), hosts.clone(), None)
        .map_err(|e| e.to_string())?;
    let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(runtime));
    let control = Arc::new(ControlPlane::new(
        path.to_path_buf(),
        config,
        overrides,
        runtime.clone(),
        clock,
        hosts,
    ));
    let config = effective;

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let per_listener = per_listener_cap(&config);
    let mut proxy =
        pingora::proxy::http_proxy(&server.configuration, Gateway::new(runtime.clone()));
    proxy.server_options = Some(server_options(&config));
    let mut acceptors = Vec::new();
    for t in &config.server.tls {
        acceptors.push((t.listen, tls_acceptor(t)?));
    }
    let listeners = Listeners::new(&config.server.listen, acceptors, per_listener);
    let app = EdgeApp::new(proxy, runtime.clone(), listeners);
    let mut svc = Service::new("floodgate proxy".to_string(), app);
    // TLS listeners too are plain TCP to Pingora: the guard completes their
    // handshakes itself, under tls_handshake_timeout and the caps.
    for a in config
        .server
        .listen
        .iter()
        .chain(config.server.tls.iter().map(|t| &t.listen))
    {
        svc.add_tcp(&a.to_string());
    }
    server.add_service(svc);

    if let Some(fp) = &config.forward_proxy {
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
            crate::proxy::forward::ForwardGateway::new(runtime.clone()),
        );
        proxy.server_options = Some(server_options(&config));
        let listeners = Listeners::new(&[fp.listen], Vec::new(), per_listener);
        let app = crate::proxy::forward::ForwardApp::new(proxy, runtime.clone(), listeners);
        let mut svc = Service::new("floodgate forward proxy".to_string(), app);
        svc.add_tcp(&fp.listen.to_string());
        server.add_service(svc);
    }

    server.add_service(background_service(
        "health checks",
        HealthChecks::new(runtime.clone()),
    ));
    server.add_service(background_service(
        "backpressure monitor",
        crate::services::monitor::Monitor::new(runtime.clone()),
    ));
    server.add_service(background_service(
        "window rotation",
        crate::services::rotation::Rotation::new(runtime.clone()),
    ));

    server.add_service(background_service(
        "config watcher",
        crate::services::watcher::ConfigWatcher::new(control.clone(), sighup, opts.config_version),
    ));

    // Fleet mode: the shared state, synced in the background.
    let fleet = config.fleet.as_ref().map(|f| {
        let status = Arc::new(crate::services::fleet::FleetStatus::default());
        server.add_service(background_service(
            "fleet sync",
            crate::services::fleet::FleetService::new(
                f.clone(),
                runtime.clone(),
                control.clone(),
                status.clone(),
            ),
        ));
        status
    });

    let addr = config.server.admin_listen;
    let admin = match bind_admin(addr) {
        Ok(l) => Some(l),
        // Upgrading: the old process still holds the port until it starts
        // shutting down; the admin service binds as soon as it is free.
        Err(e) if opts.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => return Err(format!("server.admin_listen {addr}: {e}")),
    };
    let admin_state = Admin {
        runtime: runtime.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        draining,
        control,
        token,
        fleet,
    };
    if let Some(addr) = config.server.grpc_listen {
        let listener = match bind_admin(addr) {
            Ok(l) => Some(l),
            Err(e) if opts.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => None,
            Err(e) => return Err(format!("server.grpc_listen {addr}: {e}")),
        };
        let tls = config
            .server
            .tls
            .first()
            .filter(|_| config.server.grpc_tls)
            .map(|t| (t.cert_file.clone(), t.key_file.clone()));
        server.add_service(background_service(
            "admin gRPC",
            crate::admin::grpc::GrpcService::new(
                addr,
                listener,
                tls,
                admin_state.clone(),
                config.server.keepalive_timeout,
            ),
        ));
    }
    server.add_service(background_service(
        "admin",
        AdminService::new(
            addr,
            admin,
            admin_state,
            config.server.header_timeout,
            config.server.keepalive_timeout,
        ),
    ));

    Ok(Prepared { server, runtime })
}
