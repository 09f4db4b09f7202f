//! The forward proxy's destination policy: which hosts, networks and ports
//! a client may reach through it.
//!
//! Deny wins over allow. A name is checked before it is resolved, and every
//! address it resolves to is checked again, so a harmless-looking name that
//! resolves into a denied network is refused too. Addresses are judged in
//! canonical form: an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the
//! IPv4 address it maps, so a rule on `127.0.0.0/8` covers it. Addresses
//! that mean "this host" whatever the rules say — unspecified (`0.0.0.0`,
//! `::`, the whole `0.0.0.0/8`) and broadcast — are always refused. Numeric
//! aliases of an address (`2130706433`, `0x7f000001`, `127.1`) are names to
//! this module: the resolver turns them into the address they mean, which
//! is then checked like any other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One host rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRule {
    /// An exact host name (lowercase).
    Name(String),
    /// `*.example.com`: any name under `example.com` (stored as
    /// `.example.com`).
    Suffix(String),
    /// An address or network.
    Net(ipnet::IpNet),
}

/// Named groups of networks a rule may use instead of listing them.
const GROUPS: &[(&str, &[&str])] = &[
    ("loopback", &["127.0.0.0/8", "::1/128"]),
    ("link-local", &["169.254.0.0/16", "fe80::/10"]),
    (
        "private",
        &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
    ),
];

impl HostRule {
    /// Parses `name`, `*.suffix`, an IP address, a CIDR network, or a group
    /// (`loopback`, `link-local`, `private`), which stands for several.
    pub fn parse(s: &str) -> Result<Vec<HostRule>, String> {
        let t = s.trim().to_ascii_lowercase();
        if let Some((_, nets)) = GROUPS.iter().find(|(g, _)| *g == t) {
            return Ok(nets
                .iter()
                .filter_map(|n| n.parse::<ipnet::IpNet>().ok())
                .map(HostRule::Net)
                .collect());
        }
        if let Ok(n) = t.parse::<ipnet::IpNet>() {
            return Ok(vec![HostRule::Net(canonical_net(n))]);
        }
        if let Ok(ip) = t.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![HostRule::Net(ipnet::IpNet::from(ip.to_canonical()))]);
        }
        if let Some(suffix) = t.strip_prefix("*.") {
            if valid_name(suffix) {
                return Ok(vec![HostRule::Suffix(format!(".{suffix}"))]);
            }
        } else if valid_name(&t) {
            return Ok(vec![HostRule::Name(t)]);
        }
        Err(format!(
            "{s:?} is not a host name, *.suffix pattern, IP address, CIDR network or group (loopback, link-local, private)"
        ))
    }

    fn matches_name(&self, host: &str) -> bool {
        match self {
            HostRule::Name(n) => n == host,
            HostRule::Suffix(s) => host.ends_with(s.as_str()),
            HostRule::Net(n) => ip_literal(host).is_some_and(|ip| n.contains(&ip)),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, HostRule::Net(n) if n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 network is the IPv4 network it maps (the gateway
/// sees such a peer or destination in its IPv4 form).
pub fn canonical_net(n: ipnet::IpNet) -> ipnet::IpNet {
    match n {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(n),
            None => n,
        },
        other => other,
    }
}

/// The address a host string names literally (`1.2.3.4`, `::1`, `[::1]`),
/// in canonical form; `None` for a name.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Addresses that reach this host or nowhere, whatever the rules say:
/// unspecified (`0.0.0.0/8`, `::`) and broadcast.
pub fn always_denied(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4 == Ipv4Addr::BROADCAST,
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Allow and deny lists of destination hosts and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Empty: any host not denied.
    pub allow_hosts: Vec<HostRule>,
    pub deny_hosts: Vec<HostRule>,
    /// Empty: any port not denied.
    pub allow_ports: Vec<u16>,
    pub deny_ports: Vec<u16>,
    /// Whether the config stated a policy at all.
    pub explicit: bool,
}

impl DestinationPolicy {
    /// Checks a destination by name (or literal address) and port, before
    /// resolving it.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), String> {
        let host = host.to_ascii_lowercase();
        if self.deny_ports.contains(&port)
            || (!self.allow_ports.is_empty() && !self.allow_ports.contains(&port))
        {
            return Err(format!("port {port} is not allowed"));
        }
        if let Some(ip) = ip_literal(&host) {
            return self.check_addr(&host, ip);
        }
        if self.deny_hosts.iter().any(|r| r.matches_name(&host)) {
            return Err(format!("host {host} is denied"));
        }
        if !self.allow_hosts.is_empty()
            && !self.allow_hosts.iter().any(|r| r.matches_name(&host))
            // A name may still be allowed by the network it resolves into.
            && !self.allow_hosts.iter().any(|r| matches!(r, HostRule::Net(_)))
        {
            return Err(format!("host {host} is not allowed"));
        }
        Ok(())
    }

    /// Checks one address `host` resolved to (in canonical form).
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let host = host.to_ascii_lowercase();
        let ip = ip.to_canonical();
        if always_denied(ip) {
            return Err(format!("host {host} is the unspecified address {ip}"));
        }
        if self.deny_hosts.iter().any(|r| r.matches_ip(ip)) {
            return Err(format!("host {host} resolves to denied address {ip}"));
        }
        if !self.allow_hosts.is_empty()
            && !self.allow_hosts.iter().any(|r| r.matches_name(&host))
            && !self.allow_hosts.iter().any(|r| r.matches_ip(ip))
        {
            return Err(format!("host {host} ({ip}) is not allowed"));
        }
        Ok(())
    }
}

