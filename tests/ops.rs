//! The operations kit, proven: Prometheus config and alert rules (with
//! promtool, unit tests for every alert), the Grafana dashboard (every
//! panel's query returns data from a real Prometheus scraping a real
//! gateway with every limit on), and the docker-compose stack and Dockerfile
//! (every mounted path exists, every port and address matches the configs).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn run(cmd: &Path, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        cmd.display()
    );
    text
}

#[test]
fn promtool_accepts_the_config_and_every_alert_has_a_passing_test() {
    let promtool = require("promtool", "prometheus");
    run(&promtool, &["check", "config", "prometheus/prometheus.yml"]);
    run(&promtool, &["check", "rules", "prometheus/alerts.yml"]);
    let out = run(&promtool, &["test", "rules", "prometheus/alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    let rules = yaml("prometheus/alerts.yml");
    let mut alerts = BTreeSet::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                    "{name} lacks {a}"
                );
            }
            alerts.insert(name);
        }
    }
    let tests = yaml("prometheus/alerts_test.yml");
    let mut firing = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().unwrap() {
            if a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()) {
                firing.insert(a["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(alerts, firing, "every alert needs a test where it fires");
    for want in [
        "FloodgateHighRefusalShare",
        "FloodgateWindowAtMinimum",
        "FloodgateMonitorFailing",
        "FloodgateConfigReloadRejected",
        "FloodgateUpstreamAtConnectionCap",
        "FloodgateNoReadyInstance",
    ] {
        assert!(alerts.contains(want), "missing alert {want}");
    }
}

/// Every query of the dashboard: panel targets, and template variables as
/// the series they list.
fn dashboard_queries() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("grafana/dashboards/floodgate.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = v["query"].as_str().unwrap();
        // label_values(metric, label) → the label's values in the metric.
        let inner = q
            .strip_prefix("label_values(")
            .unwrap()
            .strip_suffix(')')
            .unwrap();
        let (metric, label) = inner.split_once(',').unwrap();
        out.push(format!("count by ({}) ({})", label.trim(), metric.trim()));
    }
    out.into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$route", ".*")
                .replace("$client", ".*")
        })
        .collect()
}

