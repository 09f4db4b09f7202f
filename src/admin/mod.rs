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

mod clients;
mod operations;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clients::*;
use operations::*;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::de::DeserializeOwned;

use crate::runtime::control::ControlPlane;
use crate::runtime::SharedRuntime;

/// What the admin handlers can see.
#[derive(Clone)]
pub struct Admin {
    pub runtime: SharedRuntime,
    /// Set once the admin endpoint serves.
    pub ready: Arc<AtomicBool>,
    /// Set by SIGTERM or SIGQUIT: the gateway is finishing its requests
    /// before it exits (`/ready` answers 503 so that load balancers stop
    /// sending).
    pub draining: Arc<AtomicBool>,
    pub control: Arc<ControlPlane>,
    /// Bearer token for mutating calls.
    pub token: Option<String>,
    /// Fleet mode: the fleet's status.
    pub fleet: Option<Arc<crate::services::fleet::FleetStatus>>,
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
        .route("/api/v1/fleet", get(fleet))
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

pub(super) fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A control-plane change that did not happen: the caller's mistake (400)
/// or the state file's (500, `state_not_saved`).
pub(super) fn change_failed(e: crate::runtime::control::ChangeError) -> ApiError {
    use crate::runtime::control::ChangeError;
    match e {
        ChangeError::Rejected(m) => bad_request(m),
        ChangeError::NotSaved(m) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "state_not_saved", m)
        }
    }
}

pub(super) fn not_found(message: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", message)
}

/// Runs a control-plane call off the async workers: it may rebuild the
/// runtime and write the state file.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Parses a JSON body, answering 400 with serde's message on bad input.
pub(super) fn json_body<T: DeserializeOwned>(body: &Bytes, expected: &str) -> Result<T, ApiError> {
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
        // While the gateway drains (SIGTERM, or SIGQUIT: the old process
        // of an upgrade) the admin endpoint keeps answering through the
        // grace period — `/ready` with 503, `/health` with 200 — and ends
        // with the process (the new process of an upgrade shares the port:
        // SO_REUSEPORT). Otherwise (SIGINT) it stops at once.
        let draining = self.state.draining.clone();
        let stop = async move {
            let _ = shutdown.changed().await;
            if draining.load(Ordering::Acquire) {
                crate::metrics::metrics().ready.set(0);
                std::future::pending::<()>().await;
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("admin server: {e}");
        }
    }
}
