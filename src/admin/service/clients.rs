//! Clients: the API's overrides of client limits, their stats, and the
//! limiter as a service.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::types::*;
use super::{blocking, Admin, AdminError};
use crate::limits::clients::Decision;
use crate::limits::rate::{QuotaState, MAX_TPM};
use crate::runtime::control::{ClientOverride, ClientRecord};

impl Admin {
    /// Every configured client, and the default quota.
    pub async fn list_clients(&self) -> Result<ClientList, AdminError> {
        let control = self.control.clone();
        let clients = blocking(move || control.clients()).await?;
        let rt = self.runtime.load();
        Ok(ClientList {
            clients,
            default: rt.config.clients.policy.default.map(|q| QuotaBody {
                rpm: q.rpm,
                tpm: q.tpm,
            }),
        })
    }

    /// A configured client. The control plane's lock may be held by a change
    /// (a runtime rebuild, a state-file write): looked up on a blocking
    /// thread, never on the admin runtime's worker.
    pub async fn get_client(&self, id: &str) -> Result<ClientRecord, AdminError> {
        check_id(id)?;
        let (control, i) = (self.control.clone(), id.to_string());
        blocking(move || control.client(&i))
            .await?
            .ok_or_else(|| AdminError::not_found(format!("no configured client {}", shown(id))))
    }

    /// Creates or replaces the API override of `id`'s limits.
    pub async fn set_client(&self, id: &str, o: ClientOverride) -> Result<ClientSet, AdminError> {
        // What was set (absent values fall back to the default's, as the
        // control plane layers them), not a second read: a concurrent call
        // may change the client again before this one answers.
        let default = self
            .runtime
            .load()
            .config
            .clients
            .policy
            .default
            .unwrap_or_default();
        let client = ClientRecord {
            id: id.to_string(),
            rpm: o.rpm.or(default.rpm),
            tpm: o.tpm.or(default.tpm),
            enabled: o.enabled,
            source: "api",
        };
        let (control, i) = (self.control.clone(), id.to_string());
        let replaced = blocking(move || control.put_client(&i, o)).await??;
        tracing::info!(target: "admin", client = %id, "client limits set through the admin API");
        Ok(ClientSet {
            client,
            created: !replaced,
        })
    }

    /// Removes `id`'s API override; the file's limits (if any) apply again.
    pub async fn delete_client(&self, id: &str) -> Result<ClientDeleted, AdminError> {
        check_id(id)?;
        let (control, i) = (self.control.clone(), id.to_string());
        let now = blocking(move || {
            control
                .delete_client(&i)
                .map(|deleted| deleted.then(|| control.client(&i)))
        })
        .await??;
        let Some(now) = now else {
            return Err(AdminError::not_found(format!(
                "client {} has no API override",
                shown(id)
            )));
        };
        tracing::info!(target: "admin", client = %id, "client override removed");
        Ok(ClientDeleted {
            deleted: id.to_string(),
            now,
        })
    }

    /// What the client did (configured clients) and its current usage (any
    /// client).
    pub fn client_stats(&self, id: &str) -> Result<ClientStatsReport, AdminError> {
        check_id(id)?;
        let rt = self.runtime.load();
        let p = &rt.clients;
        let stats = p.configured(id).map(|c| c.stats.counters());
        Ok(ClientStatsReport {
            id: id.to_string(),
            configured: stats.is_some(),
            stats,
            usage: usage(p.peek(id)),
            models: p
                .peek_models(id)
                .into_iter()
                .map(|(m, q)| (m, usage(Some(q))))
                .collect(),
        })
    }

    /// Requests by outcome, tokens, and every configured client's stats.
    pub fn stats(&self) -> Stats {
        let rt = self.runtime.load();
        let m = crate::metrics::metrics();
        let mut by_outcome = BTreeMap::new();
        let mut requests = 0u64;
        for family in m.registry.gather() {
            if family.name() != "floodgate_requests_total" {
                continue;
            }
            for metric in family.get_metric() {
                let outcome = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "outcome")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                let v = metric.get_counter().get_value() as u64;
                requests += v;
                *by_outcome.entry(outcome).or_insert(0) += v;
            }
        }
        Stats {
            requests,
            by_outcome,
            tokens_configured_clients: rt
                .clients
                .all_configured()
                .map(|c| c.stats.tokens.load(Ordering::Relaxed))
                .sum(),
            clients: rt
                .clients
                .all_configured()
                .map(|c| (c.id.clone(), c.stats.counters()))
                .collect(),
        }
    }

    /// The limiter as a service: `key` is a client id under the same
    /// policies as proxied traffic; an allowed check charges 1 request and
    /// `tokens`, exactly like a proxied request.
    pub fn check(&self, key: &str, tokens: u64) -> Result<Check, AdminError> {
        crate::limits::clients::check_client_id(key.as_bytes())
            .map_err(|e| AdminError::bad_request(format!("key {e}")))?;
        if tokens > MAX_TPM {
            return Err(AdminError::bad_request(format!(
                "tokens must be at most {MAX_TPM}"
            )));
        }
        let rt = self.runtime.load();
        let (refused, state, exceeded, retry_after_ms) = match rt.clients.decide(key, None, tokens)
        {
            Decision::Unlimited => (None, None, None, 0),
            Decision::Admitted { charge, state } => {
                let estimate = charge.tokens();
                charge.settle(estimate);
                (None, Some(state), None, 0)
            }
            Decision::Refused {
                reason, refusal, ..
            } => (
                Some(reason),
                Some(refusal.state),
                Some(refusal.exceeded),
                refusal.retry_after_ms,
            ),
        };
        let tight = state.and_then(|q| q.tightest(exceeded));
        Ok(Check {
            result: CheckResult {
                allowed: refused.is_none(),
                remaining: tight.map(|t| t.2),
                limit: tight.map(|t| t.1),
                reset_after_ms: state.map_or(0, |q| q.reset_ms),
            },
            refused,
            retry_after_ms,
            state,
            exceeded,
        })
    }
}

/// A client id the API accepts (400 otherwise).
fn check_id(id: &str) -> Result<(), AdminError> {
    crate::limits::clients::check_client_id(id.as_bytes())
        .map_err(|e| AdminError::bad_request(format!("client id {e}")))
}

/// An id for a message: quoted, and cut after 64 characters.
fn shown(id: &str) -> String {
    match id.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}…", &id[..i]),
        None => format!("{id:?}"),
    }
}

fn usage(state: Option<QuotaState>) -> Usage {
    match state {
        None => Usage::default(),
        Some(q) => Usage {
            limited: true,
            rpm: q.quota.rpm,
            tpm: q.quota.tpm,
            requests_used: Some(q.used.requests),
            tokens_used: Some(q.used.tokens),
            requests_remaining: q.requests_remaining(),
            tokens_remaining: q.tokens_remaining(),
            reset_after_ms: Some(q.reset_ms),
        },
    }
}
