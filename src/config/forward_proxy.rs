//! `[forward_proxy]`: the forward proxy's listener, caps and destination policy.

use std::net::SocketAddr;

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

pub(super) fn validate_forward_proxy(
    f: RawForwardProxy,
    d: &mut Diagnostics<'_>,
) -> Option<Option<ForwardProxyConfig>> {
    use crate::limits::destinations::{DestinationPolicy, HostRule};
    let p = KeyPath::root().key("forward_proxy");
    let listen = match f.listen {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 3128))),
        Some(a) => socket_addr(&a, &p.key("listen"), d),
    };
    let cap = |n: i64, path: &KeyPath, d: &mut Diagnostics<'_>| {
        if n < 0 {
            d.error(path, "must be >= 0");
            return None;
        }
        Some(n as u64)
    };
    let default_max_connections = match f.default_max_connections {
        None => Some(25),
        Some(n) => cap(n, &p.key("default_max_connections"), d),
    };
    let mut host_limits = std::collections::BTreeMap::new();
    for (h, n) in &f.host_limits {
        let hp = p.key("host_limits").key(h);
        if h.is_empty() || h.contains(['/', ' ']) {
            d.error(
                &hp,
                "must be a host, or host:port for ports other than 80 and 443",
            );
        }
        if let Some(n) = cap(*n, &hp, d) {
            host_limits.insert(h.to_ascii_lowercase(), n);
        }
    }
    let explicit = f.allow_hosts.is_some()
        || f.deny_hosts.is_some()
        || f.allow_ports.is_some()
        || f.deny_ports.is_some();
    let rules = |v: Option<Vec<String>>, key: &str, d: &mut Diagnostics<'_>| -> Vec<HostRule> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match HostRule::parse(s) {
                Ok(r) => Some(r),
                Err(e) => {
                    d.error(&p.key(key).index(i), e);
                    None
                }
            })
            .flatten()
            .collect()
    };
    let ports = |v: Option<Vec<i64>>, key: &str, d: &mut Diagnostics<'_>| -> Vec<u16> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match u16::try_from(*n) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    d.error(&p.key(key).index(i), "must be a port between 1 and 65535");
                    None
                }
            })
            .collect()
    };
    let policy = DestinationPolicy {
        allow_hosts: rules(f.allow_hosts, "allow_hosts", d),
        deny_hosts: rules(f.deny_hosts, "deny_hosts", d),
        allow_ports: ports(f.allow_ports, "allow_ports", d),
        deny_ports: ports(f.deny_ports, "deny_ports", d),
        explicit,
    };
    let connect_timeout = duration_or(f.connect_timeout, "5s", &p.key("connect_timeout"), d);
    if !f.enabled.unwrap_or(false) {
        return Some(None);
    }
    if let Some(l) = listen {
        if !l.ip().is_loopback() && !explicit {
            d.error(
                &p.key("listen"),
                "a forward proxy on a non-loopback address needs an explicit destination \
                 policy (allow_hosts, deny_hosts, allow_ports or deny_ports): an open proxy \
                 reaches every private network behind it",
            );
        }
    }
    Some(Some(ForwardProxyConfig {
        listen: listen?,
        default_max_connections: default_max_connections?,
        host_limits,
        policy,
        connect_timeout: connect_timeout?,
    }))
}
