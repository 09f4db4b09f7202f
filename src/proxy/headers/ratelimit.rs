//! The rate-limit headers of a response: the legacy `X-RateLimit-*` trio
//! and the IETF draft `RateLimit-Policy` / `RateLimit`.

use crate::limits::rate::{Dimensions, Exceeded, QuotaState};
use pingora::http::{WireLines, WireName};

/// The names as text (lower case, as a `HeaderName` holds them; usable
/// in patterns).
pub mod names {
    pub const LIMIT: &str = "x-ratelimit-limit";
    pub const REMAINING: &str = "x-ratelimit-remaining";
    pub const RESET: &str = "x-ratelimit-reset";
    pub const POLICY: &str = "ratelimit-policy";
    pub const STATE: &str = "ratelimit";
}
pub static X_RATELIMIT_LIMIT: WireName = WireName::new(names::LIMIT);
pub static X_RATELIMIT_REMAINING: WireName = WireName::new(names::REMAINING);
pub static X_RATELIMIT_RESET: WireName = WireName::new(names::RESET);
pub static RATELIMIT_POLICY: WireName = WireName::new(names::POLICY);
pub static RATELIMIT: WireName = WireName::new(names::STATE);

/// The rate-limit headers of a response to a limited client, each given to
/// `put` as its name and value:
/// `X-RateLimit-Limit/-Remaining/-Reset` for the quota closest to
/// exhaustion (or the one that refused), and the IETF draft
/// `RateLimit-Policy` and `RateLimit` listing both quotas. Values are
/// written on the stack without the formatting machinery, and the policy
/// (the same for every request under one quota) is rendered once per
/// thread and quota. `put`'s first error ends it.
pub fn rate_limit_headers<E>(
    state: &QuotaState,
    refused: Option<Exceeded>,
    mut put: impl FnMut(&WireName, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let w = state.window_ms.div_ceil(1000).max(1);
    let mut reset = itoa::Buffer::new();
    let reset = reset.format(state.reset_ms.div_ceil(1000)).as_bytes();
    let mut num = itoa::Buffer::new();
    if let Some((_, limit, left)) = state.tightest(refused) {
        put(&X_RATELIMIT_LIMIT, num.format(limit).as_bytes())?;
        put(&X_RATELIMIT_REMAINING, num.format(left).as_bytes())?;
        put(&X_RATELIMIT_RESET, reset)?;
    }
    let dims = state.dimensions();
    if dims.is_empty() {
        return Ok(());
    }
    RENDERED.with(|cache| put(&RATELIMIT_POLICY, cache.borrow_mut().policy.value(&dims, w)))?;
    let mut buf = [0u8; 128];
    let mut out = Out {
        buf: &mut buf,
        n: 0,
        full: false,
    };
    write_state(&mut out, &dims, &mut num, reset);
    put(&RATELIMIT, out.bytes())
}

/// The same headers as [`rate_limit_headers`], with the same values, in
/// the same order (a test compares them), added to `lines` as HTTP/1
/// lines in one piece: what is the same for every request under one quota
/// (the names, the tightest quota's limit, the policy) is rendered once
/// per thread and quota, and a request writes only its numbers
/// (remaining and reset) between those parts. An error, and nothing
/// added, when they do not fit in `lines` (the caller adds them one by
/// one instead).
pub fn add_rate_limit_lines(
    state: &QuotaState,
    refused: Option<Exceeded>,
    lines: &mut WireLines,
) -> pingora::Result<()> {
    let dims = state.dimensions();
    if dims.is_empty() {
        return Ok(());
    }
    let tightest = state.tightest(refused);
    let w = state.window_ms.div_ceil(1000).max(1);
    let mut reset = itoa::Buffer::new();
    let reset = reset.format(state.reset_ms.div_ceil(1000)).as_bytes();
    let mut num = itoa::Buffer::new();
    let names: &[&WireName] = match tightest {
        Some(_) => &[
            &X_RATELIMIT_LIMIT,
            &X_RATELIMIT_REMAINING,
            &X_RATELIMIT_RESET,
            &RATELIMIT_POLICY,
            &RATELIMIT,
        ],
        None => &[&RATELIMIT_POLICY, &RATELIMIT],
    };
    RENDERED.with(|cache| {
        let mut cache = cache.borrow_mut();
        let Rendered { policy, limit } = &mut *cache;
        let policy = policy.lines(&dims, w);
        let limit = tightest.map(|(d, l, _)| limit.lines((d, l)));
        lines.add_rendered(names, |room| {
            let mut out = Out {
                buf: room,
                n: 0,
                full: false,
            };
            if let (Some(limit), Some((_, _, left))) = (limit, tightest) {
                out.put_slice(limit);
                out.put_slice(num.format(left).as_bytes());
                out.put(b"\r\nx-ratelimit-reset: ");
                out.put_slice(reset);
                out.put(b"\r\n");
            }
            out.put_slice(policy);
            write_state(&mut out, &dims, &mut num, reset);
            out.put(b"\r\n");
            out.len()
        })
    })
}

/// The `RateLimit` value: each quota's remaining and reset.
#[inline(always)]
fn write_state(out: &mut Out<'_>, dims: &Dimensions, num: &mut itoa::Buffer, reset: &[u8]) {
    for (i, (d, _, left)) in dims.iter().enumerate() {
        if i > 0 {
            out.put(b", ");
        }
        match d {
            Exceeded::Requests => out.put(b"\"requests\";r="),
            Exceeded::Tokens => out.put(b"\"tokens\";r="),
        }
        out.put_slice(num.format(left).as_bytes());
        out.put(b";t=");
        out.put_slice(reset);
    }
}

/// Bytes written into room of a fixed size; what does not fit sets
/// `full`, and the bytes are then no use.
struct Out<'a> {
    buf: &'a mut [u8],
    n: usize,
    full: bool,
}

