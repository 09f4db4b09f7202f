//! Clients: the API's overrides of client limits, their stats, and the
//! limiter as a service (`/api/v1/ratelimit/{key}/check`).

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{bad_request, blocking, change_failed, json_body, not_found, Admin, ApiError};
use crate::limits::clients::Decision;
use crate::runtime::control::ClientOverride;

pub(super) async fn list_clients(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    let default = rt.config.clients.policy.default;
    Json(serde_json::json!({
        "clients": s.control.clients(),
        "default": default.map(|q| serde_json::json!({ "rpm": q.rpm, "tpm": q.tpm })),
    }))
}

pub(super) async fn get_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.control
        .client(&id)
        .map(|c| Json(c).into_response())
        .ok_or_else(|| not_found(format!("no configured client {id:?}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    id: String,
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

const CLIENT_SHAPE: &str = r#"{"rpm": N, "tpm": N, "enabled": true|false} (each optional, N >= 0)"#;

/// `POST /api/v1/clients` with `{"id", "rpm", "tpm", "enabled"}`: creates
/// an API client (409 if it exists).
pub(super) async fn post_client(State(s): State<Admin>, body: Bytes) -> Result<Response, ApiError> {
    let c: NewClient = json_body(
        &body,
        r#"{"id": "...", "rpm": N, "tpm": N, "enabled": bool}"#,
    )?;
    if s.control.client(&c.id).is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "client {:?} exists; PUT /api/v1/clients/{{id}} replaces it",
                c.id
            ),
        ));
    }
    let o = ClientOverride {
        rpm: c.rpm,
        tpm: c.tpm,
        enabled: c.enabled,
    };
    let (control, id) = (s.control.clone(), c.id.clone());
    blocking(move || control.put_client(&id, o))
        .await?
        .map_err(change_failed)?;
    let rec = s.control.client(&c.id);
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// `PUT /api/v1/clients/{id}`: creates or replaces the API override.
pub(super) async fn put_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let o: ClientOverride = json_body(&body, CLIENT_SHAPE)?;
    let (control, i) = (s.control.clone(), id.clone());
    blocking(move || control.put_client(&i, o))
        .await?
        .map_err(change_failed)?;
    tracing::info!(target: "admin", client = %id, "client limits set through the admin API");
    Ok(Json(s.control.client(&id)).into_response())
}

/// `DELETE /api/v1/clients/{id}`: drops the API override; the file's limits
/// (if any) apply again.
pub(super) async fn delete_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (control, i) = (s.control.clone(), id.clone());
    match blocking(move || control.delete_client(&i)).await? {
        Ok(true) => {
            tracing::info!(target: "admin", client = %id, "client override removed");
            Ok(
                Json(serde_json::json!({ "deleted": id, "now": s.control.client(&id) }))
                    .into_response(),
            )
        }
        Ok(false) => Err(not_found(format!("client {id:?} has no API override"))),
        Err(e) => Err(change_failed(e)),
    }
}

fn usage_json(state: Option<crate::limits::rate::QuotaState>) -> serde_json::Value {
    match state {
        None => serde_json::json!({ "limited": false }),
        Some(q) => serde_json::json!({
            "limited": true,
            "rpm": q.quota.rpm,
            "tpm": q.quota.tpm,
            "requests_used": q.used.requests,
            "tokens_used": q.used.tokens,
            "requests_remaining": q.requests_remaining(),
            "tokens_remaining": q.tokens_remaining(),
            "reset_after_ms": q.reset_ms,
        }),
    }
}

/// `GET /api/v1/clients/{id}/stats`: what the client did (configured
/// clients) and its current usage (any client).
pub(super) async fn client_stats(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let rt = s.runtime.load();
    let p = &rt.clients;
    let stats = p.configured(&id).map(|c| c.stats.to_json());
    Json(serde_json::json!({
        "id": id,
        "configured": stats.is_some(),
        "stats": stats,
        "usage": usage_json(p.peek(&id)),
        "models": p
            .peek_models(&id)
            .into_iter()
            .map(|(m, q)| (m, usage_json(Some(q))))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// `GET /api/v1/stats`: requests by outcome, tokens, and every configured
/// client's stats.
pub(super) async fn stats(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    let m = crate::metrics::metrics();
    let mut outcomes = serde_json::Map::new();
    let mut total = 0u64;
    for family in m.registry.gather() {
        if family.name() == "floodgate_requests_total" {
            for metric in family.get_metric() {
                let outcome = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "outcome")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                let v = metric.get_counter().get_value() as u64;
                total += v;
                let e = outcomes.entry(outcome).or_insert(0u64.into());
                *e = (e.as_u64().unwrap_or(0) + v).into();
            }
        }
    }
    let clients: serde_json::Map<String, serde_json::Value> = rt
        .clients
        .all_configured()
        .map(|c| (c.id.clone(), c.stats.to_json()))
        .collect();
    let tokens: u64 = rt
        .clients
        .all_configured()
        .map(|c| c.stats.tokens.load(Ordering::Relaxed))
        .sum();
    Json(serde_json::json!({
        "requests": total,
        "by_outcome": outcomes,
        "tokens_configured_clients": tokens,
        "clients": clients,
    }))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    tokens: u64,
}

/// `POST /api/v1/ratelimit/{key}/check` with `{"tokens": N}`: the limiter
/// as a service. `key` is a client id under the same policies as proxied
/// traffic; an allowed check charges 1 request and N tokens.
pub(super) async fn check(
    State(s): State<Admin>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::limits::clients::check_client_id(key.as_bytes())
        .map_err(|e| bad_request(format!("key {e}")))?;
    let b: CheckBody = if body.is_empty() {
        CheckBody::default()
    } else {
        json_body(&body, r#"{"tokens": N} with N >= 0"#)?
    };
    let rt = s.runtime.load();
    let (status, allowed, state, refused, retry_ms) = match rt.clients.decide(&key, None, b.tokens)
    {
        Decision::Unlimited => (StatusCode::OK, true, None, None, 0),
        Decision::Admitted { charge, state } => {
            let estimate = charge.tokens();
            charge.settle(estimate);
            (StatusCode::OK, true, Some(state), None, 0)
        }
        Decision::Refused {
            reason, refusal, ..
        } => (
            reason.status(),
            false,
            Some(refusal.state),
            Some(refusal.exceeded),
            refusal.retry_after_ms,
        ),
    };
    let tight = state.and_then(|q| q.tightest(refused));
    let body = serde_json::json!({
        "allowed": allowed,
        "remaining": tight.map(|t| t.2),
        "limit": tight.map(|t| t.1),
        "reset_after_ms": state.map_or(0, |q| q.reset_ms),
    });
    let mut headers = HeaderMap::new();
    if let Some(q) = &state {
        for (k, v) in crate::proxy::headers::rate_limit_headers(q, refused) {
            headers.insert(k.0, v);
        }
    }
    if !allowed && status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_ms.div_ceil(1000).max(1)),
        );
    }
    Ok((status, headers, Json(body)).into_response())
}
