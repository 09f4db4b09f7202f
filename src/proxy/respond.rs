//! The one place that writes the responses the gateway decides on itself:
//! status, JSON body `{"error", "message"}`, `Retry-After` where due, and the
//! request id.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};

use super::context::RequestCtx;
use super::headers::X_REQUEST_ID;
use crate::limits::RejectReason;

/// A refusal decided on the request path: everything the answer needs.
pub struct Refusal {
    pub reason: RejectReason,
    pub message: String,
    /// Seconds for `Retry-After` (every 429 and 503 gets one; 1 if unset).
    pub retry_after: Option<u64>,
    /// Extra headers (the rate-limit headers of a limited client).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn headers(mut self, h: Vec<(&'static str, String)>) -> Self {
        self.headers = h;
        self
    }
}

/// [`reject`] for a [`Refusal`].
pub async fn refuse(session: &mut Session, ctx: &mut RequestCtx, r: Refusal) -> Result<bool> {
    reject(
        session,
        ctx,
        r.reason,
        &r.message,
        r.retry_after,
        &r.headers,
    )
    .await
}

/// Answers the request with `reason` and ends its processing: records the
/// reason on the context and returns `Ok(true)` for `request_filter` to pass
/// on. A refusal is an outcome, not an error.
/// `extra` headers go out too (the rate-limit headers of a quota refusal).
/// A charge made earlier on the request path is refunded in full.
pub async fn reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reason: RejectReason,
    message: &str,
    retry_after_secs: Option<u64>,
    extra: &[(&'static str, String)],
) -> Result<bool> {
    ctx.reject = Some(reason);
    if let Some(charge) = ctx.charge.take() {
        charge.refund_all();
    }
    write(session, ctx, reason, message, retry_after_secs, extra).await?;
    Ok(true)
}

async fn write(
    session: &mut Session,
    ctx: &RequestCtx,
    reason: RejectReason,
    message: &str,
    retry_after_secs: Option<u64>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let body: Bytes = reason.body(message);
    let mut h = ResponseHeader::build(reason.status(), Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if reason.needs_retry_after() {
        h.insert_header(
            http::header::RETRY_AFTER,
            retry_after_secs.unwrap_or(1).max(1),
        )?;
    }
    if !ctx.request_id.is_empty() {
        h.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    }
    for (k, v) in extra {
        h.insert_header(*k, v.as_str())?;
    }
    if reason == RejectReason::BadRequest {
        // After a malformed request the connection's state is suspect.
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
    let reason = ctx.reject.or_else(|| classify(e));
    if let Some(r) = reason {
        ctx.reject = Some(r);
    }
    let code = match reason {
        Some(r) if session.response_written().is_none() => {
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
            let retry = r.needs_retry_after().then_some(1);
            // A limited client hears about its quotas on every answer.
            let headers = ctx.rate_limit_headers();
            match write(session, ctx, r, msg, retry, &headers).await {
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