impl Out<'_> {
    /// A part of a length known when compiled (a copy of a length known
    /// only at run time is a call to `memcpy`).
    #[inline(always)]
    fn put<const N: usize>(&mut self, part: &[u8; N]) {
        match self.buf.get_mut(self.n..self.n + N) {
            Some(to) => {
                to.copy_from_slice(part);
                self.n += N;
            }
            None => self.full = true,
        }
    }

    #[inline(always)]
    fn put_slice(&mut self, part: &[u8]) {
        match self.buf.get_mut(self.n..self.n + part.len()) {
            Some(to) => {
                to.copy_from_slice(part);
                self.n += part.len();
            }
            None => self.full = true,
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.n).unwrap_or_default()
    }

    /// How many bytes were written; `None` when they did not all fit.
    fn len(&self) -> Option<usize> {
        (!self.full).then_some(self.n)
    }
}

/// The key of a rendered `RateLimit-Policy`: each quota's kind and limit,
/// and the window in seconds.
type PolicyKey = (Option<(Exceeded, u64)>, Option<(Exceeded, u64)>, u64);

/// What this thread rendered last, by key.
#[derive(Default)]
struct Rendered {
    /// `ratelimit-policy: <value>\r\nratelimit: `.
    policy: Rendering<PolicyKey>,
    /// `x-ratelimit-limit: <limit>\r\nx-ratelimit-remaining: `.
    limit: Rendering<(Exceeded, u64)>,
}

/// One rendered part and its key.
struct Rendering<K> {
    key: Option<K>,
    bytes: Vec<u8>,
}

impl<K> Default for Rendering<K> {
    fn default() -> Self {
        Rendering {
            key: None,
            bytes: Vec::new(),
        }
    }
}

impl Rendering<(Exceeded, u64)> {
    /// `x-ratelimit-limit: <limit>\r\nx-ratelimit-remaining: `.
    fn lines(&mut self, key: (Exceeded, u64)) -> &[u8] {
        if self.key != Some(key) {
            let mut num = itoa::Buffer::new();
            self.bytes.clear();
            self.bytes.extend_from_slice(names::LIMIT.as_bytes());
            self.bytes.extend_from_slice(b": ");
            self.bytes.extend_from_slice(num.format(key.1).as_bytes());
            self.bytes.extend_from_slice(b"\r\n");
            self.bytes.extend_from_slice(names::REMAINING.as_bytes());
            self.bytes.extend_from_slice(b": ");
            self.key = Some(key);
        }
        &self.bytes
    }
}

const POLICY_LINE: &[u8] = b"ratelimit-policy: ";
const STATE_LINE: &[u8] = b"\r\nratelimit: ";

impl Rendering<PolicyKey> {
    /// The `RateLimit-Policy` value of these quotas and window.
    fn value(&mut self, dims: &Dimensions, w: u64) -> &[u8] {
        let lines = self.lines(dims, w);
        lines
            .get(POLICY_LINE.len()..lines.len() - STATE_LINE.len())
            .unwrap_or_default()
    }

    /// `ratelimit-policy: <value>\r\nratelimit: `.
    fn lines(&mut self, dims: &Dimensions, w: u64) -> &[u8] {
        let key = (
            dims.first().map(|d| (d.0, d.1)),
            dims.second().map(|d| (d.0, d.1)),
            w,
        );
        if self.key != Some(key) {
            let mut num = itoa::Buffer::new();
            let s = &mut self.bytes;
            s.clear();
            s.extend_from_slice(POLICY_LINE);
            for (i, (d, limit, _)) in dims.iter().enumerate() {
                if i > 0 {
                    s.extend_from_slice(b", ");
                }
                s.extend_from_slice(match d {
                    Exceeded::Requests => b"\"requests\"",
                    Exceeded::Tokens => b"\"tokens\"",
                });
                s.extend_from_slice(b";q=");
                s.extend_from_slice(num.format(limit).as_bytes());
                s.extend_from_slice(b";w=");
                s.extend_from_slice(num.format(w).as_bytes());
            }
            s.extend_from_slice(STATE_LINE);
            self.key = Some(key);
        }
        &self.bytes
    }
}

