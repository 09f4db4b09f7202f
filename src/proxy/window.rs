//! Request-path side of the adaptive windows: criticality, jitter, how long
//! a request may wait, and leaving the queue when the client hangs up.

use std::time::Duration;

use pingora::prelude::*;
use pingora::proxy::Session;

use crate::limits::adaptive::AdaptivePermit;
use crate::runtime::AdaptiveWindow;

/// `X-Request-Criticality: critical` skips jitter and may use the reserved
/// share of the window.
const CRITICALITY: &str = "x-request-criticality";
/// `X-Can-Wait: <duration>`: the client accepts a longer queue wait.
const CAN_WAIT: &str = "x-can-wait";
/// The longest wait a client may ask for.
const MAX_CAN_WAIT: Duration = Duration::from_secs(60);

fn is_critical(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(CRITICALITY)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"critical"))
}

/// How long this request may wait for a slot: `queue_timeout`, or longer if
/// the client says it can wait.
fn wait_for(session: &Session, scope: &AdaptiveWindow) -> Duration {
    let asked = session
        .req_header()
        .headers
        .get(CAN_WAIT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::config::parse_duration(v).ok())
        .map(|d| d.min(MAX_CAN_WAIT));
    let base = scope.config.adaptive.queue_timeout;
    asked.map_or(base, |a| a.max(base))
}

/// A slot in `scope`'s window, or `None` when the request is refused.
/// Waiting ends at once if the client goes away (an error: nobody is left to
/// answer).
pub async fn admit(
    session: &mut Session,
    scope: &AdaptiveWindow,
) -> Result<Option<AdaptivePermit>> {
    let ctl = &scope.controller;
    let critical = is_critical(session);
    let jitter = scope.config.adaptive.jitter;
    if !critical && !jitter.is_zero() {
        let ms = fastrand::u64(0..=jitter.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(p) = ctl.try_acquire(critical) {
        return Ok(Some(p));
    }
    let wait = wait_for(session, scope);
    if wait.is_zero() {
        return Ok(None);
    }
    let body_empty = session.is_body_empty();
    let gone = async {
        if body_empty {
            // Resolves only when the client closes the connection.
            let _ = session.read_body_or_idle(true).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = ctl.acquire(critical, wait) => Ok(r.ok()),
        _ = gone => {
            let mut e = Error::explain(ConnectionClosed, "client left while queued");
            e.esource = ErrorSource::Downstream;
            Err(e)
        }
    }
}
