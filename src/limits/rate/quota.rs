//! Quotas and what a decision reports about them.

use super::cell::Usage;

/// A client's limits per window; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// Which quota refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
}

/// What a client has left, for the rate-limit response headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaState {
    pub quota: Quota,
    /// Estimated usage after this decision.
    pub used: Usage,
    /// Milliseconds until the current window ends.
    pub reset_ms: u64,
    pub window_ms: u64,
}

impl QuotaState {
    pub fn requests_remaining(&self) -> Option<u64> {
        self.quota.rpm.map(|l| l.saturating_sub(self.used.requests))
    }

    pub fn tokens_remaining(&self) -> Option<u64> {
        self.quota.tpm.map(|l| l.saturating_sub(self.used.tokens))
    }

    /// The limited quotas: (which, limit, remaining).
    pub fn dimensions(&self) -> Dimensions {
        let requests = self
            .quota
            .rpm
            .zip(self.requests_remaining())
            .map(|(l, r)| (Exceeded::Requests, l, r));
        let tokens = self
            .quota
            .tpm
            .zip(self.tokens_remaining())
            .map(|(l, r)| (Exceeded::Tokens, l, r));
        match requests {
            Some(r) => Dimensions([Some(r), tokens]),
            None => Dimensions([tokens, None]),
        }
    }

    /// The quota to report: the one that refused, else the one closest to
    /// exhaustion (smallest remaining share).
    pub fn tightest(&self, refused: Option<Exceeded>) -> Option<(Exceeded, u64, u64)> {
        let dims = self.dimensions();
        match refused {
            Some(r) => dims.iter().find(|d| d.0 == r),
            // remaining/limit compared as r·L' < r'·L.
            None => dims.iter().min_by(|a, b| {
                (a.2 as u128 * b.1.max(1) as u128).cmp(&(b.2 as u128 * a.1.max(1) as u128))
            }),
        }
    }
}

/// A client's quotas as (kind, limit, remaining), requests first; at most
/// two, without an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dimensions([Option<(Exceeded, u64, u64)>; 2]);

impl Dimensions {
    pub fn iter(&self) -> impl Iterator<Item = (Exceeded, u64, u64)> + '_ {
        self.0.iter().flatten().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0[0].is_none()
    }

    pub fn first(&self) -> Option<(Exceeded, u64, u64)> {
        self.0[0]
    }

    pub fn second(&self) -> Option<(Exceeded, u64, u64)> {
        self.0[1]
    }
}

/// A request over a quota: which quota, and how long until enough of it
/// frees. Nothing was charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverQuota {
    pub exceeded: Exceeded,
    pub retry_after_ms: u64,
    pub state: QuotaState,
}

/// What an admitted request was charged, and to which window: a refund or a
/// settlement after the window moved on still lands where the charge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub window: u64,
    pub hash: u64,
    pub charged: Usage,
}
