//! Who a request is and what it costs, from headers a client controls:
//! the API key, the id header and the token estimate never panic, and an
//! id taken from a header never lands in the `ip:` namespace.
#![no_main]

use std::sync::OnceLock;

use floodgate::config::Config;
use floodgate::limits::clients::ClientPolicies;
use floodgate::proxy::identity::{client_id, token_cost};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

fn setup() -> &'static (Config, ClientPolicies) {
    static SETUP: OnceLock<(Config, ClientPolicies)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let src = r#"
[[upstreams]]
name = "api"
backends = ["127.0.0.1:9"]

[[routes]]
name = "main"
path_prefix = "/"
upstream = "api"

[clients]
missing_id = "ip"
default = { rpm = 10 }
max_client_table_memory = "1MiB"
max_tracked_clients = 1000

[clients.limits.gold]
rpm = 100
api_keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
"#;
        let config = floodgate::config::parse(src, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"));
        let clock = floodgate::limits::clock::ManualClock::new(0);
        let policies = ClientPolicies::build(&config.clients.policy, clock, None)
            .unwrap_or_else(|e| panic!("{e}"));
        (config, policies)
    })
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)| {
    let (id, auth, tokens, tokens2) = input;
    let (config, policies) = setup();
    let Ok(mut req) = RequestHeader::build("GET", b"/", None) else {
        return;
    };
    let c = &config.clients;
    for (name, value) in [
        (c.id_header.clone(), &id),
        (http::header::AUTHORIZATION, &auth),
        (c.token_header.clone(), &tokens),
        (c.token_header.clone(), &tokens2),
    ] {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            let _ = req.append_header(name, v);
        }
    }
    let addr = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    if let Ok(who) = client_id(&req, c, policies, addr) {
        let from_header = req.headers.contains_key(&c.id_header) && !who.by_api_key;
        if from_header {
            assert!(!who.id.starts_with("ip:"), "a header claimed {:?}", who.id);
        }
    }
    let _ = token_cost(&req, &c.token_header, c.default_tokens);
});
