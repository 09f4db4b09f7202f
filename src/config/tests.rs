use super::*;

fn check(src: &str) -> Result<Config, ConfigErrors> {
    parse(src, Path::new("."))
}

fn errors(src: &str) -> Vec<String> {
    match check(src) {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

const MINIMAL: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[[upstreams]]
name = "api"
backends = ["127.0.0.1:8000"]

[[routes]]
path_prefix = "/"
upstream = "api"
"#;

#[test]
fn minimal_config_is_a_plain_reverse_proxy() {
    let c = check(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(c.server.max_header_size, 64 * 1024);
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.upstreams[0].backends.len(), 1);
    assert_eq!(c.routes[0].upstream, 0);
    assert_eq!(c.routes[0].name, "route0");
}

#[test]
fn every_error_is_reported_with_path_and_line() {
    let src = r#"[server]
listen = ["127.0.0.1:99999"]
bogus = 1
grace_period = "10"

[[upstreams]]
name = "api"
backends = []
connect_timeout = "soon"

[[upstreams]]
name = "other"
backends = ["nowhere"]
max_conections = 3

[[routes]]
path_prefix = "/"
upstream = "missing"
"#;
    let e = errors(src);
    let want = [
        "server.listen[0] (line 2): \"127.0.0.1:99999\" is not a valid \"host:port\" address",
        "server.bogus (line 3): unknown key",
        "server.grace_period (line 4): \"10\" needs a unit, e.g. \"250ms\", \"5s\", \"1m\"",
        "upstreams[0].backends (line 8): must list at least one \"host:port\"",
        "upstreams[0].connect_timeout (line 9): \"soon\" is not a duration: unknown time unit \"soon\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
        "upstreams[1].backends[0] (line 13): \"nowhere\" is not a valid \"host:port\" address",
        "upstreams[1].max_conections (line 14): unknown key",
        "routes[0].upstream (line 18): unknown upstream \"missing\" (defined: )",
    ];
    for w in &want[..3] {
        assert!(e.contains(&w.to_string()), "missing {w:?} in {e:#?}");
    }
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[0].backends (line 8)")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[0].connect_timeout (line 9)")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[1].backends[0] (line 13)")),
        "{e:#?}"
    );
    assert!(e.iter().any(|x| x == want[6]), "{e:#?}");
    assert!(
        e.iter()
            .any(|x| x.starts_with("routes[0].upstream (line 18): unknown upstream")),
        "{e:#?}"
    );
    // Sorted by line.
    let lines: Vec<usize> = check(src)
        .unwrap_err()
        .errors
        .iter()
        .filter_map(|e| e.line)
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
fn type_errors_in_several_elements_are_all_reported() {
    let src = r#"
[[upstreams]]
name = 1
backends = ["127.0.0.1:1"]

[[upstreams]]
name = "b"
backends = "127.0.0.1:2"

[[routes]]
upstream = "b"
"#;
    let e = errors(src);
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[0].name (line 3): invalid type")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[1].backends (line 8): invalid type")),
        "{e:#?}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = errors("[server]\nlisten = [\n\n[[routes]]\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("(line "), "{e:?}");
}

#[test]
fn unknown_top_level_table() {
    let src = format!("{MINIMAL}\n[servr]\nthreads = 2\n");
    let e = errors(&src);
    assert_eq!(e, vec!["servr (line 13): unknown key".to_string()]);
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert!(parse_duration("5").is_err());
    assert_eq!(parse_byte_size("64KiB"), Some(65536));
    assert_eq!(parse_byte_size("1MiB"), Some(1 << 20));
    assert_eq!(parse_byte_size("512"), Some(512));
    assert_eq!(parse_byte_size("12 parsecs"), None);
}

#[test]
fn duplicate_names_and_routes() {
    let src = r#"
[[upstreams]]
name = "a"
backends = ["127.0.0.1:1"]
[[upstreams]]
name = "a"
backends = ["127.0.0.1:2"]
[[routes]]
upstream = "a"
[[routes]]
upstream = "a"
"#;
    let e = errors(src);
    assert!(
        e.iter()
            .any(|x| x.starts_with("upstreams[1].name (line 6): duplicate")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|x| x.starts_with("routes[1]") && x.contains("already has")),
        "{e:#?}"
    );
}

#[test]
fn tls_keys_need_tls() {
    let src = MINIMAL.to_string().replace(
        "backends = [\"127.0.0.1:8000\"]",
        "backends = [\"127.0.0.1:8000\"]\nsni = \"api.example.com\"",
    );
    let e = errors(&src);
    assert_eq!(
        e,
        vec!["upstreams[0].sni (line 8): only applies with tls = true".to_string()]
    );
}