/// The counter key of a destination: `host` for ports 80 and 443,
/// `host:port` otherwise (`[v6]:port` for an IPv6 address).
pub fn host_key(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    let bracketed = host.contains(':') && !host.starts_with('[');
    match (port, bracketed) {
        (80 | 443, _) => host,
        (p, true) => format!("[{host}]:{p}"),
        (p, false) => format!("{host}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(list: &[&str]) -> Vec<HostRule> {
        list.iter()
            .flat_map(|s| HostRule::parse(s).unwrap())
            .collect()
    }

    fn policy(
        allow: &[&str],
        deny: &[&str],
        allow_ports: &[u16],
        deny_ports: &[u16],
    ) -> DestinationPolicy {
        DestinationPolicy {
            allow_hosts: parse_all(allow),
            deny_hosts: parse_all(deny),
            allow_ports: allow_ports.to_vec(),
            deny_ports: deny_ports.to_vec(),
            explicit: true,
        }
    }

    #[test]
    fn names_networks_and_ports() {
        let p = policy(
            &["*.example.com", "api.test", "10.0.0.0/8"],
            &["bad.example.com", "10.9.0.0/16"],
            &[],
            &[25],
        );
        assert!(p.check_name("a.example.com", 443).is_ok());
        assert!(p.check_name("bad.example.com", 443).is_err());
        assert!(p.check_name("API.test", 80).is_ok());
        assert!(p.check_name("a.example.com", 25).is_err());
        assert!(p
            .check_addr("10.1.2.3", "10.1.2.3".parse().unwrap())
            .is_ok());
        assert!(p
            .check_addr("10.9.1.1", "10.9.1.1".parse().unwrap())
            .is_err());
        // A name allowed by nothing but resolving into an allowed network.
        assert!(p
            .check_addr("internal", "10.1.1.1".parse().unwrap())
            .is_ok());
        assert!(p.check_addr("outside", "8.8.8.8".parse().unwrap()).is_err());
        // An allowed name resolving into a denied network.
        assert!(p
            .check_addr("x.example.com", "10.9.9.9".parse().unwrap())
            .is_err());
        let p = policy(&["api.test"], &[], &[443], &[]);
        assert!(p.check_name("other.test", 443).is_err());
        assert!(p.check_name("api.test", 8443).is_err());
        assert!(HostRule::parse("not a host").is_err());
        assert_eq!(host_key("A.com", 443), "a.com");
        assert_eq!(host_key("a.com", 8080), "a.com:8080");
        assert_eq!(host_key("::1", 8080), "[::1]:8080");
    }

    /// The bypasses a hostile client found: every alias of a denied address
    /// is that address.
    #[test]
    fn aliases_of_denied_addresses_are_denied() {
        let p = policy(
            &[],
            &["127.0.0.0/8", "localhost", "169.254.0.0/16", "::1"],
            &[],
            &[],
        );
        for host in [
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "[::ffff:127.0.0.1]",
            "::ffff:7f00:1",
            "[::ffff:7f00:1]",
            "::ffff:169.254.169.254",
            "::",
            "127.0.0.1",
            "::1",
        ] {
            assert!(p.check_name(host, 8080).is_err(), "{host} passed by name");
        }
        // What a resolver makes of "0", "2130706433", "0x7f000001", "127.1":
        for ip in ["0.0.0.0", "127.0.0.1", "::ffff:127.0.0.1", "0.1.2.3"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(p.check_addr("alias", ip).is_err(), "{ip} passed");
        }
        // Unspecified is refused even with no policy at all.
        let open = DestinationPolicy::default();
        assert!(open.check_addr("0", "0.0.0.0".parse().unwrap()).is_err());
        assert!(open.check_name("[::]", 80).is_err());
        assert!(open
            .check_addr("x", "93.184.216.34".parse().unwrap())
            .is_ok());
        // A mapped-IPv6 rule covers the IPv4 address, and groups expand.
        let p = policy(&[], &["::ffff:10.0.0.0/104", "link-local"], &[], &[]);
        assert!(p.check_addr("x", "10.1.1.1".parse().unwrap()).is_err());
        assert!(p.check_addr("x", "fe80::1".parse().unwrap()).is_err());
        assert!(p
            .check_addr("x", "169.254.169.254".parse().unwrap())
            .is_err());
    }
}
