//! Everything one request took on its way in, in one place, and the two
//! ways it ends.
//!
//! A request takes, phase by phase: a quota charge (one request and its
//! token estimate), places in the adaptive windows (permits), and its
//! backend's host slot. The [`Admission`] owns all of them. It ends exactly
//! once:
//!
//! - [`refuse`](Admission::refuse): the gateway answered the request itself
//!   after an earlier phase took something. Everything goes back: the
//!   request and its tokens, the permits (as not completed), the slot.
//! - [`finish`](Admission::finish): the upstream response ended (with or
//!   without a body), the upstream failed, or the client left. Tokens settle
//!   to the actual usage (or the estimate), permits complete as a success or
//!   a failure, the slot is freed. A client that leaves is treated by
//!   `refund_on_client_abort`.
//!
//! `Drop` is the safety net for a context dropped on a path that ended
//! neither way: it settles as a client gone (so nothing leaks) and counts
//! itself in `floodgate_admission_safety_net_total`.

use crate::config::AbortRefund;
use crate::limits::adaptive::AdaptivePermit;
use crate::limits::clients::{Charge, Settled};
use crate::limits::connections::HostSlot;

/// How a request that went through its admission ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered and its response ended. `usage` is the token
    /// count it reported, if any (else the estimate stays charged).
    Answered { usage: Option<u64> },
    /// The upstream failed: a 5xx, a failed connect, a timeout. The request
    /// stays counted, its tokens are refunded, the windows see a failure.
    UpstreamFailed,
    /// The client went away before its response ended. `usage_seen` is the
    /// usage the upstream reported so far, if any.
    ClientGone { usage_seen: Option<u64> },
}

/// What a request holds; see the module documentation.
pub struct Admission {
    charge: Option<Charge>,
    /// Places in the adaptive windows: the gateway-wide one, the
    /// upstream's (held in place: a list would be an allocation a request).
    permits: [Option<AdaptivePermit>; 2],
    /// Host slots: the backend's (reverse proxy), or a destination's
    /// address and name (forward proxy).
    slots: [Option<HostSlot>; 2],
    /// The request was sent upstream (the upstream may be doing its work).
    sent: bool,
    abort: AbortRefund,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(AbortRefund::Unstarted)
    }
}

impl Admission {
    pub fn new(abort: AbortRefund) -> Self {
        Admission {
            charge: None,
            permits: [None, None],
            slots: [None, None],
            sent: false,
            abort,
        }
    }

    /// What a client's hang-up refunds (`clients.refund_on_client_abort`),
    /// set on the empty admission the request began with (a new one in
    /// its place cost a drop of the old, ~60 instructions).
    pub fn refund_on_abort(&mut self, abort: AbortRefund) {
        self.abort = abort;
    }

    /// The quota charge of phase 4.
    pub fn hold_charge(&mut self, charge: Charge) {
        self.charge = Some(charge);
    }

    /// A place in an adaptive window (phase 5; there are two windows). A
    /// third replaces the second.
    pub fn hold_permit(&mut self, permit: AdaptivePermit) {
        match &mut self.permits {
            [p @ None, _] | [_, p] => *p = Some(permit),
        }
    }

    /// A host slot (phase 6, and again on a retry; a forward-proxy
    /// destination may hold two). A third replaces the second.
    pub fn hold_slot(&mut self, slot: HostSlot) {
        match &mut self.slots {
            [s @ None, _] | [_, s] => *s = Some(slot),
        }
    }

    /// Frees the host slots (a retry moves to another backend).
    pub fn release_slot(&mut self) {
        self.slots = [None, None];
    }

