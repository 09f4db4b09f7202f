//! One sync of the client quotas: for every client used here since the
//! last sync, this instance's own totals out and the other instances'
//! totals in; for up to [`READ_BUDGET`] clients followed here but not used
//! since, the others' totals in.

use std::sync::Arc;

use futures::future::join_all;

use super::store::{quota_key, Store};
use crate::limits::fleet::FleetQuotas;
use crate::limits::rate::Usage;

/// A hash's fields and values.
type Fields = Vec<(String, u64)>;

/// Clients synced at once (each is one pipeline, in its own slot).
const CONCURRENCY: usize = 64;

/// Clients not used here since the last sync whose view of the others is
/// read again in one sync, the oldest views first: with fewer, every view
/// is at most one sync old; with more, they take turns, and the store's
/// load stays bounded.
pub const READ_BUDGET: usize = 256;

/// What one sync did: clients synced, failures.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuotaSync {
    pub synced: usize,
    pub failed: usize,
}

/// Syncs every client the fleet view follows. `Err` only when no client
/// could be synced at all (the store is down); single failures are retried
/// at the next sync.
pub async fn sync(
    store: &Store,
    fleet: &Arc<FleetQuotas>,
    instance: &str,
) -> redis::RedisResult<QuotaSync> {
    let n = fleet.window_now();
    let ttl_ms = fleet.window_ms() * 3;
    let todo = fleet.to_sync(READ_BUDGET);
    let mut out = QuotaSync::default();
    let mut first_error = None;
    for chunk in todo.chunks(CONCURRENCY) {
        let results = join_all(chunk.iter().map(|(id, own)| {
            let mut conn = store.clone();
            async move {
                let r = one(&mut conn, id, own, n, ttl_ms, instance).await;
                (id, r)
            }
        }))
        .await;
        for (id, r) in results {
            match r {
                Ok((cur, prev)) => {
                    fleet.set_others(id, n, cur);
                    if let Some(p) = n.checked_sub(1) {
                        fleet.set_others(id, p, prev);
                    }
                    out.synced += 1;
                }
                Err(e) => {
                    fleet.retry(id);
                    out.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) if out.synced == 0 => Err(e),
        _ => Ok(out),
    }
}

/// Writes `id`'s own totals (when changed: `own` is empty otherwise) and
/// reads the others' for the current and previous window: one pipeline,
/// one slot.
async fn one(
    conn: &mut Store,
    id: &str,
    own: &[(u64, Usage)],
    n: u64,
    ttl_ms: u64,
    instance: &str,
) -> redis::RedisResult<(Usage, Usage)> {
    let (fr, ft) = (format!("{instance}:r"), format!("{instance}:t"));
    let mut p = redis::pipe();
    for (w, u) in own {
        let key = quota_key(id, *w);
        p.hset_multiple(&key, &[(&fr, u.requests), (&ft, u.tokens)])
            .ignore()
            .pexpire(&key, ttl_ms as i64)
            .ignore();
    }
    let cur_key = quota_key(id, n);
    let prev_key = quota_key(id, n.saturating_sub(1));
    p.hgetall(&cur_key).hgetall(&prev_key);
    let (cur, prev): (Fields, Fields) = p.query_async(conn).await?;
    let others = |fields: Fields| {
        let mut u = Usage::default();
        for (f, v) in fields {
            if f == fr || f == ft {
                continue;
            }
            if f.ends_with(":r") {
                u.requests = u.requests.saturating_add(v);
            } else if f.ends_with(":t") {
                u.tokens = u.tokens.saturating_add(v);
            }
        }
        u
    };
    let prev = if n == 0 {
        Usage::default()
    } else {
        others(prev)
    };
    Ok((others(cur), prev))
}
