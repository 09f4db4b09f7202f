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
        let mut n = 0;
        let mut num = itoa::Buffer::new();
        for (i, o) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                out.buf[n] = b'.';
                n += 1;
            }
            let d = num.format(o).as_bytes();
            out.buf[n..n + d.len()].copy_from_slice(d);
            n += d.len();
        }
        out.len = n as u8;
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

    /// The id as a header value.
    pub fn value(&self) -> HeaderValue {
        match &self.0 {
            Id::Sent(v) => v.clone(),
            _ => HeaderValue::from_bytes(self.as_bytes()).unwrap_or(HeaderValue::from_static("")),
        }
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in fastrand::u128(..).to_be_bytes().into_iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// The client's `X-Request-Id` when it is well formed (the first well
/// formed one, as the connection guard's refusals take it), else a fresh
/// one.
/// `sent`: the request carries an `X-Request-Id` (see [`super::Carries`]).
pub fn request_id(req: &RequestHeader, sent: bool) -> RequestId {
    let sent = match sent {
        true => req
            .headers
            .get_all(&H_X_REQUEST_ID.0)
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
