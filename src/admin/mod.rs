//! The admin endpoint (axum) on `server.admin_listen`. Runs as a Pingora
//! background service, off the request path.
//!
//! - `GET /health`, `GET /ready`, `GET /metrics`
//! - `GET|POST /api/v1/clients`, `GET|PUT|DELETE /api/v1/clients/{id}`,
//!   `GET /api/v1/clients/{id}/stats`, `GET /api/v1/stats`
//! - `POST /api/v1/ratelimit/{key}/check`: the limiter as a service
//! - `GET /api/v1/hosts`, `GET|PUT|DELETE /api/v1/hosts/{host}`
//! - `GET /api/v1/backpressure`
//! - `POST /api/v1/reload`
//!
//! With `admin_token_env` set, every call that changes something needs
//! `Authorization: Bearer <token>`. Errors are JSON `{"error", "message"}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::de::DeserializeOwned;

use crate::limits::clients::Decision;
use crate::runtime::control::{ClientOverride, ControlPlane};
use crate::runtime::SharedRuntime;

/// What the admin handlers can see.
#[derive(Clone)]
pub struct Admin {
    pub runtime: SharedRuntime,
    /// Set once the admin endpoint serves.
    pub ready: Arc<AtomicBool>,
    pub control: Arc<ControlPlane>,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
}

/// The admin router; handlers are plain functions, testable without a socket.
pub fn router(state: Admin) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/clients", get(list_clients).post(post_client))
        .route(
            "/api/v1/clients/{id}",
            get(get_client).put(put_client).delete(delete_client),
        )
        .route("/api/v1/clients/{id}/stats", get(client_stats))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/ratelimit/{key}/check", post(check))
        .route("/api/v1/backpressure", get(backpressure))
        .route("/api/v1/hosts", get(list_hosts))
        .route(
            "/api/v1/hosts/{host}",
            get(get_host).put(put_host).delete(delete_host),
        )
        .route("/api/v1/reload", post(reload))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// One error type for the admin surface.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1, "message": self.2 });
        (self.0, Json(body)).into_response()
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", message)
}

/// Parses a JSON body, answering 400 with serde's message on bad input.
fn json_body<T: DeserializeOwned>(body: &Bytes, expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("expected {expected}: {e}")))
}

