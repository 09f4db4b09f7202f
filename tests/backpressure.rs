//! The adaptive window against a real Prometheus scraping a real endpoint
//! whose gauge the test moves: emergency shrinks the window and refuses the
//! excess, a clear signal under load grows it back, a dead Prometheus leaves
//! the gateway serving, and the queue admits waiters as slots free.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn set_load(up: &Upstream, v: f64) {
    let r = reqwest::get(format!("http://{}/__set?load={v}", up.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn state(gw: &Gateway) -> serde_json::Value {
    reqwest::get(gw.admin_url("/api/v1/backpressure"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_until<F: Fn(&serde_json::Value) -> bool>(
    gw: &Gateway,
    what: &str,
    secs: u64,
    f: F,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = state(gw).await;
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn backpressure_toml(prom: &str, extra: &str) -> String {
    format!(
        "[backpressure]\nenabled = true\nprometheus_url = \"{prom}\"\ninterval = \"300ms\"\nmin_window = 2\nmax_window = 20\n{extra}\n[[backpressure.queries]]\nname = \"load\"\nquery = \"demo_load\"\nwarning = 0.5\nemergency = 0.8\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_follows_the_signal() {
    let up = Upstream::start("a");
    let prom = Prometheus::start(&[up.addr], "500ms");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + &backpressure_toml(&prom.url(), "");
    let gw = Gateway::start("", &rest);

    // Emergency: the window drops to its floor within a few intervals.
    set_load(&up, 0.9).await;
    let s = wait_until(&gw, "window at min", 20, |s| s["window"] == 2).await;
    assert_eq!(s["signals"][0]["state"], "emergency", "{s}");
    assert_eq!(s["signals"][0]["value"], 0.9);

    // The excess is refused with 503 backpressure and Retry-After.
    let results = burst(&gw.url("/x?delay_ms=1000"), 6).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        2,
        "{results:?}"
    );
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(refused.len(), 4, "{results:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.1 == "backpressure" && r.2.is_some()),
        "{results:?}"
    );

    // Clear signal under load: the window grows back.
    set_load(&up, 0.1).await;
    wait_until(&gw, "signal clear", 20, |s| {
        s["signals"][0]["state"] == "ok"
    })
    .await;
    let stop = Instant::now() + Duration::from_secs(15);
    let url = gw.url("/x?delay_ms=30");
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            while Instant::now() < stop {
                let _ = c.get(&url).send().await;
            }
        }));
    }
    let s = wait_until(&gw, "window grows back", 15, |s| {
        s["window"].as_u64().unwrap() > 4
    })
    .await;
    assert!(s["growing"].as_bool().unwrap(), "{s}");
    for w in workers {
        w.abort();
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("floodgate_backpressure_window{scope=\"global\"}"),
        "{m}"
    );
    assert!(
        m.contains("floodgate_backpressure_query_value{query=\"load\",scope=\"global\"} 0.1"),
        "{m}"
    );
    let refusals = metric(
        &m,
        "floodgate_requests_total{outcome=\"backpressure\",route=\"main\"}",
    );
    assert!(refusals >= 4.0, "{m}");
}

/// An https Prometheus behind basic auth, its CA given by file and a
/// tenant header sent along: the window follows its signal; a wrong
/// password is an error the admin API names, and the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_over_https_with_basic_auth() {
    let up = Upstream::start("a");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (cert, key) = ca.issue(dir.path(), "prom", &["localhost", "127.0.0.1"]);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  floodgate: {hash}\n",
        cert.display(),
        key.display()
    );
    let prom = Prometheus::start_with_web(&[up.addr], "500ms", &web);
    let auth = format!(
        "prometheus_username = \"floodgate\"\nprometheus_password_env = \"PROM_PW\"\nprometheus_ca_file = \"{}\"\nprometheus_headers = {{ \"X-Scope-OrgID\" = \"tenant-a\" }}\n",
        ca.ca_file.display()
    );
    let url = format!("https://localhost:{}/", prom.addr.port());
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + &backpressure_toml(&url, &auth);
    let gw = Gateway::start_full("", &rest, &[], &[("PROM_PW", "s3cret")]);
    set_load(&up, 0.9).await;
    let s = wait_until(&gw, "window at min", 20, |s| s["window"] == 2).await;
    assert_eq!(s["signals"][0]["value"], 0.9, "{s}");

    let wrong = Gateway::start_full("", &rest, &[], &[("PROM_PW", "nope")]);
    let s = wait_until(&wrong, "an authentication error", 20, |s| {
        s["signals"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("401"))
    })
    .await;
    assert_eq!(s["signals"][0]["value"], serde_json::Value::Null, "{s}");
    let r = client().get(wrong.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !wrong.log().contains("nope"),
        "the password is never logged"
    );
}

