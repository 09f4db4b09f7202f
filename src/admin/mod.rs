//! The admin endpoint (axum) on `server.admin_listen`: `/health`, `/ready`,
//! `/metrics`, and `/api/v1/hosts` (connection caps). Runs as a Pingora
//! background service, off the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::proxy::SharedRuntime;

/// What the admin handlers can see.
#[derive(Clone)]
pub struct AdminState {
    pub runtime: SharedRuntime,
    /// Set once the proxy services are started.
    pub ready: Arc<AtomicBool>,
}

/// The admin router; handlers are plain functions, testable without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/backpressure", get(backpressure))
        .route("/api/v1/hosts", get(list_hosts))
        .route(
            "/api/v1/hosts/{host}",
            put(put_host).delete(delete_host).get(get_host),
        )
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
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

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let rt = s.runtime.load();
    crate::metrics::export_hosts(&rt.hosts.list());
    let scopes: Vec<_> = rt
        .adaptive_scopes()
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

/// The admin API's answer to a bad call: JSON `{"error", "message"}`.
fn api_error(status: StatusCode, error: &str, message: String) -> axum::response::Response {
    (
        status,
        Json(serde_json::json!({ "error": error, "message": message })),
    )
        .into_response()
}

/// `GET /api/v1/backpressure`: the gateway-wide window at the top level
/// (`enabled: false` when there is none), each upstream's under `upstreams`.
async fn backpressure(State(s): State<AdminState>) -> impl IntoResponse {
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

async fn list_hosts(State(s): State<AdminState>) -> impl IntoResponse {
    Json(serde_json::json!({ "hosts": s.runtime.load().hosts.list() }))
}

async fn get_host(
    State(s): State<AdminState>,
    Path(host): Path<String>,
) -> axum::response::Response {
    let rt = s.runtime.load();
    match rt.hosts.list().into_iter().find(|h| h.host == host) {
        Some(h) => Json(h).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no host {host:?}"),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCap {
    max_connections: u64,
}

/// `PUT /api/v1/hosts/{host}` with `{"max_connections": N}`: overrides the
/// host's cap at once (0 = none), for running and future requests alike.
async fn put_host(
    State(s): State<AdminState>,
    Path(host): Path<String>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let cap: HostCap = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"max_connections\": N}} with N >= 0: {e}"),
            )
        }
    };
    let rt = s.runtime.load();
    rt.hosts.set_override(&host, Some(cap.max_connections));
    tracing::info!(host = %host, max_connections = cap.max_connections, "connection cap set through the admin API");
    get_host(State(s.clone()), Path(host)).await
}

/// `DELETE /api/v1/hosts/{host}`: drops the override; the config's cap
/// applies again.
async fn delete_host(
    State(s): State<AdminState>,
    Path(host): Path<String>,
) -> axum::response::Response {
    let rt = s.runtime.load();
    if !rt.hosts.set_override(&host, None) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no host {host:?}"),
        );
    }
    tracing::info!(host = %host, "connection cap override removed");
    get_host(State(s.clone()), Path(host)).await
}

/// Serves the admin router on a listener bound before the server starts
/// (so a taken port fails the start, not a background task).
pub struct AdminService {
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    state: AdminState,
}

impl AdminService {
    pub fn new(listener: std::net::TcpListener, state: AdminState) -> Self {
        AdminService {
            listener: std::sync::Mutex::new(Some(listener)),
            state,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(std_listener) = taken else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
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
