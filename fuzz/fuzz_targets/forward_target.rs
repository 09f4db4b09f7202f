//! The forward proxy's target parsing and destination policy: no panic,
//! and no spelling of a loopback, link-local or unspecified address gets
//! past a policy that denies them.
#![no_main]

use std::sync::OnceLock;

use floodgate::config::Config;
use floodgate::limits::destinations::ip_literal;
use floodgate::proxy::forward::split_authority;
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let src = r#"
[[upstreams]]
name = "api"
backends = ["127.0.0.1:9"]

[[routes]]
name = "main"
path_prefix = "/"
upstream = "api"

[forward_proxy]
enabled = true
deny_hosts = ["127.0.0.0/8", "::1", "169.254.0.0/16", "fe80::/10", "localhost"]
"#;
        floodgate::config::parse(src, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fuzz_target!(|target: &str| {
    let Some((host, port)) = split_authority(target) else {
        return;
    };
    let Some(fp) = config().forward_proxy.as_ref() else {
        return;
    };
    let by_name = fp.policy.check_name(&host, port);
    if let Some(ip) = ip_literal(&host) {
        let ip = ip.to_canonical();
        let forbidden = ip.is_loopback()
            || ip.is_unspecified()
            || match ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.octets()[0] == 0,
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
        if forbidden {
            assert!(by_name.is_err(), "{target:?} ({ip}) got past the policy");
            assert!(fp.policy.check_addr(&host, ip).is_err());
        }
    }
    // Every spelling a standard parser reads as an address is one here too.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        assert_eq!(ip_literal(&host).map(|i| i.to_canonical()), Some(ip.to_canonical()));
    }
});
