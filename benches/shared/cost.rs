//! The cost of a request, shared by `cargo bench --bench cost` and the
//! `cost` scenario of `cargo bench --bench load`: see `benches/cost.rs`.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods)] // benches may block: they are not the gateway

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

pub const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

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

/// The path of `cmd`, or a panic naming the Debian package to install.
fn require(cmd: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{cmd}` is not installed: install the Debian package `{package}` (scripts/setup --bench)")
    })
}

/// A child in its own process group, stopped as a group (nginx's workers
/// and valgrind's children go with it).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.0.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &Path, args: &[String], log: &Path) -> Proc {
    spawn_with(cmd, args, &[], log)
}

fn spawn_with(cmd: &Path, args: &[String], env: &[(String, String)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    Proc(
        Command::new(cmd)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "error")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", cmd.display())),
    )
}

fn wait_port(port: u16, what: &str) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what}: nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A binary as it ships, built (or found up to date) by cargo at every
/// run with the command that builds it for use (`cargo build --release
/// --bin floodgate`, `--example floor`): a copy left from an earlier
/// build would measure the code of that build, not of this one (a run
/// once measured a floor built before the vendored Pingora changed); and
/// the bench's own build of the gateway (`CARGO_BIN_EXE_floodgate`) is
/// compiled under the bench profile with the dev-dependencies' features,
/// so its functions have other symbol names than the shipped binary's and
/// the profile in pgo/floodgate.profdata (scripts/rustc-pgo) fits none of
/// them: it would measure a build nobody runs.
fn shipped(what: &[&str], path: PathBuf) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if BIN.contains("/release/") {
        "--release"
    } else {
        "--profile=dev"
    };
    let ok = Command::new(cargo)
        .arg("build")
        .arg(profile)
        .args(what)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok && path.is_file(),
        "cannot build {}: `cargo build --release {}`",
        path.display(),
        what.join(" ")
    );
    path
}

/// The bare-Pingora example, as `cargo build --release --example floor`
/// builds it.
fn floor_bin() -> PathBuf {
    let dir = Path::new(BIN).parent().unwrap();
    shipped(&["--example", "floor"], dir.join("examples").join("floor"))
}

/// The gateway, as `cargo build --release --bin floodgate` builds it
/// (built once a run).
pub fn gateway_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(BIN).parent().unwrap();
            shipped(&["--bin", "floodgate"], dir.join("floodgate"))
        })
        .clone()
}

fn nginx_conf(dir: &Path, name: &str, port: u16, body: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p};\n  proxy_temp_path {p};\n  fastcgi_temp_path {p};\n  uwsgi_temp_path {p};\n  scgi_temp_path {p};\n  {body}\n  server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 100000;\n    location / {{ {loc} }}\n  }}\n}}\n",
            p = d.display(),
            body = body.split("@@").next().unwrap_or(""),
            loc = body.split("@@").nth(1).unwrap_or(""),
        ),
    )
    .unwrap();
    conf
}

/// The origin every proxy is measured in front of: nginx answering 200
/// with a small JSON body. Its process (stopped when dropped) and port.
fn origin(nginx: &Path, dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let conf = nginx_conf(
        dir,
        "origin",
        port,
        "@@ default_type application/json; return 200 '{\"ok\":true,\"from\":\"origin\"}';",
    );
    let p = spawn(
        nginx,
        &["-c".into(), conf.display().to_string()],
        &dir.join("origin.log"),
    );
    wait_port(port, "origin");
    (p, port)
}

/// Writes a bench's figures as `target/bench/NAME.json` and its table as
/// `NAME.md`, and prints the table.
pub fn write_report(name: &str, summary: &serde_json::Value, md: &str) {
    println!("{md}");
    let out = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("bench"))
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(summary).unwrap(),
    )
    .unwrap();
    let table = out.join(format!("{name}.md"));
    std::fs::write(&table, md).unwrap();
    eprintln!("wrote {}", table.display());
}

/// What each proxy is, and how to start it (possibly under valgrind).
struct Target {
    name: &'static str,
    cmd: PathBuf,
    args: Vec<String>,
    /// Set in its environment (the floor's knobs).
    env: Vec<(String, String)>,
    port: u16,
}

