//! End-to-end load scenarios on loopback, each starting its own gateway and
//! upstream (and nginx and Prometheus where a scenario needs them):
//!
//!   cargo bench --bench load -- --quick     (a couple of minutes)
//!   cargo bench --bench load                (longer runs, 2 M clients)
//!
//! - `steady`: all requests allowed; Floodgate with every limit on and with
//!   none, against the upstream direct and nginx with equivalent
//!   `limit_req`/`limit_conn` at one worker each.
//! - `quota`: clients far above their quotas; admitted against the limit.
//! - `overload`: an upstream whose latency grows with its concurrency, with
//!   and without the adaptive limiter: goodput and p99.
//! - `many_clients`: distinct client ids each under its quota: false 429s
//!   and the gateway's memory.
//! - `fleet`: fleet mode on and off, Redis commands per second as the
//!   clients in use grow, over-admission across three instances.
//! - `cost`: throughput, p99 and instructions per request (callgrind) of
//!   nginx, bare Pingora and Floodgate (see `benches/cost.rs`).
//!
//! Writes `target/bench/results.json` and `target/bench/report.html`.

#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway
#![allow(clippy::expect_used)] // a bench stops with the reason when its set-up fails
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floodgate_tools::load::{self, LoadReport, LoadSpec, Pace};

#[path = "shared/cost.rs"]
mod cost;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

/// A free port never handed out before in this process (two listeners of
/// one gateway must not get the same just-freed port).
fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// A child in its own process group, stopped as a group (nginx's worker
/// goes with its master).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of `cmd`, or a panic naming the Debian package to install.
fn require(cmd: &str, package: &str) -> PathBuf {
    which(cmd)
        .or_else(|| Some(PathBuf::from("/usr/sbin").join(cmd)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("`{cmd}` is not installed: install the Debian package `{package}` (scripts/setup --bench)")
        })
}

impl Proc {
    fn rss_mib(&self) -> f64 {
        rss_mib_of(self.0.id())
    }
}

fn rss_mib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn wait_port(port: u16) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(cmd: &Path, args: &[String]) -> Proc {
    Proc(
        Command::new(cmd)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn"),
    )
}

/// The demo upstream, built beside `floodgate` by the tools crate.
fn demo_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("floodgate-demo");
    assert!(
        p.is_file(),
        "{} is missing: `cargo build --release --workspace` first",
        p.display()
    );
    p
}

fn upstream() -> (Proc, u16) {
    let port = free_port();
    let p = spawn(
        &demo_bin(),
        &["--listen".into(), format!("127.0.0.1:{port}")],
    );
    wait_port(port);
    (p, port)
}

struct Gw {
    proc: Proc,
    port: u16,
    admin: u16,
    _dir: tempfile::TempDir,
}

fn gateway(rest: &str) -> Gw {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let conf = dir.path().join("floodgate.toml");
    std::fs::write(
        &conf,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\naccess_log = false\nwatch_config = false\n{rest}\n"),
    )
    .expect("config");
    // The gateway as it ships (built with its profile: see
    // `cost::gateway_bin`), not the bench's own build of it.
    let proc = spawn(
        &cost::gateway_bin(),
        &["--conf".into(), conf.display().to_string()],
    );
    wait_port(admin);
    wait_port(port);
    Gw {
        proc,
        port,
        admin,
        _dir: dir,
    }
}

fn route(up: u16, extra: &str) -> String {
    format!("[[upstreams]]\nname = \"up\"\nbackends = [\"127.0.0.1:{up}\"]\n{extra}\n[[routes]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"up\"\n")
}

async fn drive(url: &str, pace: Pace, secs: f64, clients: u64, timeout: Duration) -> LoadReport {
    let mut spec = LoadSpec::new(url, pace, Duration::from_secs_f64(secs));
    spec.clients = clients;
    spec.timeout = timeout;
    load::run(spec).await.expect("load run")
}

fn nginx_proxy(upstream: u16, dir: &Path) -> Option<(Proc, u16)> {
    let nginx = require("nginx", "nginx");
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  limit_req_zone $http_x_client_id zone=clients:10m rate=100000r/s;\n  limit_conn_zone $server_name zone=hosts:1m;\n  upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      limit_req zone=clients burst=100000 nodelay;\n      limit_conn hosts 10000;\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header X-Forwarded-For $remote_addr;\n    }}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .ok()?;
    let p = spawn(
        &nginx,
        &[
            "-c".into(),
            conf.display().to_string(),
            "-p".into(),
            dir.display().to_string(),
        ],
    );
    wait_port(port);
    Some((p, port))
}

