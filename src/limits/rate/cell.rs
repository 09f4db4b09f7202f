//! One count: requests and tokens packed in a `u64`, so one atomic add
//! charges both.
//!
//! The high 24 bits count requests, the low 40 bits tokens. A count never
//! carries from one field into the other: a quota is at most a quarter of
//! its field (`MAX_RPM`, `MAX_TPM`), so the charges of requests racing past
//! a full quota still fit; a settlement (the usage an upstream reports,
//! which may be anything) never lifts the token field past `MAX_TPM`; and
//! subtractions saturate per field.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a cell that hold tokens; the rest hold requests.
const TOKEN_BITS: u32 = 40;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Largest request quota: a quarter of the field, 4 194 303 a window.
pub const MAX_RPM: u64 = (1 << (64 - TOKEN_BITS - 2)) - 1;
/// Largest token quota, and the most a settlement counts: a quarter of the
/// field, 274 877 906 943 a window.
pub const MAX_TPM: u64 = (1 << (TOKEN_BITS - 2)) - 1;

pub(crate) const fn pack(requests: u64, tokens: u64) -> u64 {
    (requests << TOKEN_BITS) | (tokens & TOKEN_MASK)
}

pub(crate) const fn unpack(cell: u64) -> Usage {
    Usage {
        requests: cell >> TOKEN_BITS,
        tokens: cell & TOKEN_MASK,
    }
}

/// Requests and tokens, counted or estimated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
}

pub(crate) fn saturating_sub(c: &AtomicU64, delta: Usage) {
    let _ = c.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |cur| {
        let v = unpack(cur);
        Some(pack(
            v.requests.saturating_sub(delta.requests),
            v.tokens.saturating_sub(delta.tokens),
        ))
    });
}

/// Adds `tokens` to the token field, stopping at `cap` (never lowering a
/// field already above it).
pub(crate) fn add_tokens_capped(c: &AtomicU64, tokens: u64, cap: u64) {
    let _ = c.fetch_update(Ordering::SeqCst, Ordering::Relaxed, |cur| {
        let v = unpack(cur);
        let t = v.tokens.saturating_add(tokens).min(cap.max(v.tokens));
        Some(pack(v.requests, t))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let u = unpack(pack(MAX_RPM, MAX_TPM));
        assert_eq!(
            u,
            Usage {
                requests: MAX_RPM,
                tokens: MAX_TPM
            }
        );
    }

    #[test]
    fn four_full_quotas_fit_and_settlements_stop_at_the_cap() {
        let c = AtomicU64::new(0);
        for _ in 0..4 {
            c.fetch_add(pack(MAX_RPM, MAX_TPM), Ordering::SeqCst);
        }
        let v = unpack(c.load(Ordering::SeqCst));
        assert_eq!(v.requests, 4 * MAX_RPM);
        assert_eq!(v.tokens, 4 * MAX_TPM);
        // A reported usage of u64::MAX does not carry into the requests.
        let c = AtomicU64::new(pack(3, 10));
        add_tokens_capped(&c, u64::MAX, MAX_TPM);
        assert_eq!(
            unpack(c.load(Ordering::SeqCst)),
            Usage {
                requests: 3,
                tokens: MAX_TPM
            }
        );
    }
}
