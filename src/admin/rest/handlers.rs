//! One handler per admin route: parse, call the service layer, answer.
//! The `#[utoipa::path]` above each is its OpenAPI description.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::admin::service::*;
use crate::limits::connections::HostInfo;
use crate::limits::RejectReason;
use crate::runtime::control::{ClientOverride, ClientRecord};

const CLIENT_SHAPE: &str = r#"{"rpm": N, "tpm": N, "enabled": true|false} (each optional, N >= 0)"#;
const NEW_CLIENT_SHAPE: &str =
    r#"{"id" (or "client_id"): "...", "rpm": N, "tpm": N, "enabled": true|false}"#;
const HOST_CAP_SHAPE: &str = r#"{"max_connections": N} with 0 <= N <= 4294967295"#;
const CHECK_SHAPE: &str = r#"{"tokens": N} with N >= 0"#;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = Health)))]
pub(super) async fn health(State(s): State<Admin>) -> Json<Health> {
    Json(s.health())
}

/// Readiness: 200 when the gateway can serve, 503 while it starts, drains,
/// or (fleet mode with `required`) cannot reach Redis.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub(super) async fn ready(State(s): State<Admin>) -> Response {
    let r = s.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(s): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics_text(),
    )
        .into_response()
}

/// Every configured client (from the config file and the API), and the
/// default quota.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients",
    responses((status = 200, body = ClientList), (status = 500, body = ErrorBody)))]
pub(super) async fn list_clients(State(s): State<Admin>) -> Result<Json<ClientList>, AdminError> {
    s.list_clients().await.map(Json)
}

/// A configured client.
#[utoipa::path(get, path = "/api/v1/clients/{id}", tag = "clients",
    params(ClientId),
    responses((status = 200, body = ClientRecord), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<ClientRecord>, AdminError> {
    s.get_client(&id).await.map(Json)
}

/// Creates or updates a client's limits (FlowGuard's call: the id in the
/// body, as `id` or `client_id`): 201 when the client had no API override,
/// 200 when it replaced one.
#[utoipa::path(post, path = "/api/v1/clients", tag = "clients",
    request_body = NewClient,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ClientRecord, description = "Created"),
        (status = 200, body = ClientRecord, description = "Updated"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody,
            description = "state_not_saved: the state file could not be written; nothing changed")))]
pub(super) async fn post_client(
    State(s): State<Admin>,
    body: Bytes,
) -> Result<Response, AdminError> {
    let c: NewClient = parse_body(&body, NEW_CLIENT_SHAPE)?;
    let o = ClientOverride {
        rpm: c.rpm,
        tpm: c.tpm,
        enabled: c.enabled,
    };
    let set = s.set_client(&c.id, o).await?;
    let status = if set.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(set.client)).into_response())
}

/// Creates or replaces a client's API override.
#[utoipa::path(put, path = "/api/v1/clients/{id}", tag = "clients",
    params(ClientId),
    request_body = ClientLimits,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ClientRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody,
            description = "state_not_saved: the state file could not be written; nothing changed")))]
pub(super) async fn put_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ClientRecord>, AdminError> {
    let l: ClientLimits = parse_body(&body, CLIENT_SHAPE)?;
    Ok(Json(s.set_client(&id, l.into()).await?.client))
}

/// Removes a client's API override; its file limits (if any) apply again.
#[utoipa::path(delete, path = "/api/v1/clients/{id}", tag = "clients",
    params(ClientId),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ClientDeleted), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody,
            description = "state_not_saved: the state file could not be written; nothing changed")))]
pub(super) async fn delete_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<ClientDeleted>, AdminError> {
    s.delete_client(&id).await.map(Json)
}

/// What a client did (configured clients) and its usage now (any client).
#[utoipa::path(get, path = "/api/v1/clients/{id}/stats", tag = "clients",
    params(ClientId),
    responses((status = 200, body = ClientStatsReport), (status = 400, body = ErrorBody)))]
pub(super) async fn client_stats(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Json<ClientStatsReport>, AdminError> {
    s.client_stats(&id).map(Json)
}

/// Requests by outcome, tokens, and every configured client's counters.
#[utoipa::path(get, path = "/api/v1/stats", tag = "clients",
    responses((status = 200, body = Stats)))]
pub(super) async fn stats(State(s): State<Admin>) -> Json<Stats> {
    Json(s.stats())
}

/// What a refused check answers with 413: the estimate can never fit (a
/// check result), or the body is over the limit (an error).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes a response; never built
pub(super) enum CheckTooLarge {
    Refused(CheckResult),
    Error(ErrorBody),
}

