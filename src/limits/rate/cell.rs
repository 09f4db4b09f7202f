//! One count: requests and tokens packed in a `u64`, so one atomic add
//! charges both.
//!
//! The high 24 bits count requests, the low 40 bits tokens. A count never
//! carries from one field into the other: adds are checked against the
//! field's maximum by the limiter, subtractions saturate per field.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a cell that hold tokens; the rest hold requests.
const TOKEN_BITS: u32 = 40;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// Largest request limit a window can count.
pub const MAX_RPM: u64 = (1 << (64 - TOKEN_BITS)) - 1;
/// Largest token limit a window can count.
pub const MAX_TPM: u64 = TOKEN_MASK;

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
}
