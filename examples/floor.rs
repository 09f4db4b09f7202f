//! Bare Pingora: the floor Floodgate's cost is measured against. A
//! `ProxyHttp` that sends every request to one upstream and does nothing
//! else, on the Pingora settings and allocator Floodgate ships with (one
//! worker, no work stealing, the same keep-alive pool) — so that the
//! difference between the two is Floodgate's own work.
//!
//!   cargo run --release --example floor -- 127.0.0.1:8081 127.0.0.1:8000
//!
//! Used by `cargo bench --bench cost`, and by `cargo bench --bench knobs`,
//! which sets one Pingora setting at a time through the environment.

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
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
        eprintln!("usage: floor LISTEN UPSTREAM [THREADS]   (both host:port)");
        eprintln!("knobs: FLOOR_WORK_STEALING=true|false FLOOR_LISTENER_TASKS=N FLOOR_POOL=N FLOOR_KEEPALIVE_LIMIT=N");
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
            upstream: upstream.clone(),
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