fn row(name: &str, r: &LoadReport) -> serde_json::Value {
    json!({ "name": name, "report": r })
}

async fn steady(quick: bool) -> serde_json::Value {
    let secs = if quick { 3.0 } else { 10.0 };
    let pace = Pace::Closed { connections: 64 };
    let (_up, up) = upstream();
    let dir = tempfile::tempdir().expect("tempdir");
    let direct = drive(
        &format!("http://127.0.0.1:{up}/"),
        pace,
        secs,
        1000,
        Duration::from_secs(5),
    )
    .await;
    // Every limit binds in this run: 1000 client ids at ~20 k req/s pass a
    // quota of 100 a window within seconds; 64 connections meet a host cap
    // of 60 and a fixed adaptive window of 56. The refusal rate is
    // reported beside the throughput.
    let limits = "[clients]\ndefault = { rpm = 100, tpm = 1000000000 }\n[backpressure]\nenabled = true\nmin_window = 56\nmax_window = 56\n";
    let with_limits = {
        let gw = gateway(&(route(up, "max_connections = 60") + limits));
        drive(
            &format!("http://127.0.0.1:{}/", gw.port),
            pace,
            secs,
            1000,
            Duration::from_secs(5),
        )
        .await
    };
    let no_limits = {
        let gw = gateway(&route(up, ""));
        drive(
            &format!("http://127.0.0.1:{}/", gw.port),
            pace,
            secs,
            1000,
            Duration::from_secs(5),
        )
        .await
    };
    let nginx = match nginx_proxy(up, dir.path()) {
        Some((_p, port)) => Some(
            drive(
                &format!("http://127.0.0.1:{port}/"),
                pace,
                secs,
                1000,
                Duration::from_secs(5),
            )
            .await,
        ),
        None => None,
    };
    let ratio = |a: &LoadReport, b: &LoadReport| a.throughput / b.throughput.max(1e-9);
    println!("steady ({secs}s, 64 connections, 1000 client ids, one worker each):");
    let refused = |r: &LoadReport| {
        let n: u64 = r
            .by_status
            .iter()
            .filter(|(s, _)| **s >= 400)
            .map(|(_, n)| n)
            .sum();
        100.0 * n as f64 / r.requests.max(1) as f64
    };
    for (n, r) in [
        ("upstream direct", Some(&direct)),
        ("floodgate, all limits on", Some(&with_limits)),
        ("floodgate, no limits", Some(&no_limits)),
        ("nginx, limit_req + limit_conn", nginx.as_ref()),
    ] {
        if let Some(r) = r {
            println!(
                "  {n:<30} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   refused {:>5.1}%",
                r.throughput,
                r.latency.p50_ms,
                r.latency.p99_ms,
                refused(r)
            );
        }
    }
    println!(
        "  floodgate (limits) / direct        {:.2}x",
        ratio(&with_limits, &direct)
    );
    println!(
        "  floodgate (limits) / no limits     {:.2}x",
        ratio(&with_limits, &no_limits)
    );
    if let Some(n) = &nginx {
        println!(
            "  floodgate (limits) / nginx         {:.2}x   p99 {:.2} ms vs {:.2} ms",
            ratio(&with_limits, n),
            with_limits.latency.p99_ms,
            n.latency.p99_ms
        );
    } else {
        println!("  nginx not installed: no nginx comparison (Debian package nginx)");
    }
    let mut runs = vec![
        row("upstream direct", &direct),
        row("floodgate, all limits on", &with_limits),
        row("floodgate, no limits", &no_limits),
    ];
    if let Some(n) = &nginx {
        runs.push(row("nginx, limit_req + limit_conn", n));
    }
    json!({
        "scenario": "steady",
        "runs": runs,
        "ratios": {
            "limits_over_direct": ratio(&with_limits, &direct),
            "limits_over_no_limits": ratio(&with_limits, &no_limits),
            "limits_over_nginx": nginx.as_ref().map(|n| ratio(&with_limits, n)),
            "refused_percent_with_limits": refused(&with_limits),
            "p99_ms_floodgate": with_limits.latency.p99_ms,
            "p99_ms_nginx": nginx.as_ref().map(|n| n.latency.p99_ms),
        }
    })
}

