//! The rate-limit headers of a response: the legacy `X-RateLimit-*` trio
//! and the IETF draft `RateLimit-Policy` / `RateLimit`.

use std::io::Write;

use http::header::HeaderValue;

use super::Name;
use crate::limits::rate::{Exceeded, QuotaState};

/// The names, as [`super::GATEWAY_RESPONSE_HEADERS`] lists them.
pub const NAMES: [&str; 5] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
];
pub const X_RATELIMIT_LIMIT: Name = Name::new(NAMES[0]);
pub const X_RATELIMIT_REMAINING: Name = Name::new(NAMES[1]);
pub const X_RATELIMIT_RESET: Name = Name::new(NAMES[2]);
pub const RATELIMIT_POLICY: Name = Name::new(NAMES[3]);
pub const RATELIMIT: Name = Name::new(NAMES[4]);

/// The rate-limit headers of a response to a limited client:
/// `X-RateLimit-Limit/-Remaining/-Reset` for the quota closest to
/// exhaustion (or the one that refused), and the IETF draft
/// `RateLimit-Policy` and `RateLimit` listing both quotas. Numbers are
/// written without the formatting machinery, and the policy (the same for
/// every request under one quota) is rendered once per thread and quota.
pub fn rate_limit_headers(
    state: &QuotaState,
    refused: Option<Exceeded>,
) -> impl Iterator<Item = (Name, HeaderValue)> {
    let w = state.window_ms.div_ceil(1000).max(1);
    let t = state.reset_ms.div_ceil(1000);
    let mut out: [Option<(Name, HeaderValue)>; 5] = Default::default();
    if let Some((_, limit, left)) = state.tightest(refused) {
        // The limit and the reset repeat from one request to the next:
        // each is rendered once per thread and value, then shared.
        let (limit, reset) = NUMBERS.with(|cache| {
            let mut cache = cache.borrow_mut();
            (cache.0.get(limit), cache.1.get(t))
        });
        out[0] = Some((X_RATELIMIT_LIMIT, limit));
        out[1] = Some((X_RATELIMIT_REMAINING, HeaderValue::from(left)));
        out[2] = Some((X_RATELIMIT_RESET, reset));
    }
    let dims = state.dimensions();
    if !dims.is_empty() {
        let name = |d: Exceeded| match d {
            Exceeded::Requests => "\"requests\"",
            Exceeded::Tokens => "\"tokens\"",
        };
        let mut num = itoa::Buffer::new();
        let key = (
            dims.first().map(|d| (d.0, d.1)),
            dims.second().map(|d| (d.0, d.1)),
            w,
        );
        let policy = POLICY.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((k, v)) = cache.as_ref() {
                if *k == key {
                    return v.clone();
                }
            }
            let mut s = String::with_capacity(48);
            for (i, (d, limit, _)) in dims.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(name(d));
                s.push_str(";q=");
                s.push_str(num.format(limit));
                s.push_str(";w=");
                s.push_str(num.format(w));
            }
            let v = HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
            *cache = Some((key, v.clone()));
            v
        });
        // On the stack (two quotas' names and four u64s fit), then copied
        // once into the value.
        let mut buf = [0u8; 128];
        let mut w = &mut buf[..];
        let mut reset = itoa::Buffer::new();
        let reset = reset.format(t).as_bytes();
        for (i, (d, _, left)) in dims.iter().enumerate() {
            let sep: &[u8] = if i > 0 { b", " } else { b"" };
            for part in [
                sep,
                name(d).as_bytes(),
                b";r=",
                num.format(left).as_bytes(),
                b";t=",
                reset,
            ] {
                let _ = w.write_all(part);
            }
        }
        let n = 128 - w.len();
        out[3] = Some((RATELIMIT_POLICY, policy));
        out[4] = HeaderValue::from_bytes(&buf[..n])
            .ok()
            .map(|v| (RATELIMIT, v));
    }
    out.into_iter().flatten()
}

/// The key of a rendered `RateLimit-Policy`: each quota's kind and limit,
/// and the window in seconds.
type PolicyKey = (Option<(Exceeded, u64)>, Option<(Exceeded, u64)>, u64);

thread_local! {
    /// The last policy rendered on this thread.
    static POLICY: std::cell::RefCell<Option<(PolicyKey, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
    /// The last `X-RateLimit-Limit` and `X-RateLimit-Reset` values
    /// rendered on this thread.
    static NUMBERS: std::cell::RefCell<(LastNumber, LastNumber)> =
        const { std::cell::RefCell::new((LastNumber(None), LastNumber(None))) };
}

/// A number's header value, kept while the next one asked for is the same.
struct LastNumber(Option<(u64, HeaderValue)>);

impl LastNumber {
    fn get(&mut self, n: u64) -> HeaderValue {
        match &self.0 {
            Some((k, v)) if *k == n => v.clone(),
            _ => {
                let v = HeaderValue::from(n);
                self.0 = Some((n, v.clone()));
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let h: std::collections::HashMap<_, _> = rate_limit_headers(&state, None)
            .map(|(k, v)| (k.1, v))
            .collect();
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
        let h: std::collections::HashMap<_, _> =
            rate_limit_headers(&state, Some(Exceeded::Requests))
                .map(|(k, v)| (k.1, v))
                .collect();
        assert_eq!(h["x-ratelimit-limit"], "10");
        let only_rpm = QuotaState {
            quota: Quota {
                rpm: Some(5),
                tpm: None,
            },
            ..state
        };
        let h: std::collections::HashMap<_, _> = rate_limit_headers(&only_rpm, None)
            .map(|(k, v)| (k.1, v))
            .collect();
        assert_eq!(h["ratelimit-policy"], "\"requests\";q=5;w=60");
    }
}