    /// The request header is going upstream.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    pub fn sent(&self) -> bool {
        self.sent
    }

    /// Tokens charged so far (the estimate until settled).
    pub fn charged_tokens(&self) -> Option<u64> {
        self.charge.as_ref().map(Charge::tokens)
    }

    /// Whether it still holds anything.
    pub fn is_open(&self) -> bool {
        self.charge.is_some()
            || self.permits.iter().any(Option::is_some)
            || self.slots.iter().any(Option::is_some)
    }

    /// Gives everything back: the request was answered by the gateway.
    pub fn refuse(&mut self) {
        if let Some(c) = self.charge.take() {
            c.refund_all();
        }
        // Dropped without completing: freed, and the window does not grow.
        self.permits = [None, None];
        self.release_slot();
    }

    /// Settles what the request took; returns what its tokens settled to
    /// (when it had a charge).
    pub fn finish(&mut self, outcome: Outcome) -> Option<Settled> {
        self.release_slot();
        let success = matches!(outcome, Outcome::Answered { .. });
        for p in self.permits.iter_mut().filter_map(Option::take) {
            if success {
                p.complete();
            }
        }
        let charge = self.charge.take()?;
        Some(match outcome {
            Outcome::Answered { usage } => {
                let tokens = usage.unwrap_or_else(|| charge.tokens());
                charge.settle(tokens)
            }
            Outcome::UpstreamFailed => charge.refund_tokens(),
            Outcome::ClientGone { usage_seen } => {
                if !self.sent && self.abort == AbortRefund::Unstarted {
                    charge.refund_all();
                    Settled {
                        tokens: 0,
                        clamped: false,
                    }
                } else {
                    // The upstream may be doing the work: the estimate, or
                    // what it reported so far if that is more.
                    let tokens = charge.tokens().max(usage_seen.unwrap_or(0));
                    charge.settle(tokens)
                }
            }
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.is_open() {
            crate::metrics::metrics().admission_safety_net_total.inc();
            self.finish(Outcome::ClientGone { usage_seen: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::limits::adaptive::{AdaptiveConfig, Controller};
    use crate::limits::clients::{ClientLimit, ClientPolicies, ClientsPolicy, Decision, Mode};
    use crate::limits::clock::ManualClock;
    use crate::limits::connections::HostRegistry;
    use crate::limits::rate::Quota;

    struct Parts {
        policies: ClientPolicies,
        window: Arc<Controller>,
        hosts: HostRegistry,
    }

    fn parts() -> Parts {
        let mut c = ClientsPolicy::default();
        c.limits.insert(
            "t".into(),
            ClientLimit {
                max_concurrent: None,
                models: Default::default(),
                quota: Quota {
                    rpm: Some(10),
                    tpm: Some(10_000),
                },
                enabled: true,
                mode: Mode::Enforce,
                api_keys: vec![],
                privileges: Default::default(),
            },
        );
        let clock = ManualClock::new(1_000_000);
        Parts {
            policies: ClientPolicies::build(&c, clock.clone(), None).unwrap(),
            window: Controller::new(AdaptiveConfig::default(), clock),
            hosts: HostRegistry::new(),
        }
    }

    fn admission(p: &Parts, estimate: u64, abort: AbortRefund) -> Admission {
        let mut a = Admission::new(abort);
        match p.policies.decide("t", None, estimate) {
            Decision::Admitted { charge, .. } => a.hold_charge(charge),
            _ => panic!("not admitted"),
        }
        a.hold_permit(p.window.try_acquire(false).unwrap());
        a.hold_slot(p.hosts.counter("h:1").try_acquire(0).unwrap());
        a
    }

    fn used(p: &Parts) -> (u64, u64) {
        let u = p.policies.peek("t").unwrap().used;
        (u.requests, u.tokens)
    }

    #[test]
    fn a_dropped_admission_settles_and_says_so() {
        let p = parts();
        let before = crate::metrics::metrics().admission_safety_net_total.get();
        drop(admission(&p, 900, AbortRefund::Unstarted));
        // Never sent: everything back.
        assert_eq!(used(&p), (0, 0));
        assert_eq!(p.window.inflight(), 0);
        assert_eq!(p.hosts.counter("h:1").active(), 0);
        assert!(crate::metrics::metrics().admission_safety_net_total.get() > before);
        // A finished one does not count.
        let mut a = admission(&p, 900, AbortRefund::Unstarted);
        a.finish(Outcome::Answered { usage: Some(10) });
        let after = crate::metrics::metrics().admission_safety_net_total.get();
        drop(a);
        assert_eq!(
            crate::metrics::metrics().admission_safety_net_total.get(),
            after
        );
        assert_eq!(used(&p), (1, 10));
    }

    #[test]
    fn a_client_gone_after_sending_pays_the_estimate_or_what_was_reported() {
        let p = parts();
        let mut a = admission(&p, 900, AbortRefund::Unstarted);
        a.mark_sent();
        let s = a.finish(Outcome::ClientGone {
            usage_seen: Some(1500),
        });
        assert_eq!(s.map(|s| s.tokens), Some(1500));
        let mut a = admission(&p, 900, AbortRefund::Unstarted);
        a.mark_sent();
        a.finish(Outcome::ClientGone {
            usage_seen: Some(5),
        });
        assert_eq!(used(&p), (2, 2400));
        // "none": even unsent, it stays.
        let mut a = admission(&p, 100, AbortRefund::None);
        a.finish(Outcome::ClientGone { usage_seen: None });
        assert_eq!(used(&p), (3, 2500));
        // Every way out frees the permit and the slot.
        assert_eq!(p.window.inflight(), 0);
        assert_eq!(p.hosts.counter("h:1").active(), 0);
    }

    #[test]
    fn refusal_gives_everything_back_and_failure_keeps_the_request() {
        let p = parts();
        admission(&p, 500, AbortRefund::Unstarted).refuse();
        assert_eq!(used(&p), (0, 0));
        let mut a = admission(&p, 500, AbortRefund::Unstarted);
        a.mark_sent();
        a.finish(Outcome::UpstreamFailed);
        assert_eq!(used(&p), (1, 0));
        assert_eq!(p.window.inflight(), 0);
    }
}