async fn quota(quick: bool) -> serde_json::Value {
    let secs = if quick { 3.0 } else { 10.0 };
    let (_up, up) = upstream();
    // c0..c19 configured at 100 per window, c20..c39 unlisted at the
    // default 50: a 60 s window, so the run stays inside one.
    let mut limits = String::from("[clients]\nwindow = \"60s\"\ndefault = { rpm = 50 }\n");
    for i in 0..20 {
        limits.push_str(&format!("[clients.limits.c{i}]\nrpm = 100\n"));
    }
    let gw = gateway(&(route(up, "") + &limits));
    let r = drive(
        &format!("http://127.0.0.1:{}/", gw.port),
        Pace::Closed { connections: 32 },
        secs,
        40,
        Duration::from_secs(5),
    )
    .await;
    let expected = 20 * 100 + 20 * 50;
    let admitted = r.by_status.get(&200).copied().unwrap_or(0);
    let accuracy = 100.0 * admitted as f64 / expected as f64;
    println!("quota: {} requests from 40 clients far above their quotas; admitted {admitted} of {expected} allowed ({accuracy:.2}%)", r.requests);
    json!({ "scenario": "quota", "runs": [row("floodgate", &r)], "expected": expected, "admitted": admitted, "accuracy_percent": accuracy })
}

