//! Live control against the real gateway: every reload trigger, a bad file
//! kept out, counters surviving reloads, zero failures across reloads and a
//! binary upgrade under load, graceful shutdown, the admin API's CRUD, auth
//! and validation, persistence across a restart, and the check endpoint.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn routes_to(up: &Upstream, extra: &str) -> String {
    one_route(up) + extra
}

async fn served_by(gw: &Gateway) -> String {
    let (_, _, v) = get_json(&client(), &gw.url("/who")).await;
    v["server"].as_str().unwrap_or_default().to_string()
}

async fn wait_served_by(gw: &Gateway, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by(gw).await != name {
        assert!(
            Instant::now() < deadline,
            "never served by {name}:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = client()
        .post(gw.admin_url("/api/v1/reload"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn every_reload_trigger_and_a_bad_file_kept_out() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let c = Upstream::start("c");
    let gw = Gateway::start("watch_config = false", &routes_to(&a, ""));
    assert_eq!(served_by(&gw).await, "a");

    // The admin API.
    gw.write_config("watch_config = false", &routes_to(&b, ""));
    let (status, v) = reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "success");
    assert_eq!(v["restart_required"], serde_json::json!([]));
    assert_eq!(served_by(&gw).await, "b");

    // A bad file: 400 with every error, the old config keeps serving.
    gw.write_config(
        "watch_config = false",
        "[[upstreams]]\nname = \"api\"\nbackends = []\n\n[[routes]]\nupstream = \"nope\"\n",
    );
    let (status, v) = reload(&gw).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], "config_rejected");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "upstreams[0].backends" && e["line"] == 10),
        "{v}"
    );
    assert!(
        errors.iter().any(|e| e["path"] == "routes[0].upstream"),
        "{v}"
    );
    assert_eq!(served_by(&gw).await, "b");
    assert!(
        gw.log().contains("config rejected, old config kept"),
        "{}",
        gw.log()
    );

    // SIGHUP (which would kill a plain Pingora process).
    gw.write_config("watch_config = false", &routes_to(&c, ""));
    gw.proc.signal("HUP");
    wait_served_by(&gw, "c").await;

    // A file change, when watched.
    gw.write_config("", &routes_to(&a, ""));
    gw.proc.signal("HUP"); // turns watching on
    wait_served_by(&gw, "a").await;
    gw.write_config("", &routes_to(&b, ""));
    wait_served_by(&gw, "b").await;

    // What needs a restart is reported, the rest applies.
    std::fs::write(
        &gw.conf,
        std::fs::read_to_string(&gw.conf)
            .unwrap()
            .replace("threads = 1", "threads = 2"),
    )
    .unwrap();
    let (status, v) = reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["restart_required"], serde_json::json!(["server.threads"]));

    let m = gw.metrics().await;
    assert!(
        metric(&m, "floodgate_config_reloads_total{result=\"rejected\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "floodgate_config_reloads_total{result=\"success\"}") >= 4.0,
        "{m}"
    );
}

/// The ways a config file gets replaced in production are all seen: an
/// atomic rename over it, and the symlink swap of a Kubernetes ConfigMap
/// (the file is a link into `..data`, which is re-pointed at a new
/// directory; the file's own path never changes).
#[tokio::test]
async fn atomic_rename_and_configmap_symlink_swap_are_seen() {
    use std::os::unix::fs::symlink;
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let c = Upstream::start("c");
    let gw = Gateway::start("", &routes_to(&a, ""));
    assert_eq!(served_by(&gw).await, "a");
    let dir = gw.conf.parent().unwrap().to_path_buf();

    // An editor's atomic save: a temporary file renamed over the config.
    let tmp = dir.join(".floodgate.toml.swp");
    std::fs::write(&tmp, gw.config_text("", &routes_to(&b, ""))).unwrap();
    std::fs::rename(&tmp, &gw.conf).unwrap();
    wait_served_by(&gw, "b").await;

    // The ConfigMap layout: floodgate.toml -> ..data/floodgate.toml,
    // ..data -> ..v1 (same content: nothing reloads).
    let v1 = dir.join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::rename(&gw.conf, v1.join("floodgate.toml")).unwrap();
    symlink("..v1", dir.join("..data")).unwrap();
    symlink("..data/floodgate.toml", &gw.conf).unwrap();
    // The update: a new directory, then ..data re-pointed in one rename.
    let v2 = dir.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("floodgate.toml"),
        gw.config_text("", &routes_to(&c, "")),
    )
    .unwrap();
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_served_by(&gw, "c").await;
    std::fs::remove_dir_all(&v1).unwrap();

    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "floodgate_config_reloads_total{result=\"success\"}"),
        2.0,
        "exactly one reload per change: {m}"
    );
}

