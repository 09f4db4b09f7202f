//! Assembles the Pingora server from a validated config: the proxy service
//! on every listener, the health checks, and the admin endpoint.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use std::path::Path;

use crate::admin::{Admin, AdminService};
use crate::config::Config;
use crate::proxy::guard::EdgeApp;
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

/// The admin bearer token, from the variable `admin_token_env` names. An
/// admin endpoint off loopback refuses to start without one.
fn admin_token(config: &Config) -> Result<Option<String>, String> {
    let token = config
        .server
        .admin_token_env
        .as_ref()
        .and_then(|name| std::env::var(name).ok())
        .filter(|t| !t.is_empty());
    if token.is_none() && !config.server.admin_listen.ip().is_loopback() {
        return Err(format!(
            "server.admin_listen {} is not a loopback address: set server.admin_token_env to \
             the name of an environment variable holding the admin token, and set that variable",
            config.server.admin_listen
        ));
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

    let proxy = pingora::proxy::http_proxy(&server.configuration, Gateway::new(runtime.clone()));
    let app = EdgeApp::new(proxy, runtime.clone());
    let mut svc = Service::new("floodgate proxy".to_string(), app);
    for a in &config.server.listen {
        svc.add_tcp(&a.to_string());
    }
    for t in &config.server.tls {
        let mut tls = TlsSettings::intermediate(
            &t.cert_file.display().to_string(),
            &t.key_file.display().to_string(),
        )
        .map_err(|e| format!("server.tls {}: {e}", t.listen))?;
        if t.http2 {
            tls.enable_h2();
        }
        svc.add_tls_with_settings(&t.listen.to_string(), None, tls);
    }
    server.add_service(svc);

    if let Some(fp) = &config.forward_proxy {
        let proxy = pingora::proxy::http_proxy(
            &server.configuration,
            crate::proxy::forward::ForwardGateway::new(runtime.clone()),
        );
        let app = crate::proxy::forward::ForwardApp::new(proxy, runtime.clone());
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
        crate::services::watcher::ConfigWatcher::new(control.clone(), sighup),
    ));

    let addr = config.server.admin_listen;
    let admin = match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            l.set_nonblocking(true)
                .map_err(|e| format!("server.admin_listen {addr}: {e}"))?;
            Some(l)
        }
        // Upgrading: the old process still holds the port until it starts
        // shutting down; the admin service binds as soon as it is free.
        Err(e) if opts.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => return Err(format!("server.admin_listen {addr}: {e}")),
    };
    let admin_state = Admin {
        runtime: runtime.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        control,
        token,
    };
    server.add_service(background_service(
        "admin",
        AdminService::new(addr, admin, admin_state),
    ));

    Ok(Prepared { server, runtime })
}
