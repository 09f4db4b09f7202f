//! Real Redis servers for the fleet tests: one node, or a three-master
//! Cluster, on ephemeral loopback ports; and a TCP relay that delays every
//! chunk it forwards (a slow network to Redis).

// A harness fails the test that uses it, with the reason: `expect` is how.
#![allow(clippy::expect_used)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require};

/// One `redis-server`, no persistence.
pub struct Redis {
    pub addr: SocketAddr,
    proc: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port(), false)
    }

    fn start_on(port: u16, cluster: bool) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            addr: ([127, 0, 0, 1], port).into(),
            proc: None,
            dir,
            cluster,
        };
        r.restart();
        r
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        let bin = require("redis-server", "redis-server");
        let log = File::create(self.dir.path().join("redis.log")).expect("log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--port",
            &self.addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &self.dir.path().display().to_string(),
        ]);
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{}.conf", self.addr.port()),
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.proc = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "redis not up: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(require("redis-cli", "redis-tools"))
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_on(free_port(), true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new(require("redis-cli", "redis-tools"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.nodes[0]
            .cli(&["cluster", "info"])
            .contains("cluster_state:ok")
        {
            assert!(Instant::now() < deadline, "cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}

/// A TCP relay on loopback that holds every chunk for `delay` before
/// passing it on, both ways (on a thread and runtime of its own).
pub struct SlowRelay {
    pub addr: SocketAddr,
}

impl SlowRelay {
    pub fn start(to: SocketAddr, delay: Duration) -> SlowRelay {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind relay");
                let _ = tx.send(listener.local_addr().expect("addr"));
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::spawn(pipe(cr, sw, delay));
                        tokio::spawn(pipe(sr, cw, delay));
                    });
                }
            });
        });
        SlowRelay {
            addr: rx.recv().expect("relay address"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        tokio::time::sleep(delay).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
