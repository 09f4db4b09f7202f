//! Test harness: real processes on ephemeral loopback ports.
//!
//! Every server a test talks to is a real one: the `floodgate` binary under
//! test, and upstreams started as `floodgate-demo` processes (so a
//! test can kill one and every connection to it dies with it).

// A harness fails the test that uses it, with the reason: `expect` is how.
#![allow(clippy::expect_used)]
#![allow(dead_code)]

pub mod redis;

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_floodgate");

/// The demo upstream binary of the tools crate, built beside `floodgate`
/// (`cargo build --workspace`, which `scripts/test` runs first).
pub fn demo_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("floodgate-demo");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`; scripts/test does)",
        p.display()
    );
    p
}

/// A port nothing listens on right now, and never handed out before in
/// this test process (the OS may give a just-freed port to the next bind,
/// and two listeners of one gateway must not get the same one).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A child process killed when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        Self::spawn_env(args, &[], log)
    }

    pub fn spawn_env(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Proc {
        Self::spawn_bin(Path::new(BIN), args, env, log)
    }

    pub fn spawn_bin(bin: &Path, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Proc {
        let err = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log file");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn floodgate");
        Proc { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (e.g. "TERM", "QUIT", "HUP").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_for_port(addr: SocketAddr, proc: &mut Proc, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Some(status) = proc.exited() {
            panic!("{what} exited with {status}:\n{}", proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{what} did not listen on {addr} within 30s:\n{}",
        proc.log_text()
    );
}

/// A `floodgate-demo` process (the demo upstream).
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub proc: Proc,
    dir: tempfile::TempDir,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Self::start_on(free_port(), name, None)
    }

    pub fn start_tls(name: &str, cert: &Path, key: &Path) -> Upstream {
        Self::start_on(free_port(), name, Some((cert.to_owned(), key.to_owned())))
    }

    pub fn start_on(port: u16, name: &str, tls: Option<(PathBuf, PathBuf)>) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listen = addr.to_string();
        let mut args = vec!["--listen", &listen, "--name", name];
        let (c, k);
        if let Some((cert, key)) = &tls {
            c = cert.display().to_string();
            k = key.display().to_string();
            args.extend(["--tls-cert", &c, "--tls-key", &k]);
        }
        let mut proc = Proc::spawn_bin(&demo_bin(), &args, &[], dir.path().join("upstream.log"));
        wait_for_port(addr, &mut proc, "demo upstream");
        Upstream {
            addr,
            name: name.into(),
            proc,
            dir,
            tls,
        }
    }

    /// Kills the process: every connection to it dies.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        let again = Upstream::start_on(self.addr.port(), &self.name, self.tls.clone());
        *self = again;
    }
}

/// A `floodgate` gateway process with its own config file.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
}

impl Gateway {
    /// Starts a gateway whose `[server]` table gets `listen`, `admin_listen`
    /// and `threads = 1` from the harness, followed by `server_extra`; the
    /// rest of the file is `rest`.
    pub fn start(server_extra: &str, rest: &str) -> Gateway {
        Self::start_with_args(server_extra, rest, &[])
    }

    pub fn start_with_args(server_extra: &str, rest: &str, args: &[&str]) -> Gateway {
        Self::start_full(server_extra, rest, args, &[])
    }

    pub fn start_full(
        server_extra: &str,
        rest: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::start_at(addr, server_extra, rest, args, env)
    }

    /// [`Self::start_full`], its proxy listening on `addr` (e.g. an
    /// IPv4-mapped IPv6 address, where IPv4 clients arrive as
    /// `::ffff:a.b.c.d`).
    pub fn start_at(
        addr: SocketAddr,
        server_extra: &str,
        rest: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let conf = dir.path().join("floodgate.toml");
        let mut gw = Gateway {
            addr,
            admin,
            proc: Proc::spawn(&["--version"], dir.path().join("version.log")),
            dir,
            conf,
        };
        gw.write_config(server_extra, rest);
        gw.proc = gw.spawn(args, env);
        gw
    }

    /// Writes the config file (same listeners) without reloading anything.
    pub fn write_config(&self, server_extra: &str, rest: &str) {
        std::fs::write(&self.conf, self.config_text(server_extra, rest)).expect("write config");
    }

    /// The text `write_config` writes.
    pub fn config_text(&self, server_extra: &str, rest: &str) -> String {
        let (addr, admin) = (self.addr, self.admin);
        let grace = if server_extra.contains("grace_period") {
            ""
        } else {
            "grace_period = \"1s\"\n"
        };
        format!(
            "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = 1\n{grace}{server_extra}\n\n{rest}\n"
        )
    }

    /// Starts another gateway process on this config (e.g. `--upgrade`).
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let conf_s = self.conf.display().to_string();
        let mut all = vec!["--conf", conf_s.as_str()];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn_env(&all, env, self.dir.path().join("gateway.log"));
        wait_for_port(self.admin, &mut proc, "floodgate admin");
        wait_for_port(self.addr, &mut proc, "floodgate proxy");
        proc
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The metrics once `done` holds for them, or the last scrape after
    /// 5 s: a request is counted in its logging phase, which runs just
    /// after its answer is sent, so on a loaded machine a scrape right
    /// after the answer can come first (a CI-like run with both cores busy
    /// read 5 refusals of 6).
    pub async fn metrics_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if done(&m) || std::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An `[[upstreams]]` + `[[routes]]` pair sending everything to `backends`.
pub fn upstream_toml(name: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// One upstream, `api`, at `up`, and one route, `main`, sending
/// everything to it: the config most tests run.
pub fn one_route(up: &Upstream) -> String {
    upstream_toml("api", &[up.addr], "") + &route_toml("main", "/", "api")
}

pub fn route_toml(name: &str, prefix: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n"
    )
}

/// A client that never pools, so each request is its own connection choice.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// GET `url`, returning status, headers and the body parsed as JSON.
pub async fn get_json(
    c: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

/// Fires `n` concurrent GETs; returns the statuses and `error` codes.
pub async fn burst(url: &str, n: usize) -> Vec<(u16, String, Option<String>)> {
    let c = client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_string());
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                (status, v["error"].as_str().unwrap_or("").to_string(), retry)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The value of the first metric line starting with `prefix` (0 if none).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of `family` whose labels include `label`
/// (`client="t"`).
pub fn metric_sum(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET `url` with `c` and parse the body as JSON.
pub async fn json_at(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON body")
}

/// A CA and certificates it signs, written to files in `dir`.
pub struct TestCa {
    pub ca_file: PathBuf,
    pub ca_pem: String,
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Floodgate Test CA");
        let key = KeyPair::generate().expect("key");
        let ca = params.self_signed(&key).expect("ca");
        let ca_pem = ca.pem();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write ca");
        TestCa {
            ca_file,
            ca_pem,
            ca,
            key,
        }
    }

    /// Issues a certificate for `names`; returns (cert file, key file).
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, KeyPair};
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca, &self.key).expect("sign");
        let cert_file = dir.join(format!("{stem}.crt"));
        let key_file = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (cert_file, key_file)
    }
}

/// Fails the test with what to install when `cmd` is missing.
pub fn require(cmd: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{cmd}` is not installed: install the Debian package `{package}` (scripts/setup --test does)")
    })
}

