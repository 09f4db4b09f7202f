//! The last phase of every request: its metrics and its access-log line.

use pingora::prelude::Error;
use pingora::proxy::Session;

use super::RequestCtx;

/// Records the end of one request: `floodgate_requests_total`,
/// `floodgate_request_duration_seconds` and the access-log line.
pub fn request_done(session: &Session, error: Option<&Error>, ctx: &RequestCtx) {
    let route = ctx.route_label();
    let outcome = ctx.outcome();
    let elapsed = ctx.started.elapsed();
    let rm = ctx
        .route_metrics
        .as_ref()
        .unwrap_or_else(|| crate::metrics::no_route_metrics());
    rm.requests(ctx.reject).inc();
    rm.duration().observe(elapsed.as_secs_f64());

    let enabled = ctx
        .runtime
        .as_ref()
        .is_none_or(|rt| rt.config.server.access_log);
    if !enabled {
        return;
    }
    let req = session.req_header();
    let status = session.response_written().map_or(0, |h| h.status.as_u16());
    let peer = super::peer_ip(session)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let client = ctx.client_id.as_deref().unwrap_or(peer.as_str());
    let client_addr = ctx.origin.client.map(|a| a.to_string()).unwrap_or_default();
    let upstream = ctx.upstream.as_ref().map_or("", |u| u.name.as_str());
    let backend = ctx.backend.map(|b| b.to_string()).unwrap_or_default();
    let error = error.map(|e| e.to_string()).unwrap_or_default();
    // Values a client controls are recorded as strings: the text format
    // writes them quoted and escaped, the JSON one as JSON strings, so no
    // header can forge another field of the line.
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        client = client,
        client_addr = %client_addr,
        peer = %peer,
        method = req.method.as_str(),
        path = req.uri.path(),
        route = %route,
        upstream = %upstream,
        backend = %backend,
        status = status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        outcome = outcome,
        shadow = ctx.shadow.map_or("", |r| r.as_str()),
        error = error.as_str(),
    );
}
