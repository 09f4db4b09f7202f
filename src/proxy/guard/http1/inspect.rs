//! The look at a request's header block the guard takes before Pingora
//! parses it: where the request ends, and what would make that ambiguous
//! (RFC 9112 §6.3, §3.2, §5).

use std::ops::Range;

use super::lines::{bare_cr, HeadScan, Lines};
use super::target::{bad, check_target, check_target_authority, valid_host};
use crate::limits::{Refusal, RejectReason};

/// Header fields a request may carry (Pingora's own limit).
pub const MAX_HEADERS: usize = 256;

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What the header of a request says about where the request ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the header block, through its blank line.
    pub len: usize,
    pub framing: Framing,
    /// A `CONNECT` request (the forward proxy tunnels it).
    pub connect: bool,
    /// An `Upgrade` request (WebSocket): after the answer, every byte is
    /// the new protocol's.
    pub upgrade: bool,
    /// An HTTP/1.1 request (else HTTP/1.0).
    pub http11: bool,
    /// Its body is JSON (`Content-Type: application/json…`): an LLM route
    /// may estimate from it.
    pub json: bool,
    /// The `Expect: 100-continue` lines, to remove (and, for HTTP/1.1, to
    /// answer) when the body is read here.
    pub expect_continue: Vec<Range<usize>>,
}

/// The length of the header block (through its blank line), searching from
/// `from`; leading empty lines before the request line are skipped, as RFC
/// 9112 §2.2 allows.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let from = from.max(start);
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|i| i + from)
        .find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
}

/// Names the gateway writes upstream itself, which `Connection` may not name
/// (Pingora's protected set).
const PROTECTED: [&[u8]; 4] = [
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
];
/// Options one request's `Connection` may list (Pingora refuses a tenth).
const MAX_CONNECTION_OPTIONS: usize = 9;

/// Whether `b` may appear in a header field name (an RFC 9110 token).
pub(super) fn tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`tchar`] as a table: a name's every byte is looked up (a search of
/// the punctuation list for each `-` cost more than the rest of the check).
const TCHAR: [bool; 256] = alphanumeric_and!(
    b'!' | b'#'
        | b'$'
        | b'%'
        | b'&'
        | b'\''
        | b'*'
        | b'+'
        | b'-'
        | b'.'
        | b'^'
        | b'_'
        | b'`'
        | b'|'
        | b'~'
);

/// Looks at the header block `buf[..len]`: the request line, every field
/// name and value, and the fields that frame the body. Refuses what is
/// malformed or ambiguous: obsolete line folding, control characters,
/// more than [`MAX_HEADERS`] fields, `Content-Length` values that disagree
/// or are not numbers, transfer codings that are not `chunked` once and
/// last (and, with it, any other coding: 501),
/// framing fields spelt with `_`, and an HTTP/1.1 request without exactly
/// one valid `Host`.
pub fn inspect(buf: &[u8], len: usize) -> Result<Head, Refusal> {
    let start = buf[..len]
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(len);
    if start > 0 && bare_cr(&buf[..=start.min(len.saturating_sub(1))]) {
        return Err(bad(BARE_CR_BEFORE));
    }
    inspect_lines(len, Lines::found(buf, start, len))
}

/// Pingora answered it with a plain-text 400 (found by a hostile-client
/// run); a CR alone is no empty line (RFC 9112 §2.2).
const BARE_CR_BEFORE: &str = "a CR without LF before the request line";

/// [`inspect`] of the header block a [`HeadScan`] found (its lines' ends
/// and control characters known: searched for once).
pub fn inspect_scanned(buf: &[u8], len: usize, scan: &HeadScan) -> Result<Head, Refusal> {
    if scan.bare_cr_before {
        return Err(bad(BARE_CR_BEFORE));
    }
    inspect_lines(len, scan.lines(buf, len))
}