async fn window_sampler(
    admin: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(f64, u64, u64)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let c = reqwest_like_get;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(v) = c(admin, "/api/v1/backpressure").await {
            let w = v["upstreams"]["up"]["window"].as_u64().unwrap_or(0);
            let f = v["upstreams"]["up"]["inflight"].as_u64().unwrap_or(0);
            out.push((start.elapsed().as_secs_f64(), w, f));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// A minimal HTTP/1.0 GET returning parsed JSON.
async fn reqwest_like_get(port: u16, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

async fn overload(quick: bool) -> serde_json::Value {
    let secs = if quick { 6.0 } else { 20.0 };
    let work_ms = 4.0;
    let (_up, up) = upstream();
    let url = |port: u16| format!("http://127.0.0.1:{port}/?work_ms={work_ms}");
    let pace = Pace::Closed { connections: 300 };
    let timeout = Duration::from_millis(500);
    // The best goodput the upstream gives, measured: straight to it at a
    // few concurrencies under the same timeout, the best of them.
    let mut best: f64 = 0.0;
    for connections in [10, 40, 100] {
        let r = drive(
            &url(up),
            Pace::Closed { connections },
            secs / 3.0,
            0,
            timeout,
        )
        .await;
        best = best.max(r.goodput);
    }
    let without = {
        let gw = gateway(&route(up, ""));
        drive(&url(gw.port), pace, secs, 0, timeout).await
    };
    let prom_bin = require("prometheus", "prometheus");
    let dir = tempfile::tempdir().expect("tempdir");
    let prom_port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: up\n    static_configs:\n      - targets: [\"127.0.0.1:{up}\"]\n"),
    )
    .expect("prometheus.yml");
    let _prom = spawn(
        &prom_bin,
        &[
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
    );
    wait_port(prom_port);
    // The signal: the upstream's own concurrency. At 60 in flight its
    // latency is 240 ms; at 100, 400 ms — close to the clients' timeout.
    // Growth of 0.05 a completion: about one slot per 20 answers.
    let bp = format!(
        "[upstreams.backpressure]\nprometheus_url = \"http://127.0.0.1:{prom_port}\"\ninterval = \"500ms\"\nmin_window = 10\nmax_window = 300\ninitial_window = 60\nincrease = 0.05\nqueue_timeout = \"50ms\"\nmax_queue = 50\n[[upstreams.backpressure.queries]]\nname = \"inflight\"\nquery = \"max(demo_inflight)\"\nwarning = 60\nemergency = 100\n"
    );
    let gw = gateway(&route(up, &bp));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(window_sampler(gw.admin, stop.clone()));
    let with = drive(&url(gw.port), pace, secs, 0, timeout).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let window = sampler.await.unwrap_or_default();
    println!("overload: upstream latency = {work_ms} ms × requests in flight (best goodput, measured straight to it: {best:.0}/s), 300 clients, 500 ms timeout, {secs}s:");
    for (n, r) in [
        ("without the adaptive limiter", &without),
        ("with the adaptive limiter", &with),
    ] {
        println!(
            "  {n:<30} goodput {:>6.0}/s ({:>5.1}% of best)   p99 of answered {:>7.1} ms   timeouts {:>6}   refused {:>6}",
            r.goodput,
            100.0 * r.goodput / best,
            r.latency_ok.p99_ms,
            r.transport_errors,
            r.by_status.iter().filter(|(s, _)| **s >= 400).map(|(_, n)| n).sum::<u64>()
        );
    }
    json!({
        "scenario": "overload",
        "best_goodput": best,
        "runs": [row("without the adaptive limiter", &without), row("with the adaptive limiter", &with)],
        "window": window.iter().map(|(t, w, f)| json!({"t": t, "window": w, "inflight": f})).collect::<Vec<_>>(),
    })
}

/// A `redis-server` on a free port (no persistence), and its command count.
struct RedisServer {
    _proc: Proc,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let p = spawn(
            &require("redis-server", "redis-server"),
            &[
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
            ],
        );
        wait_port(port);
        RedisServer { _proc: p, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Commands Redis has processed since it started.
    fn commands(&self) -> u64 {
        let out = Command::new(require("redis-cli", "redis-tools"))
            .args(["-p", &self.port.to_string(), "info", "stats"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Fleet mode: throughput with and without it (one instance, every limit
/// on, admitting); Redis commands a second per instance as the clients in
/// use grow; and over-admission across three instances against the
/// stated bound `(instances − 1) × rate × 2 × sync_interval`.
async fn fleet(quick: bool) -> serde_json::Value {
    let secs = if quick { 3.0 } else { 10.0 };
    let (_up, up) = upstream();
    let redis = RedisServer::start();
    let fleet_toml = |id: &str| {
        format!(
            "[fleet]\nredis_url = \"{}\"\ninstance_id = \"{id}\"\n",
            redis.url()
        )
    };
    let limits = "[clients]\ndefault = { rpm = 4000000, tpm = 1000000000 }\n";
    let pace = Pace::Closed { connections: 64 };
    let off = {
        let gw = gateway(&(route(up, "max_connections = 100000") + limits));
        drive(
            &format!("http://127.0.0.1:{}/", gw.port),
            pace,
            secs,
            1000,
            Duration::from_secs(5),
        )
        .await
    };
    let on = {
        let gw = gateway(&(route(up, "max_connections = 100000") + limits + &fleet_toml("bench")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        drive(
            &format!("http://127.0.0.1:{}/", gw.port),
            pace,
            secs,
            1000,
            Duration::from_secs(5),
        )
        .await
    };
    println!(
        "fleet: one instance, every limit on: {:.0} req/s with fleet mode, {:.0} without: {:.2}x",
        on.throughput,
        off.throughput,
        on.throughput / off.throughput.max(1e-9)
    );

    // Redis commands a second as the clients in use grow.
    let sizes: &[u64] = if quick {
        &[100, 10_000, 100_000]
    } else {
        &[100, 10_000, 1_000_000]
    };
    let mut per_size = Vec::new();
    for &n in sizes {
        let gw = gateway(&(route(up, "") + limits + &fleet_toml("bench")));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = redis.commands();
        let t = Instant::now();
        let r = drive(
            &format!("http://127.0.0.1:{}/", gw.port),
            pace,
            secs,
            n,
            Duration::from_secs(5),
        )
        .await;
        let cmds = (redis.commands() - before) as f64 / t.elapsed().as_secs_f64();
        println!(
            "fleet: {n:>9} clients in use, {:.0} req/s: Redis {:.0} commands/s ({:.2} a request)",
            r.throughput,
            cmds,
            cmds / r.throughput.max(1e-9)
        );
        per_size.push(json!({ "clients": n, "requests_per_second": r.throughput, "redis_commands_per_second": cmds }));
        drop(gw);
    }

    // Over-admission: three instances, each sending one client `rate`
    // requests a second, the client allowed `quota` a window.
    let (quota, rate) = (300u64, 200.0);
    let sync_s = 0.1;
    let bound = 2.0 * rate * 2.0 * sync_s;
    let rest = route(up, "")
        + &format!("[clients]\nwindow = \"1h\"\n[clients.limits.hot]\nrpm = {quota}\n");
    let gws: Vec<Gw> = (0..3)
        .map(|i| gateway(&(rest.clone() + &fleet_toml(&format!("b{i}")))))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs = futures::future::join_all(gws.iter().map(|g| {
        let mut spec = LoadSpec::new(
            &format!("http://127.0.0.1:{}/", g.port),
            Pace::Open {
                rate,
                connections: 32,
            },
            Duration::from_secs_f64(secs.min(5.0)),
        );
        spec.headers = vec![("x-client-id".into(), "hot".into())];
        spec.timeout = Duration::from_secs(5);
        load::run(spec)
    }))
    .await;
    let runs: Vec<LoadReport> = runs.into_iter().map(|r| r.expect("load run")).collect();
    let admitted: u64 = runs
        .iter()
        .map(|r| r.by_status.get(&200).copied().unwrap_or(0))
        .sum();
    let over = admitted.saturating_sub(quota);
    println!(
        "fleet: 3 instances × {rate:.0} req/s for one client with a quota of {quota}: {admitted} admitted, {over} over (bound {bound:.0})"
    );
    json!({
        "scenario": "fleet",
        "runs": [row("fleet mode on", &on), row("fleet mode off", &off)],
        "on_over_off": on.throughput / off.throughput.max(1e-9),
        "redis_commands": per_size,
        "over_admission": { "instances": 3, "rate_per_instance": rate, "quota": quota, "admitted": admitted, "over": over, "bound": bound },
    })
}

/// Two million distinct client ids a minute on the shipped defaults (only
/// a quota is set: `rpm = 10`, so every refusal of an id sent at most a
/// few times is a false one), over two and a half windows; the gateway's
/// RSS sampled every second.
async fn many_clients(quick: bool) -> serde_json::Value {
    let (n, secs) = if quick {
        (100_000u64, 4.0)
    } else {
        (2_000_000u64, 150.0)
    };
    let (_up, up) = upstream();
    let gw = gateway(&(route(up, "") + "[clients]\ndefault = { rpm = 10 }\n"));
    let idle = gw.proc.rss_mib();
    let pid = gw.proc.0.id();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib_of(pid));
                std::thread::sleep(Duration::from_secs(1));
            }
            peak
        })
    };
    let r = drive(
        &format!("http://127.0.0.1:{}/", gw.port),
        Pace::Closed { connections: 64 },
        secs,
        n,
        Duration::from_secs(5),
    )
    .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0.0);
    let rss = gw.proc.rss_mib().max(peak);
    let false_429 = r.by_status.get(&429).copied().unwrap_or(0);
    // Ids cycle c0..c{n-1}: each was sent at most ceil(requests / n) times.
    let per_id = r.requests.div_ceil(n);
    let rate = 100.0 * false_429 as f64 / r.requests.max(1) as f64;
    println!(
        "many_clients (shipped defaults, rpm = 10): {} requests over {} distinct ids (each at most {per_id}×): {false_429} false 429s ({rate:.4}%); gateway RSS {idle:.0} MiB idle, peak {rss:.0} MiB",
        r.requests,
        n.min(r.requests)
    );
    json!({ "scenario": "many_clients", "runs": [row("floodgate", &r)], "distinct_ids": n.min(r.requests), "max_sends_per_id": per_id, "false_429": false_429, "false_429_percent": rate, "rss_mib_idle": idle, "rss_mib_after": rss })
}

/// One line of a chart: name, colour, points.
type Series = (String, String, Vec<(f64, f64)>);

fn svg_chart(title: &str, series: &[Series], y_label: &str) -> String {
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut out = format!("<figure><figcaption>{title}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\"><rect x=\"{pad}\" y=\"10\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>", w - pad - 10.0, h - pad - 10.0);
    out.push_str(&format!("<text x=\"4\" y=\"20\" font-size=\"10\">{ymax:.0}</text><text x=\"4\" y=\"{}\" font-size=\"10\">0</text><text x=\"{}\" y=\"{}\" font-size=\"10\">{xmax:.0} s</text><text x=\"4\" y=\"32\" font-size=\"10\">{y_label}</text>", h - pad, w - 50.0, h - 25.0));
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let d: Vec<String> = pts
            .iter()
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    pad + x / xmax * (w - pad - 10.0),
                    10.0 + (1.0 - y / ymax) * (h - pad - 10.0)
                )
            })
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            d.join(" ")
        ));
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{name}</text>",
            pad + 10.0 + 170.0 * i as f64,
            h - 8.0
        ));
    }
    out.push_str("</svg></figure>");
    out
}