thread_local! {
    /// What this thread rendered last.
    static RENDERED: std::cell::RefCell<Rendered> = std::cell::RefCell::new(Rendered::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn collect(state: &QuotaState, refused: Option<Exceeded>) -> HashMap<&'static str, String> {
        let mut h = HashMap::new();
        let Ok(()) = rate_limit_headers(state, refused, |k, v| {
            h.insert(k.spelling(), String::from_utf8(v.to_vec()).unwrap());
            Ok::<(), std::convert::Infallible>(())
        });
        h
    }

    #[test]
    fn rate_limit_headers_pick_the_tightest_quota() {
        use crate::limits::rate::{Quota, Usage};
        let state = QuotaState {
            quota: Quota {
                rpm: Some(10),
                tpm: Some(1000),
            },
            used: Usage {
                requests: 2,
                tokens: 900,
            },
            reset_ms: 12_300,
            window_ms: 60_000,
        };
        let h = collect(&state, None);
        assert_eq!(h["x-ratelimit-limit"], "1000");
        assert_eq!(h["x-ratelimit-remaining"], "100");
        assert_eq!(h["x-ratelimit-reset"], "13");
        assert_eq!(
            h["ratelimit-policy"],
            "\"requests\";q=10;w=60, \"tokens\";q=1000;w=60"
        );
        assert_eq!(
            h["ratelimit"],
            "\"requests\";r=8;t=13, \"tokens\";r=100;t=13"
        );
        let h = collect(&state, Some(Exceeded::Requests));
        assert_eq!(h["x-ratelimit-limit"], "10");
        let only_rpm = QuotaState {
            quota: Quota {
                rpm: Some(5),
                tpm: None,
            },
            ..state
        };
        let h = collect(&only_rpm, None);
        assert_eq!(h["ratelimit-policy"], "\"requests\";q=5;w=60");
    }

    /// The lines rendered in one piece are the headers one by one, for
    /// quotas of every shape, the tightest of either kind, a refusal of
    /// either, numbers at the edges of their type; states alternate so
    /// that each cached part is rendered again and reused.
    #[test]
    fn rendered_lines_are_the_headers_one_by_one() {
        use crate::limits::rate::{Quota, Usage};
        let limits = [None, Some(0), Some(1), Some(10), Some(1000), Some(u64::MAX)];
        let mut states = vec![];
        for rpm in limits {
            for tpm in limits {
                for (requests, tokens) in [(0, 0), (2, 900), (u64::MAX, 1), (9, u64::MAX)] {
                    for (reset_ms, window_ms) in [(12_300, 60_000), (0, 1), (u64::MAX, u64::MAX)] {
                        states.push(QuotaState {
                            quota: Quota { rpm, tpm },
                            used: Usage { requests, tokens },
                            reset_ms,
                            window_ms,
                        });
                    }
                }
            }
        }
        let n = states.len();
        for i in 0..3 * n {
            // In order, then each state twice running, then strided.
            let state = &states[match i / n {
                0 => i,
                1 => (i - n) / 2,
                _ => (i * 7) % n,
            }];
            for refused in [None, Some(Exceeded::Requests), Some(Exceeded::Tokens)] {
                let mut expected = vec![];
                let Ok(()) = rate_limit_headers(state, refused, |k, v| {
                    expected.extend_from_slice(k.spelling().as_bytes());
                    expected.extend_from_slice(b": ");
                    expected.extend_from_slice(v);
                    expected.extend_from_slice(b"\r\n");
                    Ok::<(), std::convert::Infallible>(())
                });
                let mut lines = WireLines::new();
                add_rate_limit_lines(state, refused, &mut lines).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(lines.as_bytes()),
                    String::from_utf8_lossy(&expected),
                    "{state:?} {refused:?}"
                );
            }
        }
    }

    /// Lines that do not fit are an error, and nothing of them is added.
    #[test]
    fn rendered_lines_that_do_not_fit_add_nothing() {
        use crate::limits::rate::{Quota, Usage};
        static FILL: WireName = WireName::new("x-fill");
        let state = QuotaState {
            quota: Quota {
                rpm: Some(u64::MAX),
                tpm: Some(u64::MAX),
            },
            used: Usage::default(),
            reset_ms: u64::MAX,
            window_ms: u64::MAX,
        };
        let mut whole = WireLines::new();
        add_rate_limit_lines(&state, None, &mut whole).unwrap();
        let need = whole.as_bytes().len();
        for room in [need - 1, need, need + 1] {
            let mut lines = WireLines::new();
            // x-fill: <value>\r\n takes 10 bytes and the value.
            lines.add(&FILL, &vec![b'v'; 512 - room - 10]).unwrap();
            let before = lines.as_bytes().to_vec();
            let added = add_rate_limit_lines(&state, None, &mut lines);
            match room >= need {
                true => {
                    added.unwrap();
                    assert_eq!(&lines.as_bytes()[before.len()..], whole.as_bytes());
                }
                false => {
                    assert!(added.is_err());
                    assert_eq!(lines.as_bytes(), &before[..]);
                }
            }
        }
    }
}