fn inspect_lines(len: usize, mut lines: Lines<'_>) -> Result<Head, Refusal> {
    let Some((line, _, control)) = lines.next() else {
        return Err(bad("empty request"));
    };
    // Pingora took a control character or a tab in the target and sent
    // it upstream percent-encoded (found by a hostile-client run).
    if control {
        return Err(bad("control characters in the request line"));
    }
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    if parts.next().is_some() || method.is_empty() || target.is_empty() {
        return Err(bad("malformed request line"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(bad("only HTTP/1.0 and HTTP/1.1 are served here")),
    };
    if !method.iter().all(|b| tchar(*b)) {
        return Err(bad("malformed method"));
    }
    let mut fields = 0usize;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    // A transfer coding other than `chunked` (which cannot be decoded here).
    let mut other_coding = false;
    let mut transfer_encoding = false;
    let mut hosts = 0usize;
    let mut host_ok = true;
    let mut host: Option<&[u8]> = None;
    let mut expect_continue = Vec::new();
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut options = 0usize;
    let mut json = false;
    for (line, range, control) in lines {
        if line.is_empty() {
            break;
        }
        fields += 1;
        if fields > MAX_HEADERS {
            return Err(Refusal::new(
                RejectReason::HeadersTooLarge,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err(bad("obsolete line folding in a header"));
        }
        // The name is the line's bytes up to its first that is no token
        // character, which must be the colon (a `:` is none, so it is the
        // line's first): one look at each byte of the name, and no search.
        let colon = line.iter().position(|b| !tchar(*b)).unwrap_or(line.len());
        if colon == 0 || line.get(colon) != Some(&b':') {
            return Err(match memchr::memchr(b':', line) {
                None => bad("a header line without a colon"),
                Some(_) => bad("malformed header name"),
            });
        }
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        // A control character in the line is one in its value: its name
        // is token characters and its colon, and only spaces and tabs
        // are trimmed.
        if control {
            return Err(bad("control characters in a header value"));
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        // `_` spellings of framing fields: some servers read them as the
        // real thing, which would let the two sides disagree on framing.
        let spelt = |n: &[u8]| {
            name.len() == n.len()
                && name
                    .iter()
                    .zip(n)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*a == b'_' && *b == b'-'))
        };
        if (spelt(b"content-length") && !is(b"content-length"))
            || (spelt(b"transfer-encoding") && !is(b"transfer-encoding"))
        {
            return Err(bad(format!(
                "ambiguous header name {}",
                String::from_utf8_lossy(name)
            )));
        }
        if is(b"content-length") {
            // One number a line (Pingora refuses the list form); equal
            // repeated lines are one value, sent upstream once.
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
                return Err(bad("Content-Length is not a number"));
            }
            let n: u64 = value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(bad("Content-Length values disagree"));
            }
            length = Some(n);
        } else if is(b"transfer-encoding") {
            if !http11 {
                return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            // Every line's codings are one list (RFC 9110 §5.3), empty
            // elements and lines ignored (§5.6.1, as Pingora reads them):
            // chunked last and once (RFC 9112 §6.1), after any others.
            transfer_encoding = true;
            for coding in value.split(|b| *b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                if chunked == Some(true) {
                    return Err(bad("the body's transfer coding must end in chunked"));
                }
                let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                other_coding |= !is_chunked;
                chunked = Some(is_chunked);
            }
        } else if is(b"host") {
            hosts += 1;
            host_ok &= valid_host(value);
            host = Some(value);
        } else if is(b"expect") && value.eq_ignore_ascii_case(b"100-continue") {
            // Removed either way; an HTTP/1.0 client is never asked to
            // wait (RFC 9110 §10.1.1), nor is its upstream asked for it.
            expect_continue.push(range);
        } else if is(b"upgrade") {
            upgrade = true;
        } else if is(b"connection") {
            // Pingora refuses these too, but only once the request has been
            // admitted, and as "the request could not be read".
            for option in value.split(|b| *b == b',').map(trim) {
                if option.is_empty() {
                    continue;
                }
                options += 1;
                if options > MAX_CONNECTION_OPTIONS {
                    return Err(bad(format!(
                        "more than {MAX_CONNECTION_OPTIONS} options in Connection"
                    )));
                }
                if !option.iter().all(|b| tchar(*b)) {
                    return Err(bad("a malformed option in Connection"));
                }
                if let Some(p) = PROTECTED.iter().find(|p| option.eq_ignore_ascii_case(p)) {
                    return Err(bad(format!(
                        "Connection may not name {}: the gateway sets it",
                        String::from_utf8_lossy(p)
                    )));
                }
                connection_upgrade |= option.eq_ignore_ascii_case(b"upgrade");
            }
        } else if is(b"content-type") {
            json = value.len() >= 16 && value[..16].eq_ignore_ascii_case(b"application/json");
        }
    }
    // `Transfer-Encoding` without a coding frames nothing.
    if transfer_encoding && chunked.is_none() {
        chunked = Some(false);
    }
    let framing = match (chunked, length) {
        (Some(false), _) => {
            return Err(bad("the body's transfer coding must end in chunked"));
        }
        // Found by a hostile-client run: `gzip, chunked` reached the
        // upstream as `chunked` alone, its body still gzipped. Nothing here
        // decodes a transfer coding, and none may pass undecoded (they are
        // hop-by-hop): 501, as RFC 9112 §6.1 says for a coding a server
        // does not understand (nginx answers the same).
        (Some(true), _) if other_coding => {
            return Err(Refusal::new(
                RejectReason::NotImplemented,
                "transfer codings other than chunked are not supported",
            ));
        }
        // Both: chunked wins (RFC 9112 §6.3); Pingora closes after it.
        (Some(true), _) => Framing::Chunked,
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    // An Upgrade counts only in HTTP/1.1 with the `upgrade` option in
    // Connection (RFC 9110 §7.8); Pingora would open the tunnel on the
    // Upgrade header alone.
    if upgrade && !(http11 && connection_upgrade) {
        return Err(bad(
            "Upgrade needs HTTP/1.1 and the upgrade option in Connection",
        ));
    }
    let connect = method == b"CONNECT";
    if http11 && hosts != 1 {
        return Err(bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    if hosts > 1 {
        return Err(bad("a request has at most one Host header"));
    }
    if !host_ok {
        return Err(bad("malformed Host header"));
    }
    if connect && framing != Framing::None {
        return Err(bad("a CONNECT request has no body"));
    }
    if !connect {
        check_target_authority(target, host)?;
        check_target(target)?;
    }
    Ok(Head {
        len,
        framing,
        connect,
        upgrade,
        http11,
        json,
        expect_continue,
    })
}

pub(super) fn trim(v: &[u8]) -> &[u8] {
    let mut v = v;
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod transfer_codings {
    use super::*;

    /// What a POST whose `Transfer-Encoding` line is `te` becomes.
    fn with(te: &str) -> Result<Head, Refusal> {
        let s = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
        inspect(s.as_bytes(), s.len())
    }

    fn refused(te: &str) -> RejectReason {
        with(te).map(|h| h.framing).expect_err(te).reason
    }

    #[test]
    fn only_chunked_is_taken_and_once() {
        // Found by a hostile-client run: another coding before chunked
        // reached the upstream as `chunked` alone. 501, on one line or
        // several.
        for te in [
            "gzip, chunked",
            "gzip\r\nTransfer-Encoding: chunked",
            "identity, chunked",
        ] {
            assert_eq!(refused(te), RejectReason::NotImplemented, "{te}");
        }
        // Chunked twice, or not last, or no coding: 400.
        for te in [
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
            "chunked, gzip",
            "gzip",
            "",
            " , ",
            "\r\nTransfer-Encoding: ,",
        ] {
            assert_eq!(refused(te), RejectReason::BadRequest, "{te:?}");
        }
        // Empty elements and lines are no codings (RFC 9110 §5.6.1).
        for te in [
            "chunked,",
            ", chunked ,",
            "chunked\r\nTransfer-Encoding:",
            "\r\nTransfer-Encoding: chunked",
        ] {
            assert_eq!(with(te).map(|h| h.framing), Ok(Framing::Chunked), "{te:?}");
        }
    }
}
