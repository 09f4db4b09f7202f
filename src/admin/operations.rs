//! Health, readiness, metrics, the adaptive windows, host caps, reloads.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{blocking, change_failed, json_body, not_found, Admin, ApiError};
use crate::limits::connections::Proxy;

pub(super) async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(super) async fn ready(State(s): State<Admin>) -> impl IntoResponse {
    let draining = s.draining.load(Ordering::Acquire);
    let fleet_ok = s.fleet.as_ref().is_none_or(|f| f.ready());
    let ok = s.ready.load(Ordering::Acquire) && !draining && fleet_ok;
    crate::metrics::metrics().ready.set(i64::from(ok));
    let rt = s.runtime.load();
    let body = serde_json::json!({
        "ready": ok,
        "draining": draining,
        "fleet": s.fleet.as_ref().map(|f| f.snapshot().up),
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

pub(super) async fn metrics(State(s): State<Admin>) -> impl IntoResponse {
    let rt = s.runtime.load();
    crate::metrics::export_hosts(&rt.host_infos(), &rt.config);
    crate::metrics::record_dropped_log_lines(crate::logging::dropped_lines());
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

/// `GET /api/v1/backpressure`: the gateway-wide window at the top level
/// (`enabled: false` when there is none), each upstream's under `upstreams`.
pub(super) async fn backpressure(State(s): State<Admin>) -> impl IntoResponse {
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

pub(super) async fn list_hosts(State(s): State<Admin>) -> impl IntoResponse {
    Json(serde_json::json!({ "hosts": s.runtime.load().host_infos() }))
}

/// `?proxy=reverse|forward`: which proxy's host a call means, when a host
/// could be both (a backend `host:port` is also a possible destination).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Which {
    proxy: Option<Proxy>,
}

pub(super) async fn get_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
) -> Result<Response, ApiError> {
    let rt = s.runtime.load();
    rt.host_infos()
        .into_iter()
        .find(|h| h.host == host && which.proxy.is_none_or(|p| p == h.proxy))
        .map(|h| Json(h).into_response())
        .ok_or_else(|| not_found(format!("no host {host:?}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCap {
    max_connections: u64,
}

/// `PUT /api/v1/hosts/{host}` with `{"max_connections": N}`: overrides the
/// host's cap at once (0 = none, at most 4 294 967 295), for running and
/// future requests alike. Persisted first: a failed write changes nothing.
pub(super) async fn put_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let cap: HostCap = json_body(&body, r#"{"max_connections": N} with 0 <= N <= 4294967295"#)?;
    let proxy = which
        .proxy
        .or_else(|| s.control.proxy_of(&host))
        .ok_or_else(|| not_found(format!("no backend {host:?}, and no forward proxy")))?;
    let (control, h) = (s.control.clone(), host.clone());
    blocking(move || control.set_host_cap(proxy, &h, Some(cap.max_connections)))
        .await?
        .map_err(change_failed)?;
    tracing::info!(target: "admin", host = %host, proxy = proxy.as_str(), max_connections = cap.max_connections, "connection cap set through the admin API");
    get_host(
        State(s.clone()),
        Path(host),
        Query(Which { proxy: Some(proxy) }),
    )
    .await
}

/// `DELETE /api/v1/hosts/{host}`: drops the override; the config's cap
/// applies again.
pub(super) async fn delete_host(
    State(s): State<Admin>,
    Path(host): Path<String>,
    Query(which): Query<Which>,
) -> Result<Response, ApiError> {
    let proxy = which
        .proxy
        .or_else(|| s.control.proxy_of(&host))
        .ok_or_else(|| not_found(format!("no host {host:?}")))?;
    let (control, h) = (s.control.clone(), host.clone());
    if !blocking(move || control.set_host_cap(proxy, &h, None))
        .await?
        .map_err(change_failed)?
    {
        return Err(not_found(format!("host {host:?} has no API cap")));
    }
    tracing::info!(target: "admin", host = %host, "connection cap override removed");
    get_host(
        State(s.clone()),
        Path(host),
        Query(Which { proxy: Some(proxy) }),
    )
    .await
}

/// `POST /api/v1/reload`: 200 with what needs a restart, or 400 with every
/// error (the old config keeps serving).
pub(super) async fn reload(State(s): State<Admin>) -> Response {
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

/// `GET /api/v1/fleet`: this instance's view of the fleet (404 when fleet
/// mode is off).
pub(super) async fn fleet(State(s): State<Admin>) -> Result<impl IntoResponse, ApiError> {
    let Some(f) = &s.fleet else {
        return Err(not_found(
            "fleet mode is off ([fleet] is not configured)".into(),
        ));
    };
    let rt = s.runtime.load();
    let mut v = serde_json::to_value(&*f.snapshot()).unwrap_or_default();
    if let Some(q) = rt.clients.fleet() {
        v["live_instances"] = serde_json::json!(q.live());
        v["quotas_degraded"] = serde_json::json!(q.degraded());
    }
    Ok(Json(v))
}
