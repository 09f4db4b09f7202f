//! Bare Pingora: the floor Floodgate's cost is measured against. A
//! `ProxyHttp` that sends every request to one upstream and does nothing
//! else, on the Pingora settings and allocator Floodgate ships with (one
//! worker, no work stealing, the same keep-alive pool, and Floodgate's
//! default timeouts: the upstream's connect, read, write and idle ones,
//! the client's keep-alive, read and write ones) — so that the difference
//! between the two is Floodgate's own work. `FLOOR_TIMEOUTS=off` sets no
//! timeout at all (Pingora's defaults: a pending read waits forever), the
//! floor as it was measured before.
//!
//!   cargo run --release --example floor -- 127.0.0.1:8081 127.0.0.1:8000
//!
//! Used by `cargo bench --bench cost`, and by `cargo bench --bench knobs`,
//! which sets one Pingora setting at a time through the environment.

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    /// Parsed once, as Floodgate's backends are.
    upstream: std::net::SocketAddr,
    timeouts: bool,
}

/// Floodgate's defaults (`docs/configuration.md`): `upstreams[].connect_timeout`,
/// `read_timeout`, `write_timeout`, `idle_timeout`; `server.keepalive_timeout`,
/// `body_idle_timeout`, `client_write_timeout`.
const CONNECT: Duration = Duration::from_secs(5);
const UPSTREAM_READ: Duration = Duration::from_secs(60);
const UPSTREAM_WRITE: Duration = Duration::from_secs(60);
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_SECS: u64 = 60;
const CLIENT_READ: Duration = Duration::from_secs(15);
const CLIENT_WRITE: Duration = Duration::from_secs(30);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if self.timeouts {
            session.set_keepalive(Some(KEEPALIVE_SECS));
            session.set_read_timeout(Some(CLIENT_READ));
            session.set_write_timeout(Some(CLIENT_WRITE));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.timeouts {
            let o = &mut peer.options;
            o.connection_timeout = Some(CONNECT);
            o.read_timeout = Some(UPSTREAM_READ);
            o.write_timeout = Some(UPSTREAM_WRITE);
            o.idle_timeout = Some(UPSTREAM_IDLE);
        }
        Ok(Box::new(peer))
    }
}

/// A Pingora setting to try instead of Floodgate's, from the environment
/// (`cargo bench --bench knobs` sets one at a time).
fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: floor LISTEN UPSTREAM [THREADS]   (LISTEN host:port, UPSTREAM ip:port)");
        eprintln!("knobs: FLOOR_WORK_STEALING=true|false FLOOR_LISTENER_TASKS=N FLOOR_POOL=N FLOOR_KEEPALIVE_LIMIT=N FLOOR_TIMEOUTS=on|off");
        std::process::exit(2);
    };
    let Ok(upstream) = upstream.parse() else {
        eprintln!("floor: UPSTREAM must be an IP address and port (127.0.0.1:8000): {upstream}");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    // Floodgate's settings (server::server_conf) for one worker.
    let conf = ServerConf {
        threads,
        work_stealing: knob("FLOOR_WORK_STEALING").unwrap_or(false),
        listener_tasks_per_fd: knob("FLOOR_LISTENER_TASKS").unwrap_or(1),
        upstream_keepalive_pool_size: knob("FLOOR_POOL").unwrap_or(1024),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(
        &server.configuration,
        Floor {
            upstream,
            timeouts: std::env::var("FLOOR_TIMEOUTS").as_deref() != Ok("off"),
        },
    );
    if let Some(proxy) = svc.app_logic_mut() {
        let mut o = HttpServerOptions::default();
        o.keepalive_request_limit = knob("FLOOR_KEEPALIVE_LIMIT");
        proxy.server_options = Some(o);
    }
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
