//! The one place that writes the responses the gateway decides on itself:
//! status, JSON body `{"error", "message"}`, `Retry-After` where due, and the
//! request id.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

use super::admission::Outcome;
use super::context::RequestCtx;
use super::headers::add_gateway_response_headers;
use crate::limits::{Refusal, RejectReason};

/// Answers the request with `r` and ends its processing: records the
/// reason on the context and returns `Ok(true)` for `request_filter` to pass
/// on. A refusal is an outcome, not an error. Whatever an earlier phase
/// took (quota charge, window permits, host slot) is given back before the
/// answer is written.
///
/// Boxed: a refusal is the rare path, and its future held in place would
/// make every request filter's future larger by its size, which Pingora
/// moves into a fresh box for every request.
pub fn refuse<'a>(
    session: &'a mut Session,
    ctx: &'a mut RequestCtx,
    r: Refusal,
) -> Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>> {
    Box::pin(async move {
        ctx.reject = Some(r.reason);
        ctx.admission.refuse();
        write(session, ctx, &r).await?;
        Ok(true)
    })
}

/// Settles what a request still holds when it ends without its upstream
/// response ending: the client left (while queued, while waiting for the
/// upstream, or mid-response), or an error cut it short. Runs in `logging`,
/// for every request; a no-op once the admission has ended.
pub fn settle_leftovers(ctx: &mut RequestCtx) {
    if ctx.admission.is_open() {
        let usage_seen = ctx.reported_usage();
        ctx.settle(Outcome::ClientGone { usage_seen });
    }
}

/// Writes the JSON answer of `r`: status, body, `Retry-After` where due,
/// the request id, and the rate-limit headers of a limited client (those of
/// the quota that refused, else of its tightest quota).
async fn write(session: &mut Session, ctx: &RequestCtx, r: &Refusal) -> Result<()> {
    let body: Bytes = r.reason.body(&r.message);
    let mut h = ResponseHeader::build(r.reason.status(), Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(secs) = r.retry_after_header() {
        h.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    let id = Some(ctx.request_id.as_bytes()).filter(|id| !id.is_empty());
    let quota = match r.quota {
        Some((state, exceeded)) => Some((state, Some(exceeded))),
        None => ctx.quota_state.map(|s| (s, None)),
    };
    add_gateway_response_headers(&mut h, id, quota.as_ref().map(|(s, e)| (s, *e)), true)?;
    // After a malformed request the connection's state is suspect; an
    // answer given once the server has begun to stop is the connection's
    // last, and says so (a refusal of a request queued when SIGTERM came
    // said keep-alive: found by a hostile-client run).
    if r.reason == RejectReason::BadRequest || session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// What a failed proxy attempt is answered with: 504 `upstream_timeout` for
/// an upstream that did not answer in time, 502 `upstream_error` for any
/// other upstream failure, 400 `bad_request` for a request Pingora could not
/// read, nothing when the client is gone or the response already started.
pub fn classify(e: &Error) -> Option<RejectReason> {
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => RejectReason::UpstreamTimeout,
            _ => RejectReason::UpstreamError,
        }),
        ErrorSource::Downstream => match e.etype() {
            ReadError | WriteError | ConnectionClosed => None,
            ReadTimedout => Some(RejectReason::RequestTimeout),
            _ => Some(RejectReason::BadRequest),
        },
        ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            HTTPStatus(c) if (400..500).contains(c) => Some(RejectReason::BadRequest),
            _ => Some(RejectReason::UpstreamError),
        },
    }
}

/// `ProxyHttp::fail_to_proxy`: writes the JSON error for `e` if the client
/// can still receive one.
pub async fn fail_to_proxy(session: &mut Session, ctx: &mut RequestCtx, e: &Error) -> FailToProxy {
    // A reason set on the way (a retry finding every backend at its cap)
    // says more than the error's type.
    let decided = ctx.reject;
    let reason = decided.or_else(|| classify(e));
    if let Some(r) = reason {
        ctx.reject = Some(r);
    }
    match (decided, e.esource()) {
        // Refused on the way (a streamed body over the limit, a retry
        // finding every backend at its cap): everything goes back.
        (Some(_), _) => ctx.admission.refuse(),
        // The upstream failed: the request counts, its tokens do not, and
        // the windows see a failure.
        (None, ErrorSource::Upstream | ErrorSource::Internal | ErrorSource::Unset) => {
            ctx.settle(Outcome::UpstreamFailed)
        }
        // The client: left, or sent what could not be read.
        (None, ErrorSource::Downstream) => settle_leftovers(ctx),
    }
    // Nothing of the answer has gone, or only an interim one (100, 103): a
    // final answer may still follow it (found by a hostile-upstream run:
    // an upstream that sent a 103 and then failed left the client with the
    // 103 and a closed connection). A 101 is no interim answer: the
    // connection has left HTTP.
    let answerable = session.response_written().is_none_or(|r| {
        r.status.is_informational() && r.status != http::StatusCode::SWITCHING_PROTOCOLS
    });
    let code = match reason {
        Some(r) if answerable => {
            let msg = match r {
                RejectReason::ConnectionLimit => "every other backend is at its connection cap",
                RejectReason::BodyTooLarge => "the request body is over this route's limit",
                RejectReason::UpstreamTimeout => "the upstream did not answer in time",
                RejectReason::UpstreamError => "the upstream failed or is unreachable",
                RejectReason::RequestTimeout => "the request was not received in time",
                _ => "the request could not be read",
            };
            // The request may not have been read to its end: close after.
            session.set_keepalive(None);
            match write(session, ctx, &Refusal::new(r, msg)).await {
                Ok(()) => r.status().as_u16(),
                Err(_) => 0,
            }
        }
        // The response is under way (or the client is gone): nothing more
        // can be said to the client; the connection is closed.
        _ => 0,
    };
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}
