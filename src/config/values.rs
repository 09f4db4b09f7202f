//! Value parsers shared by the section validators. Each records its own
//! error (with the key path) and returns `None` on failure, so that
//! validation goes on and reports every problem.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diag::Diagnostics;
use super::KeyPath;

pub(super) fn required<T>(v: Option<T>, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<T> {
    if v.is_none() {
        d.error(p, "missing required key");
    }
    v
}

pub(super) fn name_ok(n: String, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        d.error(p, "must be 1-64 characters of [A-Za-z0-9_.-]");
        return None;
    }
    Some(n)
}

pub(super) fn positive(n: i64, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<usize> {
    if n <= 0 {
        d.error(p, "must be > 0");
        return None;
    }
    Some(n as usize)
}

pub(super) fn socket_addr(a: &str, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<SocketAddr> {
    match a.parse::<SocketAddr>() {
        Ok(s) => Some(s),
        Err(_) => {
            // A host name is resolved once, at load time (blocking, like
            // the rest of loading: never on an async worker).
            use std::net::ToSocketAddrs;
            #[allow(clippy::disallowed_methods)]
            match a.to_socket_addrs().map(|mut it| it.next()) {
                Ok(Some(s)) if a.contains(':') => Some(s),
                _ => {
                    d.error(p, format!("{a:?} is not a valid \"host:port\" address"));
                    None
                }
            }
        }
    }
}

pub(super) fn ip_net(s: &str, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(crate::limits::destinations::canonical_net(n));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ipnet::IpNet::from(ip.to_canonical()));
    }
    d.error(p, format!("{s:?} is not an IP address or CIDR network"));
    None
}

/// Parses a duration string with a unit: `"250ms"`, `"5s"`, `"1m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() || !t.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{s:?} needs a unit, e.g. \"250ms\", \"5s\", \"1m\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// The longest duration any key takes.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

pub(super) fn duration_or(
    v: Option<String>,
    default: &str,
    p: &KeyPath,
    d: &mut Diagnostics<'_>,
) -> Option<Duration> {
    let s = v.as_deref().unwrap_or(default);
    match parse_duration(s) {
        // Longer is never meant, and the gateway's arithmetic on windows
        // and deadlines (milliseconds in a u64, times a few) must not
        // overflow for any value accepted here.
        Ok(x) if x > MAX_DURATION => {
            d.error(p, format!("{s:?}: must be at most 366d"));
            None
        }
        Ok(x) => Some(x),
        Err(e) => {
            d.error(p, e);
            None
        }
    }
}

pub(super) fn byte_size(v: &toml::Value, p: &KeyPath, d: &mut Diagnostics<'_>) -> Option<usize> {
    match v {
        toml::Value::Integer(n) if *n >= 0 => Some(*n as usize),
        toml::Value::String(s) => match parse_byte_size(s) {
            Some(n) => Some(n),
            None => {
                d.error(
                    p,
                    format!("{s:?} is not a size (e.g. 65536, \"64KiB\", \"1MiB\")"),
                );
                None
            }
        },
        _ => {
            d.error(p, "must be a byte count or a string like \"64KiB\"");
            None
        }
    }
}

/// Parses `"64KiB"`, `"1MiB"`, `"512"`, `"10kb"` into bytes.
pub fn parse_byte_size(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn existing_file(
    f: &str,
    base: &Path,
    p: &KeyPath,
    d: &mut Diagnostics<'_>,
) -> Option<PathBuf> {
    let path = base.join(f);
    if !path.is_file() {
        d.error(p, format!("file {} does not exist", path.display()));
        return None;
    }
    Some(path)
}
