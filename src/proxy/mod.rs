//! The gateway: Pingora's `ProxyHttp`, in the order Pingora runs its phases.
//!
//! ```text
//! request_filter
//!   1. resolve route (host, path prefix)            → 404 no_route
//!   (client quotas, adaptive window and host caps plug in here, in order)
//! upstream_peer            pick a healthy backend (round robin); a retry
//!                          after a failed connect picks another one
//! fail_to_connect          mark the backend tried, allow a retry
//! upstream_request_filter  X-Forwarded-For/-Proto, X-Request-Id; strip
//!                          hop-by-hop headers
//! response_filter          X-Request-Id back to the client
//! fail_to_proxy            502 upstream_error / 504 upstream_timeout, JSON
//! logging                  metrics and the access log
//! ```
//!
//! `ProxyHttp` methods only order and delegate: routing lives in
//! [`routing`], header rules in [`headers`], responses the gateway writes
//! itself in [`respond`], limits in [`crate::limits`].

pub mod context;
pub mod headers;
pub mod health;
pub mod listener;
pub mod respond;
pub mod routing;
pub mod runtime;
pub mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::Peer;

use crate::limits::RejectReason;
pub use context::RequestCtx;
pub use runtime::{Runtime, SharedRuntime};

/// The reverse proxy. Holds only the shared runtime handle; every request
/// loads one snapshot of it.
pub struct Gateway {
    runtime: SharedRuntime,
}

impl Gateway {
    pub fn new(runtime: SharedRuntime) -> Self {
        Gateway { runtime }
    }
}

fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn downstream_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// Runs when a request header has been read, before any filter.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Runs once per request, before anything goes upstream: decides whether
    /// the request may pass. `Ok(true)` means the gateway answered itself.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.runtime.load_full();
        ctx.runtime = Some(rt.clone());
        ctx.request_id = headers::request_id(session.req_header());

        // 1. Route.
        let req = session.req_header();
        let Some(route) = rt.router.resolve(headers::host(req), req.uri.path()) else {
            let msg = format!(
                "no route for host {:?} and path {:?}",
                headers::host(req).unwrap_or(""),
                req.uri.path()
            );
            return respond::reject(session, ctx, RejectReason::NoRoute, &msg, None).await;
        };
        ctx.route = Some(Arc::from(route.name.as_str()));
        ctx.upstream = rt.upstreams.get(route.upstream).cloned();
        Ok(false)
    }

    /// Runs before each connection attempt: the backend for this attempt.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream.clone() else {
            return Error::e_explain(InternalError, "no upstream chosen in request_filter");
        };
        let Some(addr) = upstream.select(&ctx.failed_backends) else {
            return Error::e_explain(
                ConnectNoRoute,
                format!("upstream {}: no backend left to try", upstream.name),
            )
            .map_err(|mut e: Box<Error>| {
                e.esource = ErrorSource::Upstream;
                e
            });
        };
        ctx.backend = Some(addr);
        Ok(Box::new(upstream.peer(addr)))
    }

    /// Runs when connecting to the chosen backend failed: the request has
    /// not been sent, so another backend may take it.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = peer.address().as_inet() {
            ctx.failed_backends.push(*addr);
        }
        let retries = ctx.upstream.as_ref().map_or(0, |u| u.retries);
        if ctx.failed_backends.len() <= retries {
            e.set_retry(true);
        }
        e
    }

    /// Runs before the request header goes upstream.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let peer = peer_ip(session);
        let trusted = match (&ctx.runtime, peer) {
            (Some(rt), Some(ip)) => rt.is_trusted_proxy(ip),
            _ => false,
        };
        headers::prepare_upstream(
            upstream_request,
            peer,
            trusted,
            downstream_tls(session),
            &ctx.request_id,
        )
    }

    /// Runs before the upstream's response header goes to the client.
    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    /// Runs when proxying failed: answers with the JSON error.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, ctx, e).await
    }

    /// Runs last, for every request: metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        crate::logging::request_done(session, e, ctx);
    }

    /// Client disconnects and upstream failures are counted and logged by
    /// `logging`; Pingora's own error line would repeat them.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }
}
