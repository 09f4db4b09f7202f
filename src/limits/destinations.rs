//! The forward proxy's destination policy: which hosts, networks and ports
//! a client may reach through it.
//!
//! Deny wins over allow. A name is checked before it is resolved and every
//! address it resolves to is checked again, so a harmless-looking name that
//! resolves into a denied network is refused too.

use std::net::IpAddr;

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

impl HostRule {
    /// Parses `name`, `*.suffix`, an IP address or a CIDR network.
    pub fn parse(s: &str) -> Result<HostRule, String> {
        let t = s.trim().to_ascii_lowercase();
        if let Ok(n) = t.parse::<ipnet::IpNet>() {
            return Ok(HostRule::Net(n));
        }
        if let Ok(ip) = t.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(HostRule::Net(ipnet::IpNet::from(ip)));
        }
        if let Some(suffix) = t.strip_prefix("*.") {
            if valid_name(suffix) {
                return Ok(HostRule::Suffix(format!(".{suffix}")));
            }
        } else if valid_name(&t) {
            return Ok(HostRule::Name(t));
        }
        Err(format!(
            "{s:?} is not a host name, *.suffix pattern, IP address or CIDR network"
        ))
    }

    fn matches_name(&self, host: &str) -> bool {
        match self {
            HostRule::Name(n) => n == host,
            HostRule::Suffix(s) => host.ends_with(s.as_str()),
            HostRule::Net(n) => host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| n.contains(&ip)),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, HostRule::Net(n) if n.contains(&ip))
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
    /// Checks a destination by name and port, before resolving it.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), String> {
        let host = host.to_ascii_lowercase();
        if self.deny_ports.contains(&port)
            || (!self.allow_ports.is_empty() && !self.allow_ports.contains(&port))
        {
            return Err(format!("port {port} is not allowed"));
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

    /// Checks one address `host` resolved to.
    pub fn check_addr(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let host = host.to_ascii_lowercase();
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
/// `host:port` otherwise.
pub fn host_key(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    match port {
        80 | 443 => host,
        p => format!("{host}:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        allow: &[&str],
        deny: &[&str],
        allow_ports: &[u16],
        deny_ports: &[u16],
    ) -> DestinationPolicy {
        DestinationPolicy {
            allow_hosts: allow.iter().map(|s| HostRule::parse(s).unwrap()).collect(),
            deny_hosts: deny.iter().map(|s| HostRule::parse(s).unwrap()).collect(),
            allow_ports: allow_ports.to_vec(),
            deny_ports: deny_ports.to_vec(),
            explicit: true,
        }
    }

    #[test]
    fn rules() {
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
    }
}
