//! Where a request says it goes: its `Host` value and its request
//! target, checked as Pingora will read them, so that what Pingora would
//! refuse (with its plain-text 400) is refused here in JSON.

use crate::limits::{Refusal, RejectReason};

/// A refusal of a malformed request (400).
pub(super) fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(RejectReason::BadRequest, message)
}

/// A target Pingora's parse of the request would refuse: one `http`'s URI
/// does not take (`<`, `>` or a backtick anywhere, `"` in a query, ...),
/// which Pingora answered with its plain-text 400 (found by a
/// hostile-client run). A target of only the bytes every form takes is
/// looked at once; any other is read as Pingora's `parse_request_target`
/// reads it (the bytes reach it as they are: the guard refuses the control
/// characters and spaces Pingora would escape first): the fragment
/// dropped, the path and query of an origin-form target, or of an
/// absolute-form one's (rooted at `/`), parsed as `http`'s
/// `PathAndQuery`, bytes that are not UTF-8 replaced. (Calling Pingora's
/// own parse from here made the compiler stop inlining it into Pingora's
/// request read, which cost ~150 instructions a request.) A test checks
/// the two agree.
pub(super) fn check_target(target: &[u8]) -> Result<(), Refusal> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    if target.iter().all(|&b| URI_PLAIN[usize::from(b)]) {
        return Ok(());
    }
    let t = target.split(|b| *b == b'#').next().unwrap_or_default();
    let path_and_query = match t.first() {
        None | Some(b'/' | b'?') => String::from_utf8_lossy(t),
        _ if t == b"*" => return Ok(()),
        _ => match raw_target_authority(t) {
            RawTargetAuthority::Absolute { path_and_query, .. } => {
                match String::from_utf8_lossy(path_and_query) {
                    pq if pq.is_empty() || pq.starts_with('/') => pq,
                    pq => format!("/{pq}").into(),
                }
            }
            _ => return Ok(()),
        },
    };
    match http::uri::PathAndQuery::try_from(path_and_query.as_ref()) {
        Ok(_) => Ok(()),
        Err(_) if path_and_query.is_empty() => Ok(()),
        Err(_) => Err(bad("malformed request target")),
    }
}

/// Bytes `http`'s URI takes anywhere in a path or query:
/// `[A-Za-z0-9]`, `-._~`, `!$&'()*+,;=`, `:@/?` and `%`.
const URI_PLAIN: [bool; 256] = alphanumeric_and!(
    b'-' | b'.'
        | b'_'
        | b'~'
        | b'!'
        | b'$'
        | b'&'
        | b'\''
        | b'('
        | b')'
        | b'*'
        | b'+'
        | b','
        | b';'
        | b'='
        | b':'
        | b'@'
        | b'/'
        | b'?'
        | b'%'
);

/// An absolute-form target's authority must be the `Host` value, byte for
/// byte, without user info (Pingora's own rule, answered here in JSON).
pub(super) fn check_target_authority(target: &[u8], host: Option<&[u8]>) -> Result<(), Refusal> {
    use pingora::http::authority::{
        is_http_family_scheme, raw_target_authority, RawTargetAuthority,
    };
    match raw_target_authority(target) {
        RawTargetAuthority::None => Ok(()),
        RawTargetAuthority::AmbiguousAuthority => {
            Err(bad("ambiguous absolute-form request target"))
        }
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => {
            if authority.contains(&b'@') {
                return Err(bad("user info in the request target"));
            }
            if is_http_family_scheme(scheme) && http::uri::Authority::try_from(authority).is_err() {
                return Err(bad("malformed authority in the request target"));
            }
            if host.is_some_and(|h| h != authority) {
                return Err(bad(
                    "the Host header differs from the request target's authority",
                ));
            }
            Ok(())
        }
    }
}

/// A `Host` value: `host` or `host:port`, a bracketed IPv6 literal, no
/// user info, no spaces (empty is allowed: RFC 9112 §3.2).
pub(super) fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() || plain_host(v) {
        return true;
    }
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    !s.contains(['@', ' ', '/', '\\', '?', '#'])
        && http::uri::Authority::try_from(s).is_ok()
        && port_is_digits(s)
}

/// The port of a host value (after its last `:` outside an IPv6 literal's
/// brackets) is digits, or empty, as RFC 3986's `port = *DIGIT` has it:
/// `http`'s authority parse takes `a:-1` or `a:80a` (found by a
/// hostile-client run).
fn port_is_digits(s: &str) -> bool {
    let after = s.rfind(']').map_or(s, |i| &s[i + 1..]);
    after
        .rfind(':')
        .is_none_or(|i| after[i + 1..].bytes().all(|b| b.is_ascii_digit()))
}