fn report_html(results: &serde_json::Value) -> String {
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut body = String::new();
    for sc in results["scenarios"].as_array().into_iter().flatten() {
        let name = sc["scenario"].as_str().unwrap_or("");
        let summary: serde_json::Map<String, serde_json::Value> = sc
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "runs" | "window" | "table"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut runs_text = String::new();
        for r in sc["runs"].as_array().into_iter().flatten() {
            let rep = &r["report"];
            runs_text.push_str(&format!(
                "{:<32} {:>9.0} req/s  goodput {:>9.0}/s  p50 {:>7.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms\n",
                r["name"].as_str().unwrap_or(""),
                rep["throughput"].as_f64().unwrap_or(0.0),
                rep["goodput"].as_f64().unwrap_or(0.0),
                rep["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
                rep["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
                rep["latency"]["p999_ms"].as_f64().unwrap_or(0.0),
            ));
        }
        body.push_str(&format!(
            "<h2>{name}</h2><pre>{runs_text}</pre><pre>{}</pre>",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        ));
        if let Some(table) = sc["table"].as_str() {
            body.push_str(&format!("<pre>{table}</pre>"));
        }
        let runs = sc["runs"].as_array().cloned().unwrap_or_default();
        let series = |f: &dyn Fn(&serde_json::Value) -> f64| -> Vec<Series> {
            runs.iter()
                .enumerate()
                .map(|(i, r)| {
                    let pts = r["report"]["timeline"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| (p["second"].as_f64().unwrap_or(0.0) + 0.5, f(p)))
                        .collect();
                    (
                        r["name"].as_str().unwrap_or("").to_string(),
                        colors[i % colors.len()].to_string(),
                        pts,
                    )
                })
                .collect()
        };
        let p99 = series(&|p| p["p99_ms"].as_f64().unwrap_or(0.0));
        let ok = series(&|p| p["ok"].as_f64().unwrap_or(0.0));
        let refused = series(&|p| {
            p["refused"].as_f64().unwrap_or(0.0) + p["transport_errors"].as_f64().unwrap_or(0.0)
        });
        for (title, unit, v) in [
            ("p99 latency over time", "ms", &p99),
            ("answered (status < 400) per second", "req/s", &ok),
            ("refused or failed per second", "req/s", &refused),
        ] {
            body.push_str(&svg_chart(title, v, unit));
        }
        if let Some(w) = sc["window"].as_array() {
            let win: Vec<(f64, f64)> = w
                .iter()
                .map(|p| {
                    (
                        p["t"].as_f64().unwrap_or(0.0),
                        p["window"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            let inf: Vec<(f64, f64)> = w
                .iter()
                .map(|p| {
                    (
                        p["t"].as_f64().unwrap_or(0.0),
                        p["inflight"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect();
            body.push_str(&svg_chart(
                "adaptive window over time",
                &[
                    ("window".into(), "#1f77b4".into(), win),
                    ("in flight".into(), "#d62728".into(), inf),
                ],
                "requests",
            ));
        }
    }
    format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>Floodgate load scenarios</title><style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}figure{{margin:1em 0}}figcaption{{font-weight:bold}}pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style></head><body><h1>Floodgate load scenarios</h1><p>{}</p>{body}</body></html>\n", results["machine"].as_str().unwrap_or(""))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| s.contains(o.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt.block_on(async {
        let mut scenarios = Vec::new();
        if want("steady") {
            scenarios.push(steady(quick).await);
        }
        if want("quota") {
            scenarios.push(quota(quick).await);
        }
        if want("overload") {
            scenarios.push(overload(quick).await);
        }
        if want("many_clients") {
            scenarios.push(many_clients(quick).await);
        }
        if want("fleet") {
            scenarios.push(fleet(quick).await);
        }
        if want("cost") {
            // nginx, bare Pingora and Floodgate under wrk and callgrind.
            let (summary, md) = tokio::task::spawn_blocking(move || cost::run(quick))
                .await
                .expect("cost scenario");
            println!("cost:\n{md}");
            scenarios.push(json!({ "scenario": "cost", "table": md, "figures": summary }));
        }
        let cpus = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
        json!({
            "quick": quick,
            "machine": format!("{} cores, {cpus}", std::thread::available_parallelism().map_or(0, |n| n.get())),
            "scenarios": scenarios,
        })
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    );
    let _ = std::fs::write(dir.join("report.html"), report_html(&results));
    println!(
        "wrote {} and {}",
        dir.join("results.json").display(),
        dir.join("report.html").display()
    );
}
