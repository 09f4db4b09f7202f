//! One quota decision: the client's limits, then its model's, then (fleet
//! mode) the fleet's counts — charged together or not at all.

use std::sync::Arc;

use super::charge::{state_wait, Charge};
use super::concurrency::{self, InFlight};
use super::{ClientPolicies, ConfiguredClient, Decision};
use crate::limits::fleet::{FleetQuotas, Verdict};
use crate::limits::rate::{Exceeded, OverQuota, Quota, QuotaState, RateLimiter, Usage};
use crate::limits::RejectReason;

/// Over `max_concurrent`: the client's requests in flight, and its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooMany {
    pub max_concurrent: u64,
}

/// One set of limits a request is judged by: its quota, the counter, the
/// key in the counter, and (fleet mode) the fleet key.
struct Scope<'a> {
    quota: Quota,
    limiter: &'a Arc<RateLimiter>,
    hash: u64,
    id: &'a str,
    model: Option<&'a str>,
}

impl Scope<'_> {
    /// The fleet's key of these limits: built only in fleet mode, so that a
    /// decision without a fleet allocates nothing.
    fn fleet_key(&self) -> std::borrow::Cow<'_, str> {
        match self.model {
            None => std::borrow::Cow::Borrowed(self.id),
            Some(m) => std::borrow::Cow::Owned(format!("{}\u{1f}{m}", self.id)),
        }
    }
}

fn exceeded_reason(e: Exceeded) -> RejectReason {
    match e {
        Exceeded::Requests => RejectReason::RpmExceeded,
        Exceeded::Tokens => RejectReason::TpmExceeded,
    }
}

impl ClientPolicies {
    /// A place under the client's `max_concurrent` (`Ok(None)`: no cap),
    /// held until the request's response ends.
    pub fn enter(&self, id: &str) -> Result<Option<InFlight>, TooMany> {
        match self.clients.get(id) {
            Some(c) if !c.enabled => Ok(None),
            Some(c) => match c.max_concurrent {
                None => Ok(None),
                Some(cap) => concurrency::enter(&c.inflight, cap)
                    .map(Some)
                    .ok_or(TooMany {
                        max_concurrent: cap,
                    }),
            },
            None => match self.policy.default_max_concurrent {
                None => Ok(None),
                Some(cap) => self
                    .unlisted_inflight
                    .enter(self.hasher.hash_one(id), cap)
                    .map(Some)
                    .ok_or(TooMany {
                        max_concurrent: cap,
                    }),
            },
        }
    }