#[tokio::test]
async fn counters_survive_a_reload() {
    let a = Upstream::start("a");
    let limits = "[clients]\n[clients.limits.k]\nrpm = 3\n";
    let gw = Gateway::start("watch_config = false", &routes_to(&a, limits));
    let c = client();
    let call = || async {
        c.get(gw.url("/x"))
            .header("x-client-id", "k")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..3 {
        assert_eq!(call().await, 200);
    }
    // Another change, same client: the count carries over.
    gw.write_config(
        "watch_config = false",
        &routes_to(&a, &format!("{limits}tpm = 1000\n")),
    );
    assert_eq!(reload(&gw).await.0, 200);
    assert_eq!(call().await, 429);
}

/// Drives `workers` loops of GETs until `stop`; returns (ok, failed).
fn load(
    url: String,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..workers)
        .map(|_| {
            let (url, ok, failed, stop) = (url.clone(), ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            eprintln!("failed: {}", r.status());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_across_repeated_reloads_under_load() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start("watch_config = false", &routes_to(&a, ""));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed, handles) = load(gw.url("/x?delay_ms=5"), 4, stop.clone());
    for i in 0..20 {
        let up = if i % 2 == 0 { &b } else { &a };
        gw.write_config(
            "watch_config = false",
            &routes_to(up, &format!("# reload {i}\n")),
        );
        let (status, v) = reload(&gw).await;
        assert_eq!(status, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
}

#[tokio::test]
async fn admin_api_crud_auth_validation_and_persistence() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server_extra = format!(
        "admin_token_env = \"FG_TEST_TOKEN\"\nstate_file = \"{}\"",
        state.display()
    );
    let rest = routes_to(
        &a,
        "[clients]\ndefault = { rpm = 100 }\n[clients.limits.filed]\nrpm = 5\n",
    );
    let env = [("FG_TEST_TOKEN", "s3cret")];
    let gw = Gateway::start_full(&server_extra, &rest, &[], &env);
    let c = client();
    let auth = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer s3cret");

    // Reading needs no token; changing does.
    let r = c.get(gw.admin_url("/api/v1/clients")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(gw.admin_url("/api/v1/clients/filed"))
        .body(r#"{"rpm": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(gw.admin_url("/api/v1/reload"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Bad input: 400 with a message.
    for body in [
        r#"{"rpm": -1}"#,
        r#"{"rpm": "many"}"#,
        r#"{"colour": 1}"#,
        "not json",
    ] {
        let r = auth(c.put(gw.admin_url("/api/v1/clients/x")))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }

    // Create through POST, replace through PUT, read back with its source.
    let r = auth(c.post(gw.admin_url("/api/v1/clients")))
        .body(r#"{"id": "newbie", "rpm": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // POST again updates (FlowGuard's create-or-update), with its
    // `client_id`: the record is replaced (an absent rpm is the default's).
    let r = auth(c.post(gw.admin_url("/api/v1/clients")))
        .body(r#"{"client_id": "newbie", "tpm": 50}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["rpm"].as_u64(), v["tpm"].as_u64()),
        (Some(100), Some(50)),
        "{v}"
    );
    let r = auth(c.put(gw.admin_url("/api/v1/clients/filed")))
        .body(r#"{"rpm": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["rpm"].as_u64(), v["source"].as_str()),
        (Some(1), Some("api"))
    );
    let list: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/clients")).await;
    let ids: Vec<_> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            ("filed".into(), "api".into()),
            ("newbie".into(), "api".into())
        ]
    );

    // The override applies to proxied traffic.
    let call = |id: &'static str| {
        let (c, url) = (c.clone(), gw.url("/x"));
        async move {
            c.get(url)
                .header("x-client-id", id)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    clear_of_window_boundary(Duration::from_secs(60), Duration::from_secs(5)); // exact counts
    assert_eq!(call("filed").await, 200);
    assert_eq!(call("filed").await, 429);

    // Stats.
    let s: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/clients/filed/stats")).await;
    assert_eq!(s["stats"]["requests"], 1, "{s}");
    assert_eq!(s["stats"]["refusals"]["rpm_exceeded"], 1, "{s}");
    assert_eq!(s["usage"]["requests_used"], 1, "{s}");
    // Counted when the request's logging phase ends, just after the answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/stats")).await;
        if s["by_outcome"]["rpm_exceeded"] == 1 {
            assert_eq!(s["clients"]["filed"]["requests"], 1, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reload keeps API overrides.
    assert_eq!(
        auth(c.post(gw.admin_url("/api/v1/reload")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let v: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/clients/filed")).await;
    assert_eq!(v["source"], "api");

    // Host caps set through the API persist too.
    let host = a.addr.to_string();
    let r = auth(c.put(gw.admin_url(&format!("/api/v1/hosts/{host}"))))
        .body(r#"{"max_connections": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["clients"]["filed"]["rpm"], 1, "{saved}");
    assert_eq!(saved["hosts"][host.as_str()], 7, "{saved}");

    // A restart keeps them.
    let conf = gw.conf.clone();
    let (addr, admin) = (gw.addr, gw.admin);
    let mut gw = gw;
    gw.proc.kill();
    gw.proc = gw.spawn(&[], &env);
    let _ = (conf, addr, admin);
    // A fresh client: the old one's pooled connections died with the process.
    let c = client();
    let auth = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer s3cret");
    let v: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/clients/filed")).await;
    assert_eq!(
        (v["rpm"].as_u64(), v["source"].as_str()),
        (Some(1), Some("api")),
        "{v}"
    );
    let v: serde_json::Value = json_at(&c, &gw.admin_url(&format!("/api/v1/hosts/{host}"))).await;
    assert_eq!(v["max_connections"], 7, "{v}");

    // DELETE falls back to the file's value.
    let r = auth(c.delete(gw.admin_url("/api/v1/clients/filed")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = json_at(&c, &gw.admin_url("/api/v1/clients/filed")).await;
    assert_eq!(
        (v["rpm"].as_u64(), v["source"].as_str()),
        (Some(5), Some("file"))
    );
    let r = auth(c.delete(gw.admin_url("/api/v1/clients/newbie")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.admin_url("/api/v1/clients/newbie"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn a_public_admin_endpoint_needs_a_token() {
    let out = run_on_config(
        "--conf",
        &format!("[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"0.0.0.0:{}\"\n[[upstreams]]\nname = \"a\"\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"a\"\n", free_port(), free_port()),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a loopback address: set server.admin_token_env"),
        "{err}"
    );
}

#[tokio::test]
async fn the_check_endpoint_answers_like_proxied_traffic() {
    let a = Upstream::start("a");
    let gw = Gateway::start(
        "",
        &routes_to(&a, "[clients]\ndefault = { rpm = 2, tpm = 100 }\n"),
    );
    let c = client();
    let check = |body: &'static str| {
        let (c, url) = (c.clone(), gw.admin_url("/api/v1/ratelimit/caller-1/check"));
        async move {
            let r = c.post(url).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let h = r.headers().clone();
            (status, h, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    clear_of_window_boundary(Duration::from_secs(60), Duration::from_secs(5)); // exact counts
    let (s, h, v) = check(r#"{"tokens": 30}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(
        (v["limit"].as_u64(), v["remaining"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert!(v["reset_after_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(h["x-ratelimit-limit"], "2");
    let (s, _, v) = check(r#"{"tokens": 30}"#).await;
    assert_eq!((s, v["allowed"].as_bool()), (200, Some(true)));
    let (s, h, v) = check(r#"{"tokens": 1}"#).await;
    assert_eq!((s, v["allowed"].as_bool()), (429, Some(false)), "{v}");
    assert!(h.contains_key("retry-after"));
    assert_eq!(v["remaining"], 0);
    // The same client proxied is refused too: one quota.
    let r = c
        .get(gw.url("/x"))
        .header("x-client-id", "caller-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let (s, _, v) = check(r#"{"tokens": "x"}"#).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_load_drops_nothing() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let server_extra = format!(
        "upgrade_sock = \"{}\"\ngrace_period = \"2s\"",
        sock.display()
    );
    let mut gw = Gateway::start(&server_extra, &routes_to(&a, ""));
    gw.write_config(&server_extra, &routes_to(&a, ""));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed, handles) = load(gw.url("/x?delay_ms=20"), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process waits for the listeners; SIGQUIT makes the old one
    // hand them over and drain.
    let new_proc = {
        let conf = gw.conf.display().to_string();
        Proc::spawn(
            &["--conf", &conf, "--upgrade"],
            gw.dir.path().join("new.log"),
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.proc.signal("QUIT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.proc.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "old process never exited:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_status = gw.proc.exited();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let (okn, failedn) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(okn > 50, "only {okn} requests");
    assert_eq!(failedn, 0, "{failedn} of {} failed", okn + failedn);
    assert!(old_status.unwrap().success(), "{old_status:?}");
    // The new process serves proxy and admin.
    let (status, _, _) = get_json(&client(), &gw.url("/after")).await;
    assert_eq!(status, 200);
    let r = reqwest::get(gw.admin_url("/ready")).await.unwrap();
    assert_eq!(r.status(), 200);
    gw.proc = new_proc;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let a = Upstream::start("a");
    let mut gw = Gateway::start("grace_period = \"3s\"", &routes_to(&a, ""));
    let slow = {
        let url = gw.url("/x?delay_ms=1500");
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.proc.signal("TERM");
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.proc.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "never exited:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}\n{}", gw.log());
}
