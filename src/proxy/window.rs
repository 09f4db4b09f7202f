//! Request-path side of the adaptive windows: criticality, jitter, how long
//! a request may wait, and leaving the queue when the client hangs up.
//!
//! A client's own headers count only as far as it is trusted:
//! `X-Request-Criticality: critical` only for a client configured with
//! `allow_criticality`, `X-Can-Wait` only up to its `max_wait` — or
//! anything, through a trusted proxy (which decides for its own clients).

use std::time::Duration;

use pingora::prelude::*;
use pingora::proxy::Session;

use crate::limits::adaptive::AdaptivePermit;
use crate::limits::clients::Privileges;
use crate::runtime::AdaptiveWindow;

/// `X-Request-Criticality: critical` skips jitter and may use the reserved
/// share of the window.
const CRITICALITY: &str = "x-request-criticality";
/// `X-Can-Wait: <duration>`: the client accepts a longer queue wait.
const CAN_WAIT: &str = "x-can-wait";
/// The longest wait anyone may ask for.
const MAX_CAN_WAIT: Duration = Duration::from_secs(60);

/// What a request through a trusted proxy may ask for.
pub const TRUSTED: Privileges = Privileges {
    critical: true,
    max_wait: Some(MAX_CAN_WAIT),
};

fn is_critical(session: &Session, privileges: Privileges) -> bool {
    privileges.critical
        && session
            .req_header()
            .headers
            .get(CRITICALITY)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"critical"))
}

/// How long this request may wait for a slot: `queue_timeout`, or longer if
/// the client says it can wait and is allowed to.
fn wait_for(session: &Session, scope: &AdaptiveWindow, privileges: Privileges) -> Duration {
    let base = scope.config.adaptive.queue_timeout;
    let Some(allowed) = privileges.max_wait else {
        return base;
    };
    let asked = session
        .req_header()
        .headers
        .get(CAN_WAIT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::config::parse_duration(v).ok())
        .map(|d| d.min(allowed).min(MAX_CAN_WAIT));
    asked.map_or(base, |a| a.max(base))
}

/// A place in `scope`'s window taken at once, when one is free and no
/// jitter applies: the common case of [`admit`], without its future (which
/// its callers box: held in place, it made every request filter's future,
/// which Pingora moves into a fresh box per request, larger by its size).
pub fn admit_now(
    session: &Session,
    scope: &AdaptiveWindow,
    privileges: Privileges,
) -> Option<AdaptivePermit> {
    let critical = is_critical(session, privileges);
    if !critical && !scope.config.adaptive.jitter.is_zero() {
        return None;
    }
    scope.controller.try_acquire(critical)
}

/// A slot in `scope`'s window, or `None` when the request is refused.
/// Waiting ends at once if the client goes away (an error: nobody is left to
/// answer).
pub async fn admit(
    session: &mut Session,
    scope: &AdaptiveWindow,
    privileges: Privileges,
) -> Result<Option<AdaptivePermit>> {
    let ctl = &scope.controller;
    let critical = is_critical(session, privileges);
    let jitter = scope.config.adaptive.jitter;
    if !critical && !jitter.is_zero() {
        let ms = fastrand::u64(0..=jitter.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(p) = ctl.try_acquire(critical) {
        return Ok(Some(p));
    }
    let wait = wait_for(session, scope, privileges);
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
