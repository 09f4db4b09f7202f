//! The phases of `request_filter`, in the order they run. Each one either
//! records what it decided on the request's context and lets the request
//! go on (`None`), or returns the [`Refusal`] to answer with.
//!
//! ```text
//! 1. route            host and longest path prefix      → 404 no_route
//!                     declared body over the route's limit → 413 body_too_large
//! 2. client           API key | id header | peer address → 400 / 401
//! 3. token cost       X-Token-Estimate                  → 400; 413 if it can never fit
//! 4. quotas           RPM and TPM, one check-and-add    → 429 + rate-limit headers
//!    (before 2)       HTTP/2: a body up to 64 KiB read first → 408 (HTTP/1: the guard did)
//! 5. adaptive windows gateway-wide, then the upstream's → 503 backpressure (after the queue)
//! 6. backend slot     a backend with room under its cap → 503 connection_limit
//! ```
//!
//! The decisions themselves live in `crate::limits`; these functions read
//! the request and write the context.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::{headers, identity, window, RequestCtx};
use crate::limits::clients::Decision;
use crate::limits::clients::Mode;
use crate::limits::rate;
use crate::limits::{Refusal, RejectReason};
use crate::runtime::{upstream, Runtime};

/// 1. The route, its upstream and its body limit.
pub fn route(session: &Session, ctx: &mut RequestCtx, rt: &Runtime) -> Option<Refusal> {
    let req = session.req_header();
    let host = headers::host(req);
    let Some(route) = rt.router.resolve(host, req.uri.path()) else {
        let msg = format!(
            "no route for host {:?} and path {:?}",
            host.unwrap_or(""),
            req.uri.path()
        );
        return Some(Refusal::new(RejectReason::NoRoute, msg));
    };
    ctx.route = Some(route.name.clone());
    ctx.route_metrics = Some(route.metrics.clone());
    ctx.llm.api = route
        .api
        .map(|a| crate::proxy::llm::Api::of(a, req.uri.path()));
    ctx.llm.tokenizer = route.tokenizer;
    ctx.llm.default_output_tokens = route.default_output_tokens;
    ctx.upstream = rt.upstreams.get(route.upstream).cloned();
    ctx.max_body_size = route.max_body_size;
    // A declared body over the limit is refused before any of it is read; a
    // streamed one is counted in request_body_filter.
    let declared = ctx
        .carries
        .content_length
        .then(|| req.headers.get(http::header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match (route.max_body_size, declared) {
        (Some(limit), Some(len)) if len > limit => Some(Refusal::new(
            RejectReason::BodyTooLarge,
            format!("the request body ({len} bytes) is over this route's limit of {limit} bytes"),
        )),
        _ => None,
    }
}

/// 2-4. Who the client is, what the request costs, and whether its quotas
/// admit it (charging them if so).
pub fn client_quotas(session: &Session, ctx: &mut RequestCtx, rt: &Runtime) -> Option<Refusal> {
    let policies = &rt.clients;
    // Nothing to decide and no key to check: the request's headers are
    // the upstream's business. With API keys (even of clients whose limits
    // are off), the client is still named: its key is checked, and never
    // goes upstream (found by a hostile-client run).
    if !policies.any_limits() && !policies.has_api_keys() {
        return None;
    }
    let req = session.req_header();
    let c = &rt.config.clients;
    let carries = ctx.carries;
    let identity = match identity::client_id(req, c, policies, ctx.origin.client, carries) {
        Ok(i) => i,
        Err(r) => return Some(r),
    };
    ctx.by_api_key = identity.by_api_key;
    // Its line goes upstream as it is unless something may take it off
    // (`Connection` listing it, or a name the gateway rewrites).
    ctx.id_header_as_is =
        identity.header_as_is && !carries.connection && headers::kept_upstream(&c.id_header);
    let id = identity.id;
    if let Some(client) = policies.configured(&id) {
        ctx.privileges = client.privileges;
    }
    let cost = match carries.token_header {
        true => match identity::token_cost(req, &c.token_header, c.default_tokens) {
            Ok(n) => n,
            Err(r) => return Some(r),
        },
        false => c.default_tokens,
    };
    // No estimate from the client: an LLM route estimates from the body.
    let path = req.uri.path();
    let estimate = match (carries.token_header, ctx.llm.api, &ctx.llm.body) {
        (false, Some(api), Some(body)) => crate::proxy::llm::estimate::estimate(
            api,
            path,
            body,
            ctx.llm.tokenizer,
            ctx.llm.default_output_tokens,
        ),
        _ => None,
    };
    let cost = estimate.as_ref().map_or(cost, |e| e.total());
    ctx.llm.model = estimate.as_ref().and_then(|e| e.model.clone()).or_else(|| {
        ctx.llm
            .api
            .and_then(|_| crate::proxy::llm::estimate::gemini_model(path))
    });
    ctx.llm.estimate = estimate;
    // Requests in flight first: nothing is charged for one refused here.
    match policies.enter(&id) {
        Ok(place) => ctx.llm.inflight = place,
        Err(too_many) => {
            ctx.client_id = Some(id);
            return Some(
                Refusal::new(
                    RejectReason::ConcurrencyExceeded,
                    format!(
                        "the client already has {} requests in flight (its max_concurrent)",
                        too_many.max_concurrent
                    ),
                )
                .retry_after(1),
            );
        }
    }
    let decision = policies.decide(&id, ctx.llm.model.as_deref(), cost);
    ctx.client_id = Some(id);
    match decision {
        Decision::Unlimited => None,
        Decision::Admitted { charge, state } => {
            ctx.admission.hold_charge(charge);
            ctx.quota_state = Some(state);
            None
        }
        Decision::Refused {
            reason,
            refusal,
            mode: Mode::Enforce,
            model,
        } => {
            let mut message = quota_message(reason, &refusal, cost);
            if let Some(m) = model {
                message = format!("{message} for model {m:?}");
            }
            let mut r = Refusal::new(reason, message).quota(refusal.state, refusal.exceeded);
            if reason.needs_retry_after() {
                r = r.retry_after(refusal.retry_after_ms.div_ceil(1000));
            }
            Some(r)
        }
        Decision::Refused {
            reason,
            refusal,
            mode: Mode::Shadow,
            ..
        } => {
            // Shadow mode: count and log what would have happened, let the
            // request pass uncharged.
            crate::metrics::metrics()
                .shadow_refusals_total
                .with_label_values(&[ctx.route_label(), reason.as_str()])
                .inc();
            tracing::info!(
                target: "shadow",
                request_id = %ctx.request_id,
                client = ctx.client_id.as_deref().unwrap_or(""),
                outcome = reason.as_str(),
                "shadow mode: would refuse: {}",
                quota_message(reason, &refusal, cost)
            );
            ctx.shadow = Some(reason);
            ctx.quota_state = Some(refusal.state);
            None
        }
    }
}

/// The message of a quota refusal.
fn quota_message(reason: RejectReason, r: &rate::OverQuota, cost: u64) -> String {
    let q = r.state.quota;
    match reason {
        RejectReason::EstimateTooLarge => format!(
            "a token estimate of {cost} can never fit the client's limit of {} tokens per window",
            q.tpm.unwrap_or(0)
        ),
        RejectReason::RpmExceeded => format!(
            "over the limit of {} requests per window",
            q.rpm.unwrap_or(0)
        ),
        _ => format!(
            "{cost} more tokens would exceed the limit of {} tokens per window",
            q.tpm.unwrap_or(0)
        ),
    }
}

/// 5. A slot in the gateway-wide window, then in the upstream's own.
pub async fn adaptive_windows(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Result<Option<Refusal>> {
    let Some(upstream) = ctx.upstream.clone() else {
        return Error::e_explain(InternalError, "route without upstream");
    };
    // What the request may ask for with its own headers: what its client
    // was granted, or anything when a trusted proxy vouches for it.
    let privileges = if ctx.origin.trusted {
        window::TRUSTED
    } else {
        ctx.privileges
    };
    for scope in rt.adaptive.iter().chain(upstream.adaptive.iter()) {
        let permit = match window::admit_now(session, scope, privileges) {
            Some(p) => Some(p),
            None => Box::pin(window::admit(session, scope, privileges)).await?,
        };
        match permit {
            Some(permit) => ctx.admission.hold_permit(permit),
            None => {
                let msg = format!(
                    "the {} concurrency window is full ({} requests)",
                    scope.name,
                    scope.controller.window()
                );
                return Ok(Some(
                    Refusal::new(RejectReason::Backpressure, msg)
                        .retry_after(scope.config.interval.as_secs().max(1)),
                ));
            }
        }
    }
    Ok(None)
}

/// 6. A backend with room under its connection cap, and its slot.
pub fn backend_slot(ctx: &mut RequestCtx) -> Option<Refusal> {
    let upstream = ctx.upstream.clone()?;
    match upstream.acquire(&[]) {
        Ok((addr, slot)) => {
            ctx.backend = Some(addr);
            ctx.admission.hold_slot(slot);
            None
        }
        Err(upstream::NoBackend::AtCap) => Some(
            Refusal::new(
                RejectReason::ConnectionLimit,
                format!(
                    "every backend of upstream {} is at its connection cap",
                    upstream.name
                ),
            )
            .retry_after(1),
        ),
        // No backend at all: upstream_peer reports it as a 502.
        Err(upstream::NoBackend::Exhausted) => None,
    }
}

/// Pingora replays at most this much of a body read before the upstream
/// is chosen (its retry buffer).
const REPLAY_LIMIT: u64 = 64 * 1024;

/// Between the quotas and the windows: an HTTP/2 request's body, when it
/// declares one small enough to replay, is read in full here — no pause
/// over `body_idle_timeout`, all of it within `body_timeout` — so that a
/// slow sender holds no adaptive permit or upstream slot. (HTTP/1 bodies
/// are read by the connection guard; a larger body streams, each HTTP/1
/// read under `body_idle_timeout`.)
pub async fn read_small_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rt: &Runtime,
) -> Option<Refusal> {
    if !session.is_http2() {
        return None;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    let s = &rt.config.server;
    if declared == 0 || declared > REPLAY_LIMIT.min(s.request_buffer_size as u64) {
        return None;
    }
    session.enable_retry_buffering();
    let total = tokio::time::Instant::now() + s.body_timeout;
    let late = || {
        Some(Refusal::new(
            RejectReason::RequestTimeout,
            "the request body was not received in time",
        ))
    };
    let mut read = 0u64;
    while !session.is_body_done() {
        let idle = (tokio::time::Instant::now() + s.body_idle_timeout).min(total);
        match tokio::time::timeout_at(idle, session.read_request_body()).await {
            Err(_) => return late(),
            Ok(Ok(Some(b))) => {
                read += b.len() as u64;
                // More than declared: h2 ends the stream itself; stop
                // reading so the replay buffer is never truncated.
                if read >= declared {
                    break;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                return Some(Refusal::new(
                    RejectReason::BadRequest,
                    format!("reading the request body: {e}"),
                ))
            }
        }
    }
    if ctx.llm.api.is_some() {
        ctx.llm.body = session.get_retry_buffer();
    }
    None
}