impl Target {
    fn start(&self, dir: &Path, callgrind: Option<&Path>) -> Proc {
        let log = dir.join(format!("{}.log", self.name.replace([' ', ','], "_")));
        let p = match callgrind {
            None => spawn_with(&self.cmd, &self.args, &self.env, &log),
            Some(out) => {
                let mut args = vec![
                    "--tool=callgrind".to_string(),
                    "--instr-atstart=no".into(),
                    format!("--callgrind-out-file={}", out.display()),
                    self.cmd.display().to_string(),
                ];
                args.extend(self.args.iter().cloned());
                spawn_with(&require("valgrind", "valgrind"), &args, &self.env, &log)
            }
        };
        wait_port(self.port, self.name);
        p
    }
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
    refused: f64,
}

/// One wrk run; ids cycle over 1000 clients, one request in 8 goes to the
/// capped route.
fn wrk(port: u16, secs: u32, script: &Path) -> Wrk {
    let out = Command::new(require("wrk", "wrk"))
        .args([
            "-t1",
            "-c64",
            &format!("-d{secs}s"),
            "--latency",
            "-s",
            &script.display().to_string(),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| {
                l.trim_start()[prefix.len()..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .and_then(|v| {
                let (n, mul) = if let Some(n) = v.strip_suffix("ms") {
                    (n, 1.0)
                } else if let Some(n) = v.strip_suffix("us") {
                    (n, 0.001)
                } else if let Some(n) = v.strip_suffix('s') {
                    (n, 1000.0)
                } else {
                    (v.as_str(), 1.0)
                };
                n.parse::<f64>().ok().map(|x| x * mul)
            })
    };
    let rps = num("Requests/sec:").unwrap_or_else(|| panic!("wrk printed no rate:\n{text}"));
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(1.0);
    let non2xx = num("Non-2xx or 3xx responses:").unwrap_or(0.0);
    Wrk {
        rps,
        p99_ms: num("99%").unwrap_or(f64::NAN),
        refused: non2xx / total.max(1.0),
    }
}

/// glibc's `memcpy` moves a block of more than a few KiB with `rep movsb`,
/// which callgrind counts once per byte: a 16 KB copy counts 16 015
/// instructions, the same copy by the vector loop 1 528 (measured with a
/// C program under callgrind). Pingora moves each request's 15 800-byte
/// `process_new_http` future into a box (async-trait), and bare Pingora's
/// count falls from about 75 600 to 63 600 instructions a request when
/// that and its other large copies go through the vector loop. This
/// setting makes glibc copy every size with its vector loop, so that the
/// count reflects the work, not one instruction's byte count; both counts
/// are reported.
const VECTOR_MEMCPY: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.cpu.x86_rep_movsb_threshold=4294967295",
);

/// Instructions per request: `n` requests counted, after a warm-up.
fn instructions(t: &Target, dir: &Path, n: u64) -> f64 {
    instructions_with(t, dir, n, None).per_request
}

/// What callgrind counted while the requests flowed, per request.
#[derive(Clone, Copy)]
struct Count {
    /// The requests' own work: everything counted but the background
    /// rotation below.
    per_request: f64,
    /// Floodgate's limiter rotation (`RateLimiter::rotate`), when it ran
    /// in the counted part. It is background work, once per quota window
    /// (it clears the next window's table): under callgrind the counted
    /// part lasts tens of seconds, and a rotation that falls in it adds up
    /// to ~1 500 a request, where at full speed one table clear a window
    /// costs a few instructions a request. Reported apart, never hidden.
    rotation: f64,
}

/// [`instructions`], with `extra` set in the proxy's environment (and in
/// the name of callgrind's output, so that the runs stay apart).
fn instructions_with(t: &Target, dir: &Path, n: u64, extra: Option<(&str, &str)>) -> Count {
    let mut env = t.env.clone();
    let mut tag = String::new();
    if let Some((k, v)) = extra {
        env.push((k.to_string(), v.to_string()));
        tag = ".env".into();
    }
    let t = &Target {
        name: t.name,
        cmd: t.cmd.clone(),
        args: t.args.clone(),
        env,
        port: t.port,
    };
    let out = dir.join(format!(
        "callgrind.{}{tag}.out",
        t.name.replace([' ', ','], "_")
    ));
    let proc = t.start(dir, Some(&out));
    let h2load = require("h2load", "nghttp2-client");
    let load = |count: u64| {
        let ok = Command::new(&h2load)
            .args([
                "--h1",
                "-n",
                &count.to_string(),
                "-c",
                "16",
                "-H",
                "x-client-id: c7",
                &format!("http://127.0.0.1:{}/", t.port),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("h2load")
            .success();
        assert!(ok, "h2load against {}", t.name);
    };
    load(n / 4);
    let pid = proc.0.id().to_string();
    let control = require("callgrind_control", "valgrind");
    let ctl = |arg: &str| {
        let _ = Command::new(&control)
            .args([arg, &pid])
            .stdout(Stdio::null())
            .status();
    };
    ctl("--instr=on");
    load(n);
    ctl("--instr=off");
    ctl("--dump");
    std::thread::sleep(Duration::from_secs(1));
    drop(proc);
    // Every dump of the process: the counted part is what was collected.
    let mut total = 0u64;
    let mut rotation = 0u64;
    let annotate = require("callgrind_annotate", "valgrind");
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = out.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            // `totals:` is what was collected (`summary:` stays 0 when
            // instrumentation starts off).
            if let Some(v) = l.strip_prefix("totals:") {
                total += v
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<u64>().ok())
                    .unwrap_or(0);
                break;
            }
        }
        // The rotation's inclusive count, by its symbol (a release build
        // has symbols, not lines).
        let annotated = Command::new(&annotate)
            .args(["--inclusive=yes", "--threshold=100"])
            .arg(e.path())
            .output()
            .expect("callgrind_annotate");
        let text = String::from_utf8_lossy(&annotated.stdout);
        if let Some(l) = text
            .lines()
            .find(|l| l.contains(":floodgate::limits::rate::RateLimiter::rotate "))
        {
            rotation += l
                .split_whitespace()
                .next()
                .map(|x| x.replace(',', ""))
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Count {
        per_request: (total - rotation.min(total)) as f64 / n as f64,
        rotation: rotation as f64 / n as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn floodgate(dir: &Path, name: &'static str, origin: u16, cap: u64, rest: &str) -> Target {
    let port = free_port();
    let admin = free_port();
    let d = dir.join(name.replace([' ', ','], "_"));
    std::fs::create_dir_all(&d).unwrap();
    let conf = d.join("floodgate.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\naccess_log = false\nwatch_config = false\n\n[[upstreams]]\nname = \"origin\"\nbackends = [\"127.0.0.1:{origin}\"]\n\n[[upstreams]]\nname = \"capped\"\nbackends = [\"127.0.0.1:{origin}\"]\nmax_connections = CAP\n\n[[routes]]\nname = \"capped\"\npath_prefix = \"/capped\"\nupstream = \"capped\"\n\n[[routes]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"origin\"\n{rest}\n"
        )
        .replace("CAP", &cap.to_string()),
    )
    .unwrap();
    Target {
        name,
        cmd: gateway_bin(),
        args: vec!["--conf".into(), conf.display().to_string()],
        env: Vec::new(),
        port,
    }
}

/// Runs the comparison; returns the figures and their table (markdown).
pub fn run(quick: bool) -> (serde_json::Value, String) {
    let (secs, rounds, counted) = if quick {
        (4, 1, 4_000)
    } else {
        (10, 3, 20_000)
    };
    let nginx = require("nginx", "nginx");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    let (_origin, origin_port) = origin(&nginx, dir);

    let nginx_port = free_port();
    let nginx_proxy = Target {
        name: "nginx",
        cmd: nginx.clone(),
        args: vec![
            "-c".into(),
            nginx_conf(
                dir,
                "proxy",
                nginx_port,
                &format!("upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; }}@@ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $remote_addr;"),
            )
            .display()
            .to_string(),
        ],
        env: Vec::new(),
        port: nginx_port,
    };
    let floor = floor_bin();
    let floor_target = |name: &'static str, env: Vec<(String, String)>| {
        let port = free_port();
        Target {
            name,
            cmd: floor.clone(),
            args: vec![
                format!("127.0.0.1:{port}"),
                format!("127.0.0.1:{origin_port}"),
            ],
            env,
            port,
        }
    };
    let floor = floor_target("bare Pingora", Vec::new());
    // The floor as measured before it took Floodgate's default timeouts:
    // no timeout at all (Pingora's defaults), for comparison.
    let bare = floor_target(
        "bare Pingora, no timeouts",
        vec![("FLOOR_TIMEOUTS".into(), "off".into())],
    );
    let none = floodgate(dir, "floodgate, no limits", origin_port, 0, "");
    // Binding, each limit a little: 1000 ids at ~30 k req/s for `secs`
    // pass a quota of 250 a window late in the run; the capped route (one
    // request in 8, ~8 in flight) meets a cap of 7; 64 connections meet a
    // fixed window of 62.
    let binding = floodgate(
        dir,
        "floodgate, all limits on, binding",
        origin_port,
        7,
        "[clients]\nwindow = \"60s\"\ndefault = { rpm = 250, tpm = 100000000 }\n\n[backpressure]\nenabled = true\nmin_window = 62\nmax_window = 62\n",
    );
    // The same limits set to admit everything: what a request costs when
    // every limit is checked and charged, and its rate-limit headers sent.
    let admitting = floodgate(
        dir,
        "floodgate, all limits on, admitting",
        origin_port,
        100_000,
        "[clients]\nwindow = \"60s\"\ndefault = { rpm = 4000000, tpm = 100000000 }\n\n[backpressure]\nenabled = true\nmin_window = 1000\nmax_window = 1000\n",
    );

    let script = dir.join("ids.lua");
    std::fs::write(
        &script,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  local path = \"/\"\n  if counter % 8 == 0 then path = \"/capped\" end\n  return wrk.format(\"GET\", path, {[\"X-Client-ID\"] = \"c\" .. (counter % 1000)})\nend\n",
    )
    .unwrap();

    // Throughput: rounds interleaved; each proxy started fresh per round.
    let targets = [&nginx_proxy, &floor, &none, &admitting, &binding, &bare];
    let mut runs: Vec<Vec<Wrk>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let p = t.start(dir, None);
            // Warm-up, then the measured run (the binding one restarted so
            // that the warm-up's requests do not count against its quotas).
            let _ = wrk(t.port, 1, &script);
            let p = if std::ptr::eq(*t, &binding) {
                drop(p);
                t.start(dir, None)
            } else {
                p
            };
            runs[i].push(wrk(t.port, secs, &script));
            drop(p);
            eprintln!("round {round}: {} done", t.name);
        }
    }

    let med = |i: usize, f: &dyn Fn(&Wrk) -> f64| median(runs[i].iter().map(f).collect());
    let nginx_rps = med(0, &|w| w.rps);
    let nginx_p99 = med(0, &|w| w.p99_ms);
    let floor_rps = med(1, &|w| w.rps);
    let none_rps = med(2, &|w| w.rps);
    let admitting_rps = med(3, &|w| w.rps);
    // Instructions: the five that admit every request.
    let mut ir: Vec<Option<f64>> = Vec::new();
    let mut ir_vec: Vec<Option<f64>> = Vec::new();
    let mut rotation: Vec<Option<f64>> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if i == 4 {
            ir.push(None);
            ir_vec.push(None);
            rotation.push(None);
            continue;
        }
        let n = instructions_with(t, dir, counted, None);
        let v = instructions_with(t, dir, counted, Some(VECTOR_MEMCPY));
        eprintln!(
            "{}: {:.0} instructions per request ({:.0} with memcpy's vector loop); window rotation counted apart: {:.0} and {:.0} a request",
            t.name, n.per_request, v.per_request, n.rotation, v.rotation
        );
        ir.push(Some(n.per_request));
        ir_vec.push(Some(v.per_request));
        rotation.push(Some(n.rotation.max(v.rotation)));
    }
    let nginx_ir = ir[0].unwrap_or(f64::NAN);
    let nginx_ir_vec = ir_vec[0].unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    // The table's order: the references, then Floodgate.
    for i in [0, 1, 5, 2, 3, 4] {
        let t = targets[i];
        let rps = med(i, &|w| w.rps);
        let refused = med(i, &|w| w.refused);
        let p99 = med(i, &|w| w.p99_ms);
        rows.push(json!({
            "proxy": t.name,
            "rps": rps,
            "admitted_rps": rps * (1.0 - refused),
            "p99_ms": p99,
            "refused_percent": refused * 100.0,
            "instructions_per_request": ir[i],
            "rps_over_nginx": rps / nginx_rps,
            "p99_over_nginx": p99 / nginx_p99,
            "instructions_over_nginx": ir[i].map(|n| n / nginx_ir),
            "instructions_per_request_vector_memcpy": ir_vec[i],
            "instructions_vector_memcpy_over_nginx": ir_vec[i].map(|n| n / nginx_ir_vec),
            "window_rotation_per_request_not_counted": rotation[i],
        }));
    }
    let ir_floor = ir[1].unwrap_or(f64::NAN);
    let ir_limits = ir[3].unwrap_or(f64::NAN);
    let ir_vec_floor = ir_vec[1].unwrap_or(f64::NAN);
    let ir_vec_limits = ir_vec[3].unwrap_or(f64::NAN);
    let ir_bare = ir[5].unwrap_or(f64::NAN);
    let summary = json!({
        "quick": quick,
        "wrk": format!("wrk -t1 -c64 -d{secs}s --latency, {rounds} rounds interleaved, medians"),
        "callgrind": format!("valgrind --tool=callgrind --instr-atstart=no; callgrind_control --instr=on; h2load --h1 -n {counted} -c 16; --instr=off"),
        "rows": rows,
        "floodgate_limits_over_no_limits": admitting_rps / none_rps,
        "floodgate_no_limits_over_floor": none_rps / floor_rps,
        "floodgate_instructions_over_floor": ir_limits / ir_floor,
        "floodgate_instructions_over_floor_vector_memcpy": ir_vec_limits / ir_vec_floor,
        "floodgate_instructions_over_floor_without_timeouts": ir_limits / ir_bare,
        "vector_memcpy": format!("{}={}", VECTOR_MEMCPY.0, VECTOR_MEMCPY.1),
    });
    let mut md = String::from(
        "| proxy | req/s | ×nginx | admitted req/s | p99 ms | ×nginx | refused | instructions/request | ×nginx | same, memcpy by its vector loop | ×nginx | window rotation, apart |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in summary["rows"].as_array().unwrap() {
        let ir = r["instructions_per_request"].as_f64();
        let irv = r["instructions_per_request_vector_memcpy"].as_f64();
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1}% | {} | {} | {} | {} | {} |\n",
            r["proxy"].as_str().unwrap_or(""),
            r["rps"].as_f64().unwrap_or(0.0),
            r["rps_over_nginx"].as_f64().unwrap_or(0.0),
            r["admitted_rps"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["p99_over_nginx"].as_f64().unwrap_or(0.0),
            r["refused_percent"].as_f64().unwrap_or(0.0),
            ir.map_or("—".to_string(), |n| format!("{n:.0}")),
            r["instructions_over_nginx"]
                .as_f64()
                .map_or("—".to_string(), |n| format!("{n:.2}")),
            irv.map_or("—".to_string(), |n| format!("{n:.0}")),
            r["instructions_vector_memcpy_over_nginx"]
                .as_f64()
                .map_or("—".to_string(), |n| format!("{n:.2}")),
            r["window_rotation_per_request_not_counted"]
                .as_f64()
                .map_or("—".to_string(), |n| format!("{n:.0}")),
        ));
    }
    md.push_str(
        "\nWindow rotation: Floodgate's limiter clears the next quota window's table once a window, in the background. When that falls in the counted part (under callgrind the counted part lasts tens of seconds) callgrind adds it to the requests; it is counted apart (last column, per request) and not in the instructions per request.\n",
    );
    md.push_str(&format!(
        "\nFloodgate, limits on (admitting) / no limits: {:.2}x throughput. Floodgate (no limits) / bare Pingora: {:.2}x throughput. Floodgate (limits on, admitting) / bare Pingora: {:.2}x instructions ({:.2}x with memcpy by its vector loop, {}); / bare Pingora with no timeouts: {:.2}x.\n\n{}; {}.{}\n",
        admitting_rps / none_rps,
        none_rps / floor_rps,
        ir_limits / ir_floor,
        ir_vec_limits / ir_vec_floor,
        summary["vector_memcpy"].as_str().unwrap_or(""),
        ir_limits / ir_bare,
        summary["wrk"].as_str().unwrap_or(""),
        summary["callgrind"].as_str().unwrap_or(""),
        if quick { " A --quick run: not the result." } else { "" },
    ));
    (summary, md)
}

