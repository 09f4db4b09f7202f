//! An admitted request's charge, and how it ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::ClientStats;
use crate::limits::fleet::FleetQuotas;
use crate::limits::rate::{QuotaState, RateLimiter, Reservation, Usage};

/// An admitted request's charge: one request and its token estimate,
/// counted in the window it was admitted in. It ends one of three ways:
/// [`settle`](Charge::settle) (the tokens become the count given: actual
/// usage, or the estimate kept), [`refund_tokens`](Charge::refund_tokens)
/// (the upstream failed: the request stays counted, its tokens do not), or
/// [`refund_all`](Charge::refund_all) (refused after all: nothing stays).
/// Dropped without any of these, it stays as charged.
pub struct Charge {
    pub(super) limiter: Arc<RateLimiter>,
    pub(super) reservation: Reservation,
    pub(super) open: bool,
    pub(super) stats: Option<Arc<ClientStats>>,
    /// Fleet mode: where the charge's changes are counted for the fleet.
    pub(super) fleet: Option<(Arc<FleetQuotas>, Arc<str>)>,
    /// The same request's charge under its model's limits: it ends the
    /// way this one does.
    pub(super) linked: Option<Box<Charge>>,
}

/// When a refusal counted from the fleet may be retried: as the window
/// slides, at most a second (the fleet's counts move with every sync).
pub(super) fn state_wait(state: &QuotaState) -> u64 {
    state.reset_ms.clamp(1, 1000)
}

/// What a settlement counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Tokens counted for the request.
    pub tokens: u64,
    /// The count given was over what a window can count (and counted as
    /// that maximum).
    pub clamped: bool,
}

impl Charge {
    /// Tokens charged so far.
    pub fn tokens(&self) -> u64 {
        self.reservation.charged.tokens
    }

    /// Counts `tokens` for this request instead of what was charged.
    pub fn settle(mut self, tokens: u64) -> Settled {
        if let Some(l) = self.linked.take() {
            l.settle(tokens);
        }
        let before = self.reservation.charged.tokens;
        let clamped = self.limiter.settle_tokens(&mut self.reservation, tokens);
        if let Some((f, id)) = &self.fleet {
            let after = self.reservation.charged.tokens;
            f.record(id, self.reservation.window, 0, after as i64 - before as i64);
        }
        self.close();
        Settled {
            tokens: self.reservation.charged.tokens,
            clamped,
        }
    }

    /// Keeps the estimate as the count.
    pub fn keep(self) -> Settled {
        let estimate = self.tokens();
        self.settle(estimate)
    }

    /// Keeps the request counted and takes its tokens back (a failed
    /// upstream did no work worth charging).
    pub fn refund_tokens(self) -> Settled {
        self.settle(0)
    }

    /// Takes the whole charge back: the request was refused after all.
    pub fn refund_all(mut self) {
        if let Some(l) = self.linked.take() {
            l.refund_all();
        }
        self.limiter
            .refund(&self.reservation, self.reservation.charged);
        if let Some((f, id)) = &self.fleet {
            let c = self.reservation.charged;
            f.record(
                id,
                self.reservation.window,
                -(c.requests as i64),
                -(c.tokens as i64),
            );
        }
        self.reservation.charged = Usage::default();
        self.close();
    }

    fn close(&mut self) {
        if let Some(s) = &self.stats {
            s.tokens
                .fetch_add(self.reservation.charged.tokens, Ordering::Relaxed);
        }
        self.open = false;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.open {
            self.close();
        }
    }
}
