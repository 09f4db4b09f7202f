//! What each configured client did: admissions, refusals by reason,
//! tokens.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Decision, Mode};
use crate::limits::RejectReason;

/// What a configured client did, for the admin API. Kept across reloads
/// with the client's counter.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests the quotas admitted.
    pub admitted: AtomicU64,
    pub rpm_exceeded: AtomicU64,
    pub tpm_exceeded: AtomicU64,
    pub estimate_too_large: AtomicU64,
    /// Refusals shadow mode let through.
    pub shadow_refusals: AtomicU64,
    /// Tokens charged after settlement.
    pub tokens: AtomicU64,
}

impl ClientStats {
    pub(super) fn count(&self, d: &Decision) {
        let c = match d {
            Decision::Unlimited | Decision::Admitted { .. } => &self.admitted,
            Decision::Refused {
                mode: Mode::Shadow, ..
            } => &self.shadow_refusals,
            Decision::Refused { reason, .. } => match reason {
                RejectReason::RpmExceeded => &self.rpm_exceeded,
                RejectReason::TpmExceeded => &self.tpm_exceeded,
                _ => &self.estimate_too_large,
            },
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters as they are now.
    pub fn counters(&self) -> ClientCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientCounters {
            requests: g(&self.admitted),
            refusals: Refusals {
                rpm_exceeded: g(&self.rpm_exceeded),
                tpm_exceeded: g(&self.tpm_exceeded),
                estimate_too_large: g(&self.estimate_too_large),
            },
            shadow_refusals: g(&self.shadow_refusals),
            tokens: g(&self.tokens),
        }
    }
}

/// [`ClientStats`] read at one moment (what the admin API shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ClientCounters {
    /// Requests the quotas admitted.
    pub requests: u64,
    pub refusals: Refusals,
    /// Refusals shadow mode let through.
    pub shadow_refusals: u64,
    /// Tokens charged after settlement.
    pub tokens: u64,
}

/// A client's refusals by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Refusals {
    pub rpm_exceeded: u64,
    pub tpm_exceeded: u64,
    pub estimate_too_large: u64,
}
