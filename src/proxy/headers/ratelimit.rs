//! The rate-limit headers of a response: the legacy `X-RateLimit-*` trio
//! and the IETF draft `RateLimit-Policy` / `RateLimit`.

use crate::limits::rate::{Exceeded, QuotaState};
use pingora::http::WireName;

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
    let name = |d: Exceeded| match d {
        Exceeded::Requests => "\"requests\"",
        Exceeded::Tokens => "\"tokens\"",
    };
    let key = (
        dims.first().map(|d| (d.0, d.1)),
        dims.second().map(|d| (d.0, d.1)),
        w,
    );
    POLICY.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != Some(key) {
            let s = &mut cache.1;
            s.clear();
            for (i, (d, limit, _)) in dims.iter().enumerate() {
                if i > 0 {
                    s.extend_from_slice(b", ");
                }
                s.extend_from_slice(name(d).as_bytes());
                s.extend_from_slice(b";q=");
                s.extend_from_slice(num.format(limit).as_bytes());
                s.extend_from_slice(b";w=");
                s.extend_from_slice(num.format(w).as_bytes());
            }
            cache.0 = Some(key);
        }
        put(&RATELIMIT_POLICY, &cache.1)
    })?;
    // On the stack: two quotas' names and four u64s fit. The parts of
    // a known length are copied as arrays (a copy of a length known only
    // at run time is a call to `memcpy`: twelve a response cost ~180
    // instructions under callgrind).
    let mut out = Out {
        buf: [0u8; 128],
        n: 0,
    };
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
    put(&RATELIMIT, out.bytes())
}

/// A header value written on the stack.
struct Out {
    buf: [u8; 128],
    n: usize,
}

impl Out {
    /// A part of a length known when compiled.
    #[inline(always)]
    fn put<const N: usize>(&mut self, part: &[u8; N]) {
        if let Some(to) = self.buf.get_mut(self.n..self.n + N) {
            to.copy_from_slice(part);
            self.n += N;
        }
    }

    fn put_slice(&mut self, part: &[u8]) {
        if let Some(to) = self.buf.get_mut(self.n..self.n + part.len()) {
            to.copy_from_slice(part);
            self.n += part.len();
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.n).unwrap_or_default()
    }
}

/// The key of a rendered `RateLimit-Policy`: each quota's kind and limit,
/// and the window in seconds.
type PolicyKey = (Option<(Exceeded, u64)>, Option<(Exceeded, u64)>, u64);

thread_local! {
    /// The last policy rendered on this thread, and its key.
    static POLICY: std::cell::RefCell<(Option<PolicyKey>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
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
}