/// The usual `Host`: a name or an IPv4 address of `[A-Za-z0-9.-]`, and a
/// port of up to five digits. Every such value is a valid authority (a
/// test checks), so it needs no parse into one, which also copies it.
pub(super) fn plain_host(v: &[u8]) -> bool {
    // The name is the bytes up to the first that is none of
    // `[A-Za-z0-9.-]`, which must be the colon, if any (one look at each
    // byte of the name, and no search).
    let i = v
        .iter()
        .position(|b| !HOST_NAME[usize::from(*b)])
        .unwrap_or(v.len());
    let port = match v.get(i) {
        None => None,
        Some(b':') => Some(&v[i + 1..]),
        Some(_) => return false,
    };
    i > 0 && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// `[A-Za-z0-9.-]`, the bytes of a plain host name, as a table (three
/// range checks a byte cost about twice as much).
const HOST_NAME: [bool; 256] = alphanumeric_and!(b'.' | b'-');

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every string over `alphabet` with a length in `lens`.
    pub(in super::super) fn strings_over(
        alphabet: &[u8],
        lens: std::ops::RangeInclusive<u32>,
    ) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for len in lens {
            for mut n in 0..alphabet.len().pow(len) {
                let mut v = Vec::new();
                for _ in 0..len {
                    v.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                all.push(v);
            }
        }
        all
    }

    /// `plain_host` accepts only what the full check accepts: every string
    /// of up to 5 characters over an alphabet of its characters and
    /// neighbours it must refuse.
    #[test]
    fn a_plain_host_is_a_valid_authority() {
        let mut accepted = 0;
        for v in strings_over(b"a9.-:[]@ ", 1..=5) {
            if plain_host(&v) {
                accepted += 1;
                let s = std::str::from_utf8(&v).unwrap();
                assert!(http::uri::Authority::try_from(s).is_ok(), "{s:?}");
            }
        }
        assert!(accepted > 1000, "{accepted}");
        for v in ["example.com", "10.0.0.1:8080", "a-b.c:65535", "x:99999"] {
            assert!(plain_host(v.as_bytes()), "{v}");
            assert!(http::uri::Authority::try_from(v).is_ok(), "{v}");
        }
        for v in ["", ":80", "a:", "a:123456", "a b", "[::1]", "a@b", "a:1:2"] {
            assert!(!plain_host(v.as_bytes()), "{v}");
        }
    }

    /// `plain_host` (one scan of the name, no search for the colon) decides
    /// as its first form did, a search for the first `:` then a check of each
    /// part, on every string of up to 5 characters over an alphabet of its
    /// characters and neighbours.
    #[test]
    fn a_plain_host_is_decided_as_by_a_search_for_its_colon() {
        let searched = |v: &[u8]| {
            let (name, port) = match v.iter().position(|b| *b == b':') {
                Some(i) => (&v[..i], Some(&v[i + 1..])),
                None => (v, None),
            };
            !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                && port.is_none_or(|p| {
                    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
                })
        };
        for v in strings_over(b"a9.-:_ ", 0..=5) {
            assert_eq!(plain_host(&v), searched(&v), "{v:?}");
        }
        for b in 0..=255u8 {
            let v = [b, b'a', b];
            assert_eq!(plain_host(&v), searched(&v), "{v:?}");
        }
    }

    /// A target is refused here exactly when Pingora's parse of it would
    /// fail (its bare 400, found by a hostile-client run): every byte from
    /// `!` up, at the start and in the middle of a path and in a query,
    /// UTF-8 and broken UTF-8 above 0x7f, fragments, and the other forms.
    /// (Through the whole guard: `a_target_pingora_refuses_is_refused_in_json`.)
    #[test]
    fn a_target_is_refused_exactly_when_pingora_would_refuse_it() {
        let mut targets: Vec<Vec<u8>> = vec![
            "/é".as_bytes().to_vec(),
            b"/\xc3".to_vec(),
            b"/\xff\xfe".to_vec(),
            b"/a#frag".to_vec(),
            b"*".to_vec(),
            b"http://a/x<y".to_vec(),
            b"http://a?q<".to_vec(),
            b"http://a".to_vec(),
            b"http://a#x<".to_vec(),
            b"/a#<".to_vec(),
            b"?q<".to_vec(),
            b"?q=1".to_vec(),
            "http://a/é<".as_bytes().to_vec(),
            b"http://a/\xff".to_vec(),
            b"foo:bar://host/<".to_vec(),
            b"https://[::1]:8/<".to_vec(),
        ];
        for b in 0x21..=0xffu8 {
            if b == 0x7f {
                continue; // a control character: refused before.
            }
            targets.push(vec![b'/', b]);
            targets.push(vec![b'/', b'a', b, b'b']);
            targets.push(vec![b'/', b'a', b'?', b'q', b, b'=']);
        }
        let mut refused = Vec::new();
        for t in targets {
            let pingora = pingora::http::RequestHeader::build_no_case("GET", &t, None).is_ok();
            match check_target(&t) {
                Ok(()) => assert!(pingora, "{t:?} passed, Pingora refuses it"),
                Err(r) => {
                    assert!(!pingora, "{t:?} refused: {}", r.message);
                    assert_eq!(r.message, "malformed request target");
                    refused.push(String::from_utf8_lossy(&t).into_owned());
                }
            }
        }
        // `<`, `>` and a backtick anywhere, `"` in a query (broken UTF-8
        // is not: Pingora keeps such a target's bytes as they came).
        for t in [
            "/<",
            "/a<b",
            "/>",
            "/a?q>=",
            "/`",
            "/a?q\"=",
            "http://a/x<y",
        ] {
            assert!(refused.iter().any(|r| r == t), "{t} in {refused:?}");
        }
    }
}