/// A real `prometheus` server scraping `targets` every `interval`.
pub struct Prometheus {
    pub addr: SocketAddr,
    pub proc: Option<Child>,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr], interval: &str) -> Prometheus {
        Self::start_on(free_port(), targets, interval)
    }

    pub fn start_on(port: u16, targets: &[SocketAddr], interval: &str) -> Prometheus {
        Self::start_full(port, targets, interval, None)
    }

    /// With a `--web.config.file` (TLS, basic auth): `web` is its YAML.
    pub fn start_with_web(targets: &[SocketAddr], interval: &str, web: &str) -> Prometheus {
        Self::start_full(free_port(), targets, interval, Some(web))
    }

    fn start_full(
        port: u16,
        targets: &[SocketAddr],
        interval: &str,
        web: Option<&str>,
    ) -> Prometheus {
        let bin = require("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = File::create(dir.path().join("prometheus.log")).expect("log");
        let mut cmd = Command::new(bin);
        if let Some(web) = web {
            let f = dir.path().join("web.yml");
            std::fs::write(&f, web).expect("write web.yml");
            cmd.arg(format!("--web.config.file={}", f.display()));
        }
        let child = cmd
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            addr,
            proc: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Prometheus says so in its log once it serves (whatever TLS
            // or auth its web config asks of a client).
            if p.log().contains("Server is ready to receive web requests")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return p;
            }
            if let Some(c) = p.proc.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("prometheus exited with {status}: {}", p.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits, when less than `need` is left of the current `window` (client
/// windows are aligned to the Unix epoch), until the next one starts: a
/// test that asserts exact windowed usage must not straddle a boundary,
/// where the sliding estimate weighs the previous window's counts down
/// (a charge of 900 reads 897 0.2 s into the next window).
pub fn clear_of_window_boundary(window: Duration, need: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64;
    let w = window.as_millis().max(1) as u64;
    let left = w - now % w;
    if left < need.as_millis() as u64 {
        std::thread::sleep(Duration::from_millis(left + 20));
    }
}

/// Runs `floodgate ARG FILE` to its end (`arg` is `--conf` or `--check`) on
/// a config file written from `text`, with the variables `unset` removed
/// from its environment: for configs the gateway must refuse.
pub fn run_on_config(arg: &str, text: &str, unset: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("floodgate.toml");
    std::fs::write(&conf, text).expect("write the config");
    let mut cmd = Command::new(BIN);
    cmd.arg(arg).arg(&conf);
    for v in unset {
        cmd.env_remove(v);
    }
    cmd.output().expect("run floodgate")
}

/// Writes `raw` in one write and reads until the server closes.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1 answer's head, lowercased for case-blind checks of its
/// fields, and its body (empty when the text has no blank line).
pub fn answer_parts(text: &str) -> (String, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (head.to_ascii_lowercase(), body)
}

/// Reads one HTTP/1 answer from `s`: its header, the blank line, and a
/// body of its `Content-Length` (none without one), as text. Fails if
/// the connection closes first.
pub fn read_answer(s: &mut TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]);
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + len {
            return String::from_utf8_lossy(&got).into_owned();
        }
    }
}