    /// The client's own limits.
    fn client_scope<'a>(
        &'a self,
        id: &'a str,
        configured: Option<&'a Arc<ConfiguredClient>>,
    ) -> Option<Scope<'a>> {
        let (quota, limiter, hash, _) = self.policy_of(id, configured)?;
        Some(Scope {
            quota,
            limiter,
            hash,
            id,
            model: None,
        })
    }

    /// The limits of `model` for the client.
    fn model_scope<'a>(
        &'a self,
        id: &'a str,
        configured: Option<&'a Arc<ConfiguredClient>>,
        model: &'a str,
    ) -> Option<Scope<'a>> {
        match configured {
            Some(c) if !c.enabled => None,
            Some(c) => c.models.get(model).map(|(quota, limiter)| Scope {
                quota: *quota,
                limiter,
                hash: 0,
                id,
                model: Some(model),
            }),
            None => Some(Scope {
                quota: *self.policy.models.get(model)?,
                limiter: self.unlisted.as_ref()?,
                hash: self.hasher.hash_one((id, model)),
                id,
                model: Some(model),
            }),
        }
    }

    /// Checks and charges one request of `tokens` for `id` (for `model`,
    /// when it names one): the client's quota and the model's must both
    /// admit it; a refusal by either charges nothing. A cost that can
    /// never fit a TPM is refused as `estimate_too_large` first.
    pub fn decide(&self, id: &str, model: Option<&str>, tokens: u64) -> Decision {
        let configured = self.clients.get(id);
        let d = self.decide_inner(id, model, tokens, configured);
        if let Some(c) = configured {
            c.stats.count(&d);
        }
        d
    }

    fn decide_inner(
        &self,
        id: &str,
        model: Option<&str>,
        tokens: u64,
        configured: Option<&Arc<ConfiguredClient>>,
    ) -> Decision {
        let mode = match configured {
            Some(c) => c.mode,
            None => self.policy.mode,
        };
        let client = self.client_scope(id, configured);
        let by_model = model.and_then(|m| self.model_scope(id, configured, m));
        if client.is_none() && by_model.is_none() {
            return Decision::Unlimited;
        }
        let refused = |reason, refusal, scope_is_model: bool| Decision::Refused {
            reason,
            refusal,
            mode,
            model: if scope_is_model {
                model.map(str::to_string)
            } else {
                None
            },
        };
        // Never fits: refused before anything is counted.
        for (s, is_model) in [(&client, false), (&by_model, true)] {
            if let Some(s) = s {
                if s.quota.tpm.is_some_and(|t| tokens > t) {
                    let refusal = OverQuota {
                        exceeded: Exceeded::Tokens,
                        retry_after_ms: 0,
                        state: s.limiter.peek(s.hash, s.quota),
                    };
                    return refused(RejectReason::EstimateTooLarge, refusal, is_model);
                }
            }
        }
        // The client's scope first (it carries the stats), then the model's;
        // a refusal by the second gives back what the first took. No heap
        // allocation on the way.
        let first = match client {
            Some(s) => match self.charge(&s, tokens, configured.map(|c| c.stats.clone())) {
                Ok(c) => Some(c),
                Err((reason, refusal)) => return refused(reason, refusal, false),
            },
            None => None,
        };
        let second = match by_model {
            Some(s) => match self.charge(&s, tokens, None) {
                Ok(c) => Some(c),
                Err((reason, refusal)) => {
                    if let Some((c, _)) = first {
                        c.refund_all();
                    }
                    return refused(reason, refusal, true);
                }
            },
            None => None,
        };
        match (first, second) {
            (Some((mut charge, state)), Some((linked, _))) => {
                charge.linked = Some(Box::new(linked));
                Decision::Admitted { charge, state }
            }
            (Some((charge, state)), None) | (None, Some((charge, state))) => {
                Decision::Admitted { charge, state }
            }
            (None, None) => Decision::Unlimited,
        }
    }

    /// Checks and charges one scope (and, in fleet mode, judges it by the
    /// fleet's counts too).
    fn charge(
        &self,
        s: &Scope<'_>,
        tokens: u64,
        stats: Option<Arc<super::ClientStats>>,
    ) -> Result<(Charge, QuotaState), (RejectReason, OverQuota)> {
        let (reservation, state) = s
            .limiter
            .check_and_charge(s.hash, tokens, s.quota)
            .map_err(|r| (exceeded_reason(r.exceeded), r))?;
        let mut charge = Charge {
            limiter: s.limiter.clone(),
            reservation,
            open: true,
            stats,
            fleet: None,
            linked: None,
        };
        let Some(f) = &self.fleet else {
            return Ok((charge, state));
        };
        let key = s.fleet_key();
        match self.fleet_check(f, &key, s.quota, state) {
            Ok(state) => {
                let c = charge.reservation.charged;
                f.record(
                    &key,
                    charge.reservation.window,
                    c.requests as i64,
                    c.tokens as i64,
                );
                charge.fleet = Some((f.clone(), Arc::from(&*key)));
                Ok((charge, state))
            }
            Err(e) => {
                charge.refund_all();
                Err(e)
            }
        }
    }

    /// Judges an admission by this instance's own counts against the
    /// fleet's: `own + others` under the quota, or, while the store is
    /// unreachable, `on_redis_down`. The state returned counts the fleet.
    fn fleet_check(
        &self,
        f: &FleetQuotas,
        key: &str,
        quota: Quota,
        state: QuotaState,
    ) -> Result<QuotaState, (RejectReason, OverQuota)> {
        let over = |used: Usage, q: Quota| {
            if q.rpm.is_some_and(|l| used.requests > l) {
                Some(Exceeded::Requests)
            } else if q.tpm.is_some_and(|l| used.tokens > l) {
                Some(Exceeded::Tokens)
            } else {
                None
            }
        };
        let refuse = |exceeded, state| {
            Err((
                exceeded_reason(exceeded),
                OverQuota {
                    exceeded,
                    retry_after_ms: state_wait(&state),
                    state,
                },
            ))
        };
        match f.verdict(key, quota) {
            Verdict::Shared(others) => {
                let total = QuotaState {
                    used: Usage {
                        requests: state.used.requests.saturating_add(others.requests),
                        tokens: state.used.tokens.saturating_add(others.tokens),
                    },
                    ..state
                };
                match over(total.used, quota) {
                    Some(e) => refuse(e, total),
                    None => Ok(total),
                }
            }
            Verdict::Alone(share) => match over(state.used, share) {
                Some(e) => refuse(e, state),
                None => Ok(state),
            },
            Verdict::Deny => Err((
                RejectReason::Backpressure,
                OverQuota {
                    exceeded: Exceeded::Requests,
                    retry_after_ms: 1000,
                    state,
                },
            )),
        }
    }

    /// Current usage of `id` against its quota (the fleet's, in fleet
    /// mode), charging nothing.
    pub fn peek(&self, id: &str) -> Option<QuotaState> {
        let s = self.client_scope(id, self.clients.get(id))?;
        Some(self.peek_scope(&s))
    }

    /// Current usage of `id` under each model limit that applies to it.
    pub fn peek_models(&self, id: &str) -> Vec<(String, QuotaState)> {
        let configured = self.clients.get(id);
        let names: Vec<&String> = match configured {
            Some(c) => c.models.keys().collect(),
            None => self.policy.models.keys().collect(),
        };
        let mut out: Vec<(String, QuotaState)> = names
            .into_iter()
            .filter_map(|m| {
                let s = self.model_scope(id, configured, m)?;
                Some((m.clone(), self.peek_scope(&s)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn peek_scope(&self, s: &Scope<'_>) -> QuotaState {
        let mut st = s.limiter.peek(s.hash, s.quota);
        if let Some(f) = &self.fleet {
            let o = f.others(&s.fleet_key());
            st.used.requests = st.used.requests.saturating_add(o.requests);
            st.used.tokens = st.used.tokens.saturating_add(o.tokens);
        }
        st
    }

    /// Whether `model` has limits configured (the metric label keeps only
    /// those; every other model is `other`).
    pub fn model_label<'a>(&self, model: &'a str) -> &'a str {
        let known = self.policy.models.contains_key(model)
            || self
                .policy
                .limits
                .values()
                .any(|l| l.models.contains_key(model));
        if known {
            model
        } else {
            "other"
        }
    }
}