/// The client id header goes upstream as the resolved id, so it may not
/// be a name that frames or routes the request or that the gateway writes
/// (found by a hostile-client run: `transfer-encoding` reframed a request
/// with no body as `Transfer-Encoding: ip:127.0.0.1`).
#[test]
fn the_id_header_may_not_be_a_name_http_or_the_gateway_owns() {
    for name in [
        "Transfer-Encoding",
        "content-length",
        "host",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "cookie",
        "authorization",
        "x-request-id",
        "x-forwarded-for",
        "x-real-ip",
    ] {
        let e = errors(&format!("{MINIMAL}\n[clients]\nid_header = \"{name}\"\n"));
        assert!(
            e.len() == 1 && e[0].starts_with("clients.id_header") && e[0].contains("meaning"),
            "{name}: {e:#?}"
        );
    }
    for name in ["x-tenant", "X-Client-ID", "x-api-user"] {
        let src = format!("{MINIMAL}\n[clients]\nid_header = \"{name}\"\n");
        assert!(check(&src).is_ok(), "{name}");
    }
}

#[test]
fn client_tables_that_cannot_be_had_are_check_errors() {
    // A value `--check` once accepted and the gateway then died on.
    let src = format!("{MINIMAL}\n[clients]\nmax_tracked_clients = 9223372036854775807\n");
    let e = errors(&src);
    assert!(
        e.len() == 1
            && e[0].starts_with("clients.max_tracked_clients")
            && e[0].contains("more than max_client_table_memory"),
        "{e:#?}"
    );
    let src = format!("{MINIMAL}\n[clients]\nmax_client_table_memory = \"1TiB\"\n");
    let e = errors(&src);
    assert!(
        e[0].starts_with("clients.max_client_table_memory"),
        "{e:#?}"
    );
    let src = format!("{MINIMAL}\n[clients]\nmax_client_table_memory = \"2GiB\"\nmax_tracked_clients = 10000000\nrefund_on_client_abort = \"none\"\n");
    let c = super::parse(&src, Path::new(".")).unwrap();
    assert_eq!(c.clients.policy.max_tracked_clients, 10_000_000);
    assert_eq!(c.clients.refund_on_client_abort, super::AbortRefund::None);
    let src = format!("{MINIMAL}\n[clients]\nrefund_on_client_abort = \"always\"\n");
    assert!(errors(&src)[0].starts_with("clients.refund_on_client_abort"));
}

/// Found by a hostile-client run: `keepalive_timeout = "0s"` passed, and
/// answers said `Connection: keep-alive` on connections then closed at
/// once. Refused, with its key path, as the other timeouts' zero is.
#[test]
fn a_zero_keepalive_timeout_is_refused() {
    let src = MINIMAL.replace("[server]\n", "[server]\nkeepalive_timeout = \"0s\"\n");
    let e = errors(&src);
    assert!(
        e.iter()
            .any(|e| e.contains("server.keepalive_timeout") && e.contains("must be more than 0")),
        "{e:?}"
    );
    let src = MINIMAL.replace("[server]\n", "[server]\nkeepalive_timeout = \"1ms\"\n");
    assert!(check(&src).is_ok());
}

#[test]
fn a_duration_past_366_days_is_refused_at_its_key() {
    // "500000000years" once passed `--check` and overflowed the window
    // arithmetic at start (found by a hostile run).
    let src =
        format!("{MINIMAL}\n[clients]\nwindow = \"500000000years\"\ndefault = {{ rpm = 1 }}\n");
    let e = errors(&src);
    assert!(
        e.iter()
            .any(|x| x.starts_with("clients.window") && x.contains("at most 366d")),
        "{e:#?}"
    );
    let e = errors(&MINIMAL.replace("listen = [", "header_timeout = \"367d\"\nlisten = ["));
    assert!(
        e.iter().any(|x| x.contains("server.header_timeout")),
        "{e:#?}"
    );
    let ok = check(&format!("{MINIMAL}\n[clients]\nwindow = \"366d\"\n")).unwrap();
    assert_eq!(
        ok.clients.policy.window,
        Duration::from_secs(366 * 24 * 3600)
    );
}

#[test]
fn a_trusted_network_in_ipv4_mapped_form_is_its_ipv4_network() {
    let src = MINIMAL.replace(
        "listen = [",
        "trusted_proxies = [\"::ffff:10.0.0.0/104\", \"::ffff:192.0.2.1\", \"::1\"]\nlisten = [",
    );
    let c = check(&src).unwrap();
    let nets: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.1/32", "::1/128"]);
}
