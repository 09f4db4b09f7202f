//! The admin endpoint (axum) on `server.admin_listen`: `/health`, `/ready`,
//! `/metrics`. Runs as a Pingora background service, off the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
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
    crate::metrics::metrics()
        .ready
        .set(i64::from(s.ready.load(Ordering::Acquire)));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
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