/// The limiter as a service: `key` is a client id under the same policies
/// as proxied traffic; an allowed check charges 1 request and `tokens`,
/// exactly like a proxied request. Sends the same rate-limit headers.
#[utoipa::path(post, path = "/api/v1/ratelimit/{key}/check", tag = "clients",
    params(CheckKey),
    request_body(content = Option<CheckRequest>, description = "Optional; an empty body checks 0 tokens"),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CheckResult, description = "Allowed (and charged)"),
        (status = 429, body = CheckResult, description = "Over the quota; Retry-After says when to try again",
            headers(("Retry-After" = u64, description = "Seconds"))),
        (status = 413, body = CheckTooLarge, description = "The estimate can never fit the client's TPM, or the body is too large"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn check(
    State(s): State<Admin>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, AdminError> {
    // No body (or a JSON null): 0 tokens.
    let req: CheckRequest = if body.is_empty() || body.trim_ascii() == b"null" {
        CheckRequest::default()
    } else {
        parse_body(&body, CHECK_SHAPE)?
    };
    let c = s.check(&key, req.tokens)?;
    let mut headers = HeaderMap::new();
    if let Some(q) = &c.state {
        let Ok(()) = crate::proxy::headers::rate_limit_headers(q, c.exceeded, |k, v| {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.insert(k.name().clone(), v);
            }
            Ok::<(), std::convert::Infallible>(())
        });
    }
    let status = c.refused.map_or(StatusCode::OK, RejectReason::status);
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(c.retry_after_ms.div_ceil(1000).max(1)),
        );
    }
    Ok((status, headers, Json(c.result)).into_response())
}

/// The adaptive concurrency windows.
#[utoipa::path(get, path = "/api/v1/backpressure", tag = "limits",
    responses((status = 200, body = Backpressure)))]
pub(super) async fn backpressure(State(s): State<Admin>) -> Json<Backpressure> {
    Json(s.backpressure())
}

/// Every host with a connection counter: backends, and forward-proxy
/// destinations in use or capped.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "limits",
    responses((status = 200, body = HostList)))]
pub(super) async fn list_hosts(State(s): State<Admin>) -> Json<HostList> {
    Json(s.list_hosts())
}

/// A host's connections and cap.
#[utoipa::path(get, path = "/api/v1/hosts/{host}", tag = "limits",
    params(HostName, Which),
    responses((status = 200, body = HostInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn get_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
) -> Result<Json<HostInfo>, AdminError> {
    s.get_host(&host, which).map(Json)
}

/// Overrides a host's connection cap at once, for running and future
/// requests alike (0 = no cap). Persisted first: a failed write changes
/// nothing.
#[utoipa::path(put, path = "/api/v1/hosts/{host}", tag = "limits",
    params(HostName, Which),
    request_body = HostCap,
    security(("bearer" = [])),
    responses((status = 200, body = HostInfo),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 500, body = ErrorBody,
            description = "state_not_saved: the state file could not be written; nothing changed")))]
pub(super) async fn put_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
    body: Bytes,
) -> Result<Json<HostInfo>, AdminError> {
    let cap: HostCap = parse_body(&body, HOST_CAP_SHAPE)?;
    s.set_host_cap(&host, which, Some(cap.max_connections))
        .await
        .map(Json)
}

/// Drops a host's API cap; the config's applies again.
#[utoipa::path(delete, path = "/api/v1/hosts/{host}", tag = "limits",
    params(HostName, Which),
    security(("bearer" = [])),
    responses((status = 200, body = HostInfo),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody,
            description = "state_not_saved: the state file could not be written; nothing changed")))]
pub(super) async fn delete_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
) -> Result<Json<HostInfo>, AdminError> {
    s.set_host_cap(&host, which, None).await.map(Json)
}

/// Reads the config file again: 200 with what needs a restart, or 400
/// `config_rejected` with every error (the old config keeps serving).
#[utoipa::path(post, path = "/api/v1/reload", tag = "config",
    security(("bearer" = [])),
    responses((status = 200, body = Reloaded),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn reload(State(s): State<Admin>) -> Result<Json<Reloaded>, AdminError> {
    s.reload().await.map(Json)
}

/// This instance's view of the fleet (404 when fleet mode is off).
#[utoipa::path(get, path = "/api/v1/fleet", tag = "fleet",
    responses((status = 200, body = FleetReport), (status = 404, body = ErrorBody)))]
pub(super) async fn fleet(State(s): State<Admin>) -> Result<Json<FleetReport>, AdminError> {
    s.fleet().map(Json)
}
