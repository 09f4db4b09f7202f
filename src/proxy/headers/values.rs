//! The header values the gateway makes: request ids and addresses, made
//! on the stack.

use std::net::IpAddr;

use http::header::HeaderValue;
use pingora::http::RequestHeader;

use super::H_X_REQUEST_ID;

/// A short header value made on the stack (a request id, an address).
pub struct Short {
    buf: [u8; 48],
    len: u8,
}

impl AsRef<[u8]> for Short {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl Short {
    /// The text (always ASCII: an id or an address).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_ref()).unwrap_or("")
    }
}

/// An address as text (IPv4 without the formatting machinery, which costs
/// more than the rest of this function).
pub fn ip_text(ip: IpAddr) -> Short {
    use std::io::Write;
    let mut out = Short {
        buf: [0u8; 48],
        len: 0,
    };
    if let IpAddr::V4(v4) = ip {
        // Each octet's digits in place (a copy per octet cost more).
        let mut n = 0;
        for o in v4.octets() {
            if o >= 100 {
                out.buf[n] = b'0' + o / 100;
                n += 1;
            }
            if o >= 10 {
                out.buf[n] = b'0' + o / 10 % 10;
                n += 1;
            }
            out.buf[n] = b'0' + o % 10;
            out.buf[n + 1] = b'.';
            n += 2;
        }
        out.len = (n - 1) as u8;
        return out;
    }
    let mut w = &mut out.buf[..];
    let _ = write!(w, "{ip}");
    out.len = (48 - w.len()) as u8;
    out
}

/// Whether a client's `X-Request-Id` is kept: 1-128 characters of
/// `[A-Za-z0-9._:-]`.
pub fn valid_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// A request's id: 1-128 characters of `[A-Za-z0-9._:-]`, the client's
/// (when well formed) or a fresh one, made once per request. A client's
/// is the value it sent (a clone shares its bytes); a fresh one is made on
/// the stack. The headers that carry it copy its bytes
/// ([`super::add_request`]).
#[derive(Clone, Debug)]
pub struct RequestId(Id);

#[derive(Clone, Debug)]
enum Id {
    /// None yet (a request refused before its header was looked at).
    None,
    Fresh([u8; 32]),
    Sent(HeaderValue),
}

impl RequestId {
    /// The client's id, checked with [`valid_request_id`].
    pub(super) fn sent(v: HeaderValue) -> RequestId {
        RequestId(Id::Sent(v))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Id::None => b"",
            Id::Fresh(b) => b,
            Id::Sent(v) => v.as_bytes(),
        }
    }

    /// The id as text (always ASCII: checked when it was made).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(Id::None)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fresh random request id: 32 hex digits.
pub fn new_request_id() -> String {
    String::from_utf8_lossy(&fresh_id()).into_owned()
}

fn fresh_id() -> [u8; 32] {
    let n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&hex8((n >> (96 - 32 * i)) as u32));
    }
    out
}

/// The eight hex digits (lower case) of `x`, most significant first,
/// without a table: each of its nibbles spread into a byte of a word, then
/// every byte turned into its digit at once.
fn hex8(x: u32) -> [u8; 8] {
    let mut v = u64::from(x);
    v = ((v & 0xffff_0000) << 16) | (v & 0xffff);
    v = ((v & 0x0000_ff00_0000_ff00) << 8) | (v & 0x0000_00ff_0000_00ff);
    v = ((v & 0x00f0_00f0_00f0_00f0) << 4) | (v & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more (no carry crosses a byte).
    let letter = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (v + 0x3030_3030_3030_3030 + letter * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// The client's `X-Request-Id` when it is well formed (the first well
/// formed one, as the connection guard's refusals take it), else a fresh
/// one.
/// `sent`: the request carries an `X-Request-Id` (see [`super::Carries`]).
pub fn request_id(req: &RequestHeader, sent: bool) -> RequestId {
    let sent = match sent {
        true => req
            .headers
            .get_all(H_X_REQUEST_ID.name())
            .iter()
            .find(|v| valid_request_id(v.as_bytes())),
        false => None,
    };
    match sent {
        // A clone of the client's value: checked ASCII by
        // `valid_request_id`, so the id is its bytes.
        Some(v) => RequestId::sent(v.clone()),
        None => RequestId(Id::Fresh(fresh_id())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_addresses_are_written_as_the_formatter_writes_them() {
        let mut some = vec![0, 1, 9, 10, 15, 16, 0x0123_4567, 0x89ab_cdef, u32::MAX];
        some.extend((0..10_000).map(|_| fastrand::u32(..)));
        for x in some {
            assert_eq!(hex8(x), format!("{x:08x}").as_bytes(), "{x:#x}");
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.99.100.255",
            "255.255.255.255",
            "::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(parsed).as_str(), ip);
        }
        for _ in 0..10_000 {
            let ip = IpAddr::from(fastrand::u32(..).to_be_bytes());
            assert_eq!(ip_text(ip).as_str(), ip.to_string());
        }
        let id = fresh_id();
        assert!(id
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