async fn prom_query(prom: &Prometheus, q: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/query", prom.url()))
        .query(&[("query", q)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_data() {
    let up = Upstream::start("demo");
    let prom_port = free_port();
    let prom_addr = format!("http://127.0.0.1:{prom_port}");
    // Every limit on: quotas (one client in shadow mode), host caps,
    // adaptive windows fed by Prometheus; in fleet mode, on a real Redis.
    let redis = common::redis::Redis::start();
    let rest = upstream_toml("api", &[up.addr], "max_connections = 50")
        + &route_toml("main", "/", "api")
        + "[clients]\ndefault = { rpm = 1000, tpm = 100000 }\n[clients.limits.gold]\nrpm = 3\ntpm = 100000\n[clients.limits.trial]\nrpm = 1\nmode = \"shadow\"\n"
        + &format!("[backpressure]\nenabled = true\nprometheus_url = \"{prom_addr}\"\ninterval = \"500ms\"\nmin_window = 5\nmax_window = 100\n[[backpressure.queries]]\nname = \"load\"\nquery = \"max(demo_load)\"\nwarning = 0.5\nemergency = 0.8\n")
        + &format!("[fleet]\nredis_url = \"{}\"\n", redis.url());
    let gw = Gateway::start("", &rest);
    let prom = Prometheus::start_on(prom_port, &[gw.admin, up.addr], "1s");

    // A little traffic: allowed, refused, tokens, shadow refusals, a
    // rejected reload.
    let c = client();
    let traffic = |id: &'static str, n: usize| {
        let (c, url) = (c.clone(), gw.url("/x?usage=7"));
        async move {
            for _ in 0..n {
                let _ = c
                    .get(&url)
                    .header("x-client-id", id)
                    .header("x-token-estimate", "10")
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await;
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let std_conf = std::fs::read_to_string(&gw.conf).unwrap();
    std::fs::write(&gw.conf, "not = [valid").unwrap();
    let r = c.post(gw.admin_url("/api/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    std::fs::write(&gw.conf, std_conf).unwrap();
    let mut pending: Vec<String> = queries;
    while !pending.is_empty() {
        traffic("gold", 5).await;
        traffic("trial", 3).await;
        traffic("someone", 3).await;
        let mut still = Vec::new();
        for q in pending {
            let v = prom_query(&prom, &q).await;
            assert_eq!(v["status"], "success", "{q}: {v}");
            if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                still.push(q);
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no data for:\n{}",
                pending.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[test]
fn compose_stack_matches_the_configs() {
    let dc = require("docker-compose", "docker-compose");
    run(&dc, &["-f", "docker-compose.yml", "config", "-q"]);
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    for name in [
        "floodgate",
        "floodgate-2",
        "demo-upstream",
        "prometheus",
        "grafana",
        "redis",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // Every mounted host path exists.
    for (name, s) in services {
        for v in s["volumes"].as_sequence().into_iter().flatten() {
            let spec = v.as_str().unwrap();
            let host = spec.split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    root().join(host).exists(),
                    "{name:?}: {host} does not exist"
                );
            }
        }
    }
    let ports = |svc: &str| -> BTreeSet<u16> {
        services[svc]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| {
                p.as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let ip = |svc: &str| {
        services[svc]["networks"]["floodgate"]["ipv4_address"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Floodgate's config: the file mounted where the image reads it.
    let fg = &services["floodgate"];
    let mount = fg["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .find(|v| v.contains("/etc/floodgate/floodgate.toml"))
        .unwrap();
    let conf_path = mount.split(':').next().unwrap();
    let conf = floodgate::config::load(&root().join(conf_path)).unwrap();
    let fg_ports = ports("floodgate");
    assert!(
        fg_ports.contains(&conf.server.listen[0].port()),
        "{fg_ports:?}"
    );
    assert!(
        fg_ports.contains(&conf.server.admin_listen.port()),
        "{fg_ports:?}"
    );
    let token_env = conf.server.admin_token_env.clone().unwrap();
    assert!(
        fg["environment"][token_env.as_str()].as_str().is_some(),
        "the admin token variable is not set"
    );
    assert_eq!(
        conf.upstreams[0].backends[0].ip().to_string(),
        ip("demo-upstream")
    );
    assert!(ports("demo-upstream").contains(&conf.upstreams[0].backends[0].port()));
    let bp = conf.backpressure.unwrap();
    assert_eq!(
        bp.prometheus.url.host_str(),
        Some(ip("prometheus").as_str())
    );
    assert!(ports("prometheus").contains(&bp.prometheus.url.port_or_known_default().unwrap()));

    // Prometheus scrapes what the stack runs, and loads the rules.
    let prom = yaml("prometheus/prometheus.yml");
    let targets: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["static_configs"][0]["targets"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
        })
        .collect();
    assert!(
        targets.contains(&format!("floodgate:{}", conf.server.admin_listen.port())),
        "{targets:?}"
    );
    assert!(
        targets.contains(&format!(
            "demo-upstream:{}",
            conf.upstreams[0].backends[0].port()
        )),
        "{targets:?}"
    );
    assert!(root()
        .join("prometheus")
        .join(prom["rule_files"][0].as_str().unwrap())
        .exists());

    // Grafana's datasource is that Prometheus; the home dashboard is mounted.
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let url = ds["datasources"][0]["url"].as_str().unwrap();
    assert!(
        ports("prometheus")
            .iter()
            .any(|p| url == format!("http://prometheus:{p}")),
        "{url}"
    );
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert!(home.starts_with("/var/lib/grafana/dashboards/"));
    let file = home.rsplit('/').next().unwrap();
    assert!(root().join("grafana/dashboards").join(file).exists());
    assert_eq!(
        services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"].as_str(),
        Some("true")
    );
    assert!(ports("redis").contains(&6379));

    // Fleet mode: both instances run the same config, whose Redis is the
    // stack's, and Prometheus scrapes both.
    let fleet = conf.fleet.as_ref().expect("the stack runs in fleet mode");
    assert_eq!(
        fleet.redis_url.as_deref(),
        Some(format!("redis://{}:6379", ip("redis")).as_str())
    );
    let second = &services["floodgate-2"];
    assert!(second["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap() == mount));
    assert!(targets.contains(&format!("floodgate-2:{}", conf.server.admin_listen.port())));
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let froms = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage: {froms} FROM lines");
    assert!(text.contains("cmake"), "the build stage installs cmake");
    assert!(text.contains("--release"), "a release build");
    let user = lines.iter().rev().find(|l| l.starts_with("USER ")).unwrap();
    assert_ne!(user.trim_start_matches("USER ").trim(), "root");
    assert!(
        text.contains("HEALTHCHECK") && text.contains("\"floodgate\", \"health\""),
        "HEALTHCHECK uses floodgate health"
    );
    assert!(
        text.contains("/etc/floodgate/floodgate.toml"),
        "documented config path"
    );
    let expose: BTreeSet<u16> = lines
        .iter()
        .filter(|l| l.starts_with("EXPOSE "))
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|p| p.parse::<u16>().unwrap())
        })
        .collect();
    let conf = floodgate::config::load(&root().join("conf/docker.toml")).unwrap();
    assert!(
        expose.contains(&conf.server.listen[0].port())
            && expose.contains(&conf.server.admin_listen.port())
            && conf
                .server
                .grpc_listen
                .is_some_and(|g| expose.contains(&g.port())),
        "{expose:?}"
    );
    // What the build needs besides the sources: the build script and the
    // proto it compiles, the vendored crates `[patch.crates-io]` points to.
    for needed in ["build.rs", "proto", "vendor", "src", "tools"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY ") && l.split_whitespace().any(|w| w == needed)),
            "the build stage does not copy {needed}"
        );
    }
    // Everything the build stage copies exists.
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} missing");
        }
    }
}