/// Pingora's own settings, one at a time, on the floor (bare Pingora on
/// Floodgate's settings): throughput and p99 (wrk, rounds interleaved) and
/// instructions per request (callgrind), against the floor as shipped in
/// the same run. Returns the figures and their table (markdown).
pub fn knobs(quick: bool) -> (serde_json::Value, String) {
    let (secs, rounds, counted) = if quick {
        (4, 1, 4_000)
    } else {
        (10, 3, 20_000)
    };
    let nginx = require("nginx", "nginx");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (_origin, origin_port) = origin(&nginx, dir);
    // (name, environment): Floodgate's settings first, then one change each.
    let variants: &[(&'static str, &[(&str, &str)])] = &[
        (
            "as shipped: no work stealing, 1 listener task, pool 1024, no request limit",
            &[],
        ),
        (
            "work_stealing = true (tokio multi-thread flavour)",
            &[("FLOOR_WORK_STEALING", "true")],
        ),
        (
            "listener_tasks_per_fd = 2",
            &[("FLOOR_LISTENER_TASKS", "2")],
        ),
        (
            "upstream_keepalive_pool_size = 32 (below the 64 connections)",
            &[("FLOOR_POOL", "32")],
        ),
        (
            "upstream_keepalive_pool_size = 8192",
            &[("FLOOR_POOL", "8192")],
        ),
        (
            "keepalive_request_limit = 1000 (nginx's keepalive_requests)",
            &[("FLOOR_KEEPALIVE_LIMIT", "1000")],
        ),
        (
            "keepalive_request_limit = 100",
            &[("FLOOR_KEEPALIVE_LIMIT", "100")],
        ),
    ];
    let floor = floor_bin();
    let targets: Vec<Target> = variants
        .iter()
        .map(|(name, env)| {
            let port = free_port();
            Target {
                name,
                cmd: floor.clone(),
                args: vec![
                    format!("127.0.0.1:{port}"),
                    format!("127.0.0.1:{origin_port}"),
                ],
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                port,
            }
        })
        .collect();
    let script = dir.join("plain.lua");
    std::fs::write(
        &script,
        "request = function()\n  return wrk.format(\"GET\", \"/\", {[\"X-Client-ID\"] = \"c7\"})\nend\n",
    )
    .unwrap();
    let mut runs: Vec<Vec<Wrk>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let p = t.start(dir, None);
            let _ = wrk(t.port, 1, &script);
            runs[i].push(wrk(t.port, secs, &script));
            drop(p);
            eprintln!("round {round}: {} done", t.name);
        }
    }
    let mut rows = Vec::new();
    let base_rps = median(runs[0].iter().map(|w| w.rps).collect());
    let base_p99 = median(runs[0].iter().map(|w| w.p99_ms).collect());
    let mut base_ir = f64::NAN;
    for (i, t) in targets.iter().enumerate() {
        let ir = instructions(t, dir, counted);
        if i == 0 {
            base_ir = ir;
        }
        eprintln!("{}: {ir:.0} instructions per request", t.name);
        let rps = median(runs[i].iter().map(|w| w.rps).collect());
        let p99 = median(runs[i].iter().map(|w| w.p99_ms).collect());
        rows.push(json!({
            "setting": t.name,
            "rps": rps,
            "rps_over_shipped": rps / base_rps,
            "p99_ms": p99,
            "p99_over_shipped": p99 / base_p99,
            "instructions_per_request": ir,
            "instructions_over_shipped": ir / base_ir,
        }));
    }
    let summary = json!({
        "quick": quick,
        "wrk": format!("wrk -t1 -c64 -d{secs}s --latency, {rounds} rounds interleaved, medians"),
        "callgrind": format!("valgrind --tool=callgrind --instr-atstart=no; callgrind_control --instr=on; h2load --h1 -n {counted} -c 16; --instr=off"),
        "rows": rows,
    });
    let mut md = String::from(
        "| Pingora setting (bare Pingora, one worker) | req/s | ×shipped | p99 ms | ×shipped | instructions/request | ×shipped |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in summary["rows"].as_array().unwrap() {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.3} |\n",
            r["setting"].as_str().unwrap_or(""),
            f("rps"),
            f("rps_over_shipped"),
            f("p99_ms"),
            f("p99_over_shipped"),
            f("instructions_per_request"),
            f("instructions_over_shipped"),
        ));
    }
    md.push_str(&format!(
        "\n{}; {}.{}\n",
        summary["wrk"].as_str().unwrap_or(""),
        summary["callgrind"].as_str().unwrap_or(""),
        if quick {
            " A --quick run: not the result."
        } else {
            ""
        },
    ));
    (summary, md)
}
