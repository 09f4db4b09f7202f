//! The gateway: Pingora's `ProxyHttp`, in the order Pingora runs its phases.
//!
//! ```text
//! request_filter           the phases of [`phases`], in order:
//!   1. resolve route (host, path prefix)            → 404 no_route
//!      declared body over the route's limit        → 413 body_too_large
//!   2. identify client (API key | header | IP)      → 400/401
//!   3. parse token cost (X-Token-Estimate)          → 400; 413 if it can never fit
//!   4. reserve RPM and TPM (atomic check-and-add)   → 429 + rate-limit headers
//!   5. take a slot in the adaptive windows (gateway-wide, then the
//!      upstream's), waiting in a bounded queue if so configured
//!                                                   → 503 backpressure
//!   6. pick a backend with room, take its host slot → 503 connection_limit
//!      (a refusal at 5 or 6 refunds the reservation made at 4)
//! request_body_filter      count a streamed body against the route's limit → 413
//! upstream_peer            the peer of the chosen backend; a retry after a
//!                          failed connect picks another one and moves the slot
//! fail_to_connect          mark the backend tried, allow a retry
//! upstream_request_filter  X-Forwarded-For/-Proto, X-Request-Id; strip
//!                          hop-by-hop headers
//! response_filter          X-Request-Id and rate-limit headers to the client;
//!                          actual token usage from a response header
//! response_body_filter     actual token usage from the body (JSON `usage`,
//!                          last SSE event); at its end free the host slot
//!                          and settle the charge
//! fail_to_proxy            502 upstream_error / 504 upstream_timeout, JSON
//! logging                  metrics and the access log
//! ```
//!
//! `ProxyHttp` methods only order and delegate: routing lives in
//! [`routing`], header rules in [`headers`], responses the gateway writes
//! itself in [`respond`], limits in [`crate::limits`].

pub mod admission;
pub mod context;
pub mod forward;
pub mod guard;
pub mod headers;
pub mod identity;
pub mod llm;
pub mod log;
pub mod phases;
pub mod respond;
pub mod window;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpUpstreamRequestPolicy, Peer};

use crate::limits::RejectReason;
use crate::runtime::SharedRuntime;
pub use context::RequestCtx;

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

/// The client's address, an IPv4 client on an IPv6 listener (as
/// `::ffff:a.b.c.d`) as its IPv4 address: one client, one address, for
/// trust, identity, the logs and `X-Forwarded-For`.
pub(crate) fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