#[tokio::test]
async fn prometheus_down_keeps_the_gateway_serving() {
    let up = Upstream::start("a");
    let mut prom = Prometheus::start(&[up.addr], "500ms");
    let rest = upstream_toml("api", &[up.addr], "")
        + &route_toml("main", "/", "api")
        + &backpressure_toml(&prom.url(), "stale_after = \"1s\"\non_stale = \"hold\"");
    let gw = Gateway::start("", &rest);
    wait_until(&gw, "first reading", 20, |s| {
        s["signals"][0]["state"] == "ok"
    })
    .await;
    prom.kill();
    let c = client();
    for _ in 0..5 {
        let (status, _, _) = get_json(&c, &gw.url("/x")).await;
        assert_eq!(status, 200);
    }
    let s = wait_until(&gw, "stale", 20, |s| s["signals"][0]["state"] == "stale").await;
    assert!(
        s["signals"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{s}"
    );
    assert_eq!(s["window"], 20, "hold keeps the window");
    let m = gw.metrics().await;
    let errors = metric(
        &m,
        "floodgate_backpressure_monitor_errors_total{query=\"load\",scope=\"global\"}",
    );
    assert!(errors >= 1.0, "{m}");
    let (status, _, _) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_admits_waiters_and_times_out_the_rest() {
    let up = Upstream::start("a");
    let other = Upstream::start("b");
    // A per-upstream window of 2 with a queue of 2; no queries needed.
    let rest = upstream_toml(
        "api",
        &[up.addr],
        "[upstreams.backpressure]\nmin_window = 2\nmax_window = 2\nqueue_timeout = \"5s\"\nmax_queue = 2",
    ) + &upstream_toml("other", &[other.addr], "")
        + &route_toml("main", "/", "api")
        + &route_toml("other", "/other", "other");
    let gw = Gateway::start("", &rest);
    let c = client();
    let slow = {
        let url = gw.url("/x?delay_ms=1000");
        let c = c.clone();
        move || {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r = c.get(url).send().await.unwrap();
                (r.status().as_u16(), started.elapsed())
            })
        }
    };
    let first: Vec<_> = (0..2).map(|_| slow()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued: Vec<_> = (0..2).map(|_| slow()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = state(&gw).await;
    assert_eq!(s["upstreams"]["api"]["queue_length"], 2, "{s}");
    // Queue full: refused at once.
    let (status, _, v) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (503, "backpressure")
    );
    // Another upstream is not throttled by this one's window.
    let (status, _, _) = get_json(&c, &gw.url("/other")).await;
    assert_eq!(status, 200);
    for t in first {
        assert_eq!(t.await.unwrap().0, 200);
    }
    for t in queued {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            took >= Duration::from_millis(900),
            "{took:?}: was it queued?"
        );
    }
    drop(gw);

    // A wait that runs out is answered 503.
    let rest = upstream_toml(
        "api",
        &[up.addr],
        "[upstreams.backpressure]\nmin_window = 1\nmax_window = 1\nqueue_timeout = \"300ms\"\nmax_queue = 5",
    ) + &route_toml("main", "/", "api")
        + "[clients]\n[clients.limits.patient]\nmax_wait = \"10s\"\n";
    let gw = Gateway::start("", &rest);
    let hold = {
        let (c, url) = (c.clone(), gw.url("/x?delay_ms=1500"));
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, h, v) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (503, "backpressure")
    );
    assert!(h.contains_key("retry-after"));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // X-Can-Wait from anyone else buys nothing.
    let (status, _, _) = c
        .get(gw.url("/x"))
        .header("x-can-wait", "3s")
        .send()
        .await
        .map(|r| (r.status().as_u16(), (), ()))
        .unwrap();
    assert_eq!(status, 503, "an unprivileged client may not wait longer");
    // From a client allowed to wait, it buys a longer wait: this one
    // outlasts the slow request.
    let r = c
        .get(gw.url("/x"))
        .header("x-can-wait", "3s")
        .header("x-client-id", "patient")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hold.await.unwrap(), 200);
    let s = state(&gw).await;
    assert_eq!(s["upstreams"]["api"]["inflight"], 0, "{s}");
    assert_eq!(s["upstreams"]["api"]["queue_length"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn critical_requests_use_the_reserve_and_skip_jitter() {
    let up = Upstream::start("a");
    let rest = upstream_toml(
        "api",
        &[up.addr],
        "[upstreams.backpressure]\nmin_window = 2\nmax_window = 2\ncritical_reserve = 0.5\njitter = \"200ms\"",
    ) + &route_toml("main", "/", "api")
        + "[clients]\n[clients.limits.ops]\nallow_criticality = true\n";
    let gw = Gateway::start("", &rest);
    let c = client();
    // One normal request fills the normal share (half of 2).
    let hold = {
        let (c, url) = (c.clone(), gw.url("/x?delay_ms=1500"));
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, v) = get_json(&c, &gw.url("/x")).await;
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (503, "backpressure")
    );
    // Anyone may say "critical"; it counts only from a client allowed to.
    let r = c
        .get(gw.url("/x"))
        .header("x-request-criticality", "critical")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "an unprivileged critical request");
    // An allowed critical one draws on the reserve.
    let r = c
        .get(gw.url("/x"))
        .header("x-request-criticality", "critical")
        .header("x-client-id", "ops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hold.await.unwrap(), 200);

    // Jitter delays normal requests by up to 200 ms each, never critical ones.
    let timed = |critical: bool| {
        let (c, url) = (c.clone(), gw.url("/x"));
        async move {
            let started = Instant::now();
            for _ in 0..10 {
                let mut r = c.get(&url);
                if critical {
                    r = r
                        .header("x-request-criticality", "critical")
                        .header("x-client-id", "ops");
                }
                assert_eq!(r.send().await.unwrap().status(), 200);
            }
            started.elapsed()
        }
    };
    let normal = timed(false).await;
    let critical = timed(true).await;
    // Ten uniform draws in [0, 200 ms] sum to ~1 s; under 300 ms is
    // vanishingly unlikely. Critical requests wait for nothing.
    assert!(normal >= Duration::from_millis(300), "{normal:?}");
    assert!(critical < normal, "{critical:?} vs {normal:?}");
}
