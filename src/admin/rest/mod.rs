//! The REST adapter (axum) on `server.admin_listen`: each handler parses
//! its input, calls the service layer, and writes JSON. Described by
//! OpenAPI 3.1 at `GET /api/v1/openapi.json` (and `docs/admin-api.json`).
//!
//! Every error is JSON `{"error", "message"}`, including those axum writes
//! itself (unknown routes, methods, bodies over the limit, bad paths and
//! queries): [`json_errors`] rewrites them.

mod handlers;
pub mod openapi;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::listener::{take_or_bind, Limited};
use super::service::{Admin, AdminError, ErrorKind, MAX_BODY};
use handlers::*;

/// The admin router; handlers are plain functions, testable without a socket.
pub fn router(state: Admin) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
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
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/reload", post(reload))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest | ErrorKind::ConfigRejected => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::StateNotSaved | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (status_of(self.kind), Json(self.body())).into_response()
    }
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> AdminError {
    AdminError::not_found(format!("no admin route {method} {}", uri.path()))
}

/// Every call that changes something (POST, PUT, DELETE) needs the bearer
/// token when one is set.
async fn auth(State(s): State<Admin>, req: Request, next: Next) -> Response {
    let mutating = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE);
    if mutating {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::admin::service::bearer_token);
        if !s.authorized(presented) {
            let mut r = AdminError::new(
                ErrorKind::Unauthorized,
                "this call needs Authorization: Bearer <admin token>",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Refuses a body announced over the limit before it is read, gives each
/// call `REQUEST_TIMEOUT`, and rewrites the errors axum answers itself
/// (plain text: a body over the limit, a method the path does not have, a
/// bad path or query) as JSON in the API's one shape.
async fn json_errors(req: Request, next: Next) -> Response {
    // A body announced over the limit is refused before it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return AdminError::new(
            ErrorKind::BodyTooLarge,
            format!("the body is over the admin API's limit of {MAX_BODY} bytes"),
        )
        .into_response();
    }
    let res = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            return AdminError::new(
                ErrorKind::Timeout,
                format!("the call took longer than {}s", REQUEST_TIMEOUT.as_secs()),
            )
            .into_response()
        }
    };
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let kind = match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::BodyTooLarge,
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
        s if s.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if kind == ErrorKind::BodyTooLarge {
        message = format!("the body is over the admin API's limit of {MAX_BODY} bytes");
    } else if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    let mut out = (status, Json(AdminError::new(kind, message).body())).into_response();
    // Keep what the answer said besides its body (Allow on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Serves the admin router. The listener is bound before the server starts
/// (so a taken port fails the start), except during a binary upgrade, when
/// the old process holds it until it begins to shut down: then it is bound
/// as soon as it is free.
pub struct AdminService {
    addr: std::net::SocketAddr,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    state: Admin,
    /// `server.header_timeout`: the time a client has to send a request's
    /// header.
    header_timeout: Duration,
    /// `server.keepalive_timeout`: a connection idle this long is closed.
    idle: Duration,
}

/// The most connections the REST listener holds at once.
pub const MAX_CONNECTIONS: usize = 256;

/// The longest an admin call may take, its body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl AdminService {
    pub fn new(
        addr: std::net::SocketAddr,
        listener: Option<std::net::TcpListener>,
        state: Admin,
        header_timeout: Duration,
        idle: Duration,
    ) -> Self {
        AdminService {
            addr,
            listener: std::sync::Mutex::new(listener),
            state,
            header_timeout,
            idle,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = take_or_bind(&self.listener, self.addr, &mut shutdown).await else {
            return;
        };
        self.state.ready.store(true, Ordering::Release);
        crate::metrics::metrics().ready.set(1);
        let app = router(self.state.clone());
        let listener = Limited::new(listener, MAX_CONNECTIONS, self.idle);
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
        tokio::pin!(stop);
        // HTTP/1.1 only, each connection under the listener's cap and idle
        // deadline, each request's header under header_timeout.
        loop {
            tokio::select! {
                (io, _) = listener.accept() => {
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let header_timeout = self.header_timeout;
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(header_timeout)
                            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                            .await;
                    });
                }
                _ = &mut stop => break,
            }
        }
    }
}