fn downstream_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context by value in the request's future
    /// (about three copies of it across the nested futures' states) and
    /// moves it from state to state; a pointer there instead of ~830 bytes
    /// costs one allocation and saves more than it (under
    /// `scripts/callgrind`: 72 816 instructions a request boxed, 72 887
    /// by value; see benches/README.md, the cost steps).
    type CTX = Box<RequestCtx>;

    /// Runs when a request header has been read, before any filter.
    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new())
    }

    /// Runs once at start: no downstream modules. Pingora's default adds a
    /// (disabled) response-compression module that every request would
    /// still pass through; the gateway never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Runs once per request, before anything goes upstream: decides whether
    /// the request may pass. `Ok(true)` means the gateway answered itself.
    /// The body the connection guard read whole (see
    /// `context::RequestBody`), for an LLM route's estimate.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(b) = prev.downcast::<context::RequestBody>() {
            ctx.llm.body = Some(b.0);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let rt = self.runtime.load_full();
        ctx.admission
            .refund_on_abort(rt.config.clients.refund_on_client_abort);
        ctx.origin = headers::Origin::of(
            session.req_header(),
            peer_ip(session),
            downstream_tls(session),
            |ip| rt.is_trusted_proxy(ip),
        );
        ctx.runtime = Some(rt.clone());
        let c = &rt.config.clients;
        ctx.carries = headers::Carries::of(session.req_header(), &c.id_header, &c.token_header);
        ctx.request_id = headers::request_id(session.req_header(), ctx.carries.request_id);
        if !headers::takes_interim(session.req_header()) {
            session.set_ignore_info_resp(true);
        }
        // The phases in order; the first refusal answers the request (and
        // refunds whatever an earlier phase charged).
        if let Some(r) = phases::route(session, ctx, &rt) {
            return respond::refuse(session, ctx, r).await;
        }
        // A client that stops reading its answer is let go (HTTP/1: set by
        // the guard). A small HTTP/2 body is read before anything is
        // charged (and an LLM route estimates from it).
        session.set_write_timeout(Some(rt.config.server.client_write_timeout));
        // (Boxed, and only for HTTP/2: held in place, its future made every
        // request filter's future larger, which Pingora boxes per request.)
        if session.is_http2() {
            if let Some(r) = Box::pin(phases::read_small_body(session, ctx, &rt)).await {
                return respond::refuse(session, ctx, r).await;
            }
        }
        if let Some(r) = phases::client_quotas(session, ctx, &rt) {
            return respond::refuse(session, ctx, r).await;
        }
        if let Some(r) = phases::adaptive_windows(session, ctx, &rt).await? {
            return respond::refuse(session, ctx, r).await;
        }
        if let Some(r) = phases::backend_slot(ctx) {
            return respond::refuse(session, ctx, r).await;
        }
        // From the request's start, read once (`started`): its header had
        // just been read.
        ctx.body_deadline = Some(ctx.started + rt.config.server.body_timeout);
        Ok(false)
    }

    /// Runs for each chunk of the request body on its way upstream: enforces
    /// the route's body limit on bodies without a declared length, and the
    /// time a streamed body may take (`body_timeout`).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // An empty last piece (an HTTP/2 client's END_STREAM on an empty
        // DATA frame) is no piece: Pingora would write it to an HTTP/1
        // upstream as a chunk of size 0, which ends the body, then end the
        // body again (`0\r\n\r\n` twice; the upstream reads the second as
        // another request).
        if end_of_stream && body.as_ref().is_some_and(bytes::Bytes::is_empty) {
            *body = None;
        }
        if !end_of_stream
            && ctx
                .body_deadline
                .is_some_and(|d| std::time::Instant::now() > d)
        {
            ctx.reject = Some(RejectReason::RequestTimeout);
            return Error::e_explain(HTTPStatus(408), "the request body took too long");
        }
        if let (Some(limit), Some(b)) = (ctx.max_body_size, body.as_ref()) {
            ctx.body_bytes += b.len();
            if ctx.body_bytes > limit {
                ctx.reject = Some(RejectReason::BodyTooLarge);
                return Error::e_explain(
                    HTTPStatus(413),
                    format!("request body over the route's limit of {limit} bytes"),
                );
            }
        }
        Ok(())
    }

    /// Runs before each connection attempt: the backend for this attempt.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream.clone() else {
            return Error::e_explain(InternalError, "no upstream chosen in request_filter");
        };
        let retry = ctx.backend.is_none_or(|b| ctx.failed_backends.contains(&b));
        if retry {
            // A retry: another backend, and the slot moves with it.
            ctx.admission.release_slot();
            match upstream.acquire(&ctx.failed_backends) {
                Ok((addr, slot)) => {
                    ctx.backend = Some(addr);
                    ctx.admission.hold_slot(slot);
                }
                Err(why) => {
                    if why == crate::runtime::upstream::NoBackend::AtCap {
                        ctx.reject = Some(RejectReason::ConnectionLimit);
                    }
                    let mut e = Error::explain(
                        ConnectNoRoute,
                        format!("upstream {}: no backend left to try", upstream.name),
                    );
                    e.esource = ErrorSource::Upstream;
                    return Err(e);
                }
            }
        }
        let Some(addr) = ctx.backend else {
            return Error::e_explain(InternalError, "no backend chosen");
        };
        let mut peer = upstream.peer(addr);
        if !ctx.carries.policy {
            // Pingora's standard policy would change nothing on this
            // request (see `headers::POLICY_NAMES`); a request that
            // carries any of its names still goes through it.
            peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        }
        Ok(peer)
    }

    /// Runs when connecting to the chosen backend failed: the request has
    /// not been sent, so another backend may take it.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
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

    /// Runs before the request header goes upstream: from here on the
    /// upstream may be doing the work.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.admission.mark_sent();
        if ctx.by_api_key {
            // A Floodgate API key is the gateway's secret, never the
            // upstream's. (Removed first: a removal after the gateway's
            // own headers are added moves them into the header maps.)
            upstream_request.remove_header(&http::header::AUTHORIZATION);
        }
        headers::prepare_upstream(upstream_request, &ctx.origin, &ctx.request_id, ctx.backend)?;
        if let (Some(rt), Some(id), false) = (&ctx.runtime, &ctx.client_id, ctx.id_header_as_is) {
            headers::set_client_id(upstream_request, &rt.config.clients.id_header, id)?;
        }
        // The upstream's own headers (a provider key the gateway holds).
        if let Some(u) = &ctx.upstream {
            for n in &u.remove_headers {
                upstream_request.remove_header(n);
            }
            for (n, v) in &u.set_headers {
                upstream_request.insert_header(n.clone(), v.clone())?;
            }
        }
        Ok(())
    }

    /// Runs before the upstream's response header goes to the client:
    /// rate-limit headers; usage from a header; and when the header is the
    /// whole response (HEAD, 204, 304, an empty body), the settlement.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        headers::refuse_unasked_switch(session.req_header(), upstream_response)?;
        headers::no_framing_on_204(upstream_response);
        headers::own_version(upstream_response);
        // An HTTP/1.0 client's unchunked body ends with the connection;
        // an answer given once the server has begun to stop is its
        // connection's last, and says so (`Connection: close`) rather than
        // letting the client send another request on a connection about to
        // close (found by a hostile-client run).
        if headers::unchunk_for_http10(session.req_header(), upstream_response)?
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None);
        }
        // The gateway's headers: written after the upstream's, outside the
        // header maps, unless the upstream sent one of them itself (then
        // they replace its own).
        let names = headers::ResponseNames::of(upstream_response);
        if names.hop_by_hop() {
            // Before the gateway's headers are added (a removal would move
            // them into the header maps).
            headers::strip_response_hop_by_hop(upstream_response, names);
        }
        let absent = !names.gateway;
        if !absent {
            upstream_response.reserve_headers(6);
        }
        headers::add_gateway_response_headers(
            upstream_response,
            Some(ctx.request_id.as_bytes()),
            ctx.quota_state.as_ref().map(|s| (s, None)),
            absent,
        )?;
        if headers::is_interim(upstream_response) {
            return Ok(());
        }
        ctx.upstream_failed = upstream_response.status.is_server_error();
        if ctx.admission.charged_tokens().is_some() {
            let usage_header = ctx
                .runtime
                .as_ref()
                .and_then(|rt| rt.config.clients.usage_header.clone());
            ctx.reported_tokens = usage_header
                .and_then(|h| upstream_response.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            if ctx.reported_tokens.is_none() {
                // Output text is counted on an LLM route only.
                ctx.usage = Some(match ctx.llm.api {
                    Some(_) => llm::UsageScanner::new(),
                    None => llm::UsageScanner::usage_only(),
                });
            }
        }
        if headers::ends_with_header(session.req_header(), upstream_response) {
            ctx.upstream_response_ended();
        }
        Ok(())
    }

    /// Runs for each chunk of the response body on its way to the client:
    /// reads actual token usage, and settles the charge when the upstream
    /// response ends.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(scanner), Some(b)) = (ctx.usage.as_mut(), body.as_ref()) {
            match end_of_stream {
                true => scanner.feed_last(b),
                false => scanner.feed(b),
            }
        }
        if end_of_stream {
            if let Some(s) = ctx.usage.as_mut() {
                s.finish();
            }
            ctx.upstream_response_ended();
        }
        Ok(None)
    }

    /// Runs when proxying failed: answers with the JSON error.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, ctx, e).await
    }

    /// Runs last, for every request: whatever the admission still holds
    /// (a client that left, an error before the upstream answered) is
    /// settled; then metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        respond::settle_leftovers(ctx);
        log::request_done(session, e, ctx);
    }

    /// Client disconnects and upstream failures are counted and logged by
    /// `logging`; Pingora's own error line would repeat them.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }
}