/// Every call that changes something needs the bearer token when one is set.
async fn auth(State(s): State<Admin>, req: Request, next: Next) -> Response {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    if let (true, Some(token)) = (mutating, &s.token) {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let equal: bool =
            subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
        if !equal {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call needs Authorization: Bearer <admin token>".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(s): State<Admin>) -> impl IntoResponse {
    let ok = s.ready.load(Ordering::Acquire);
    crate::metrics::metrics().ready.set(i64::from(ok));
    let rt = s.runtime.load();
    let body = serde_json::json!({
        "ready": ok,
        "routes": rt.router.routes().len(),
        "upstreams": rt.upstreams.len(),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    crate::metrics::export_hosts(&rt.hosts.list());
    let scopes: Vec<_> = rt
        .adaptive_windows()
        .into_iter()
        .map(|sc| (sc.name.clone(), sc.controller.snapshot()))
        .collect();
    crate::metrics::export_backpressure(&scopes);
    crate::metrics::metrics()
        .ready
        .set(i64::from(s.ready.load(Ordering::Acquire)));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}

// ---- clients

async fn list_clients(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    let default = rt.config.clients.policy.default;
    Json(serde_json::json!({
        "clients": s.control.clients(),
        "default": default.map(|q| serde_json::json!({ "rpm": q.rpm, "tpm": q.tpm })),
    }))
}

async fn get_client(State(s): State<Admin>, Path(id): Path<String>) -> Result<Response, ApiError> {
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
async fn post_client(State(s): State<Admin>, body: Bytes) -> Result<Response, ApiError> {
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
    s.control.put_client(&c.id, o).map_err(bad_request)?;
    let rec = s.control.client(&c.id);
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// `PUT /api/v1/clients/{id}`: creates or replaces the API override.
async fn put_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let o: ClientOverride = json_body(&body, CLIENT_SHAPE)?;
    s.control.put_client(&id, o).map_err(bad_request)?;
    tracing::info!(target: "admin", client = %id, "client limits set through the admin API");
    Ok(Json(s.control.client(&id)).into_response())
}

/// `DELETE /api/v1/clients/{id}`: drops the API override; the file's limits
/// (if any) apply again.
async fn delete_client(
    State(s): State<Admin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match s.control.delete_client(&id) {
        Ok(true) => {
            tracing::info!(target: "admin", client = %id, "client override removed");
            Ok(
                Json(serde_json::json!({ "deleted": id, "now": s.control.client(&id) }))
                    .into_response(),
            )
        }
        Ok(false) => Err(not_found(format!("client {id:?} has no API override"))),
        Err(e) => Err(bad_request(e)),
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
async fn client_stats(State(s): State<Admin>, Path(id): Path<String>) -> impl IntoResponse {
    let rt = s.runtime.load();
    let p = &rt.clients;
    let stats = p.configured(&id).map(|c| c.stats.to_json());
    Json(serde_json::json!({
        "id": id,
        "configured": stats.is_some(),
        "stats": stats,
        "usage": usage_json(p.peek(&id)),
    }))
}

/// `GET /api/v1/stats`: requests by outcome, tokens, and every configured
/// client's stats.
async fn stats(State(s): State<Admin>) -> impl IntoResponse {
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
async fn check(
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
    let (status, allowed, state, refused, retry_ms) = match rt.clients.decide(&key, b.tokens) {
        Decision::Unlimited => (StatusCode::OK, true, None, None, 0),
        Decision::Admitted { charge, state } => {
            charge.settle(None);
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
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
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

// ---- backpressure, hosts, reload

/// `GET /api/v1/backpressure`: the gateway-wide window at the top level
/// (`enabled: false` when there is none), each upstream's under `upstreams`.
async fn backpressure(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    let mut out = match &rt.adaptive {
        Some(sc) => {
            let mut v = serde_json::to_value(sc.controller.snapshot()).unwrap_or_default();
            v["enabled"] = true.into();
            v
        }
        None => serde_json::json!({ "enabled": false }),
    };
    let upstreams: serde_json::Map<String, serde_json::Value> = rt
        .upstreams
        .iter()
        .filter_map(|u| u.adaptive.as_ref())
        .map(|sc| {
            (
                sc.name.clone(),
                serde_json::to_value(sc.controller.snapshot()).unwrap_or_default(),
            )
        })
        .collect();
    out["upstreams"] = upstreams.into();
    Json(out)
}

async fn list_hosts(State(s): State<Admin>) -> impl IntoResponse {
    Json(serde_json::json!({ "hosts": s.runtime.load().hosts.list() }))
}

async fn get_host(State(s): State<Admin>, Path(host): Path<String>) -> Result<Response, ApiError> {
    let rt = s.runtime.load();
    rt.hosts
        .list()
        .into_iter()
        .find(|h| h.host == host)
        .map(|h| Json(h).into_response())
        .ok_or_else(|| not_found(format!("no host {host:?}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCap {
    max_connections: u64,
}

/// `PUT /api/v1/hosts/{host}` with `{"max_connections": N}`: overrides the
/// host's cap at once (0 = none), for running and future requests alike.
async fn put_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cap: HostCap = json_body(&body, r#"{"max_connections": N} with N >= 0"#)?;
    s.control
        .set_host_cap(&host, Some(cap.max_connections))
        .map_err(bad_request)?;
    tracing::info!(target: "admin", host = %host, max_connections = cap.max_connections, "connection cap set through the admin API");
    get_host(State(s.clone()), Path(host)).await
}

/// `DELETE /api/v1/hosts/{host}`: drops the override; the config's cap
/// applies again.
async fn delete_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    if !s.control.set_host_cap(&host, None).map_err(bad_request)? {
        return Err(not_found(format!("no host {host:?}")));
    }
    tracing::info!(target: "admin", host = %host, "connection cap override removed");
    get_host(State(s.clone()), Path(host)).await
}

/// `POST /api/v1/reload`: 200 with what needs a restart, or 400 with every
/// error (the old config keeps serving).
async fn reload(State(s): State<Admin>) -> Response {
    let control = s.control.clone();
    match tokio::task::spawn_blocking(move || control.reload("admin API")).await {
        Ok(Ok(report)) => Json(serde_json::json!({
            "result": "success",
            "restart_required": report.restart_required,
        }))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": "config_rejected",
                "message": "the new config is invalid; the old one keeps serving",
                "errors": e.errors.iter().map(|x| serde_json::json!({
                    "path": x.path.to_string(),
                    "line": x.line,
                    "message": x.message,
                })).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(e) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()).into_response()
        }
    }
}

/// Serves the admin router. The listener is bound before the server starts
/// (so a taken port fails the start), except during a binary upgrade, when
/// the old process holds it until it begins to shut down: then it is bound
/// as soon as it is free.
pub struct AdminService {
    addr: std::net::SocketAddr,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    state: Admin,
}

impl AdminService {
    pub fn new(
        addr: std::net::SocketAddr,
        listener: Option<std::net::TcpListener>,
        state: Admin,
    ) -> Self {
        AdminService {
            addr,
            listener: std::sync::Mutex::new(listener),
            state,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        #[allow(clippy::disallowed_methods)] // taken once, at start
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let listener = match taken {
            Some(l) => tokio::net::TcpListener::from_std(l),
            None => loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(l) => break Ok(l),
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            },
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener: {e}");
                return;
            }
        };
        self.state.ready.store(true, Ordering::Release);
        crate::metrics::metrics().ready.set(1);
        let app = router(self.state.clone());
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("admin server: {e}");
        }
    }
}
