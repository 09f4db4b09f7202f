//! `[clients]`: client identity, token costs, and the quota policy.

use std::time::Duration;

use crate::limits::clients::{ClientLimit, ClientsPolicy, Mode, Privileges};

/// The longest queue wait a client may be allowed.
const MAX_WAIT: Duration = Duration::from_secs(60);
use crate::limits::rate::TablePlan;

/// Bounds of `max_client_table_memory`.
const MIN_TABLE_MEMORY: usize = 1 << 20;
const MAX_TABLE_MEMORY: usize = 64 << 30;

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

/// Names the client id header may not take: framing and connection
/// fields, the target's, credentials and cookies, and the headers the
/// gateway writes upstream itself.
const RESERVED_ID_HEADERS: [&str; 26] = [
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "expect",
    "te",
    "trailer",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
    "proxy-authenticate",
    "proxy-authorization",
    "authorization",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
    "via",
    "max-forwards",
];

pub(super) fn validate_clients(c: RawClients, d: &mut Diagnostics<'_>) -> Option<ClientsConfig> {
    use crate::limits::rate::{Quota, MAX_RPM, MAX_TPM};
    let p = KeyPath::root().key("clients");
    let base = ClientsConfig::default();
    let header = |v: Option<String>, key: &str, d: &mut Diagnostics<'_>| match v {
        None => Some(None),
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => Some(Some(n)),
            Err(_) => {
                d.error(&p.key(key), format!("{h:?} is not a valid header name"));
                None
            }
        },
    };
    let id_header = header(c.id_header, "id_header", d).map(|h| h.unwrap_or(base.id_header));
    if let Some(n) = id_header
        .as_ref()
        .filter(|n| RESERVED_ID_HEADERS.contains(&n.as_str()))
    {
        // The id header goes upstream as the resolved id: under such a
        // name it would reframe the request, redirect it, or overwrite what
        // the gateway writes (found by a hostile-client run).
        d.error(
            &p.key("id_header"),
            format!(
                "{:?} has a meaning of its own in HTTP or to the gateway, which rewrites the id header upstream; choose another name",
                n.as_str()
            ),
        );
    }
    let token_header =
        header(c.token_header, "token_header", d).map(|h| h.unwrap_or(base.token_header));
    let usage_header = header(c.usage_header, "usage_header", d);
    let default_tokens = match c.default_tokens {
        None => Some(0),
        Some(n) if n >= 0 => Some(n as u64),
        Some(_) => {
            d.error(&p.key("default_tokens"), "must be >= 0");
            None
        }
    };
    let missing_id = match c.missing_id.as_deref() {
        None | Some("ip") => Some(MissingId::Ip),
        Some("reject") => Some(MissingId::Reject),
        Some(o) => {
            d.error(
                &p.key("missing_id"),
                format!("{o:?}: must be \"ip\" or \"reject\""),
            );
            None
        }
    };
    let mode_of = |v: Option<&str>, path: &KeyPath, default: Mode, d: &mut Diagnostics<'_>| match v
    {
        None => Some(default),
        Some("enforce") => Some(Mode::Enforce),
        Some("shadow") => Some(Mode::Shadow),
        Some(o) => {
            d.error(path, format!("{o:?}: must be \"enforce\" or \"shadow\""));
            None
        }
    };
    let mode = mode_of(c.mode.as_deref(), &p.key("mode"), Mode::Enforce, d);
    let window = duration_or(c.window, "60s", &p.key("window"), d);
    if window.is_some_and(|w| w < Duration::from_millis(100)) {
        d.error(&p.key("window"), "must be at least 100ms");
    }
    let max_tracked_clients = match c.max_tracked_clients {
        None => Some(base.policy.max_tracked_clients),
        Some(n) => positive(n, &p.key("max_tracked_clients"), d),
    };
    let max_client_table_memory = match &c.max_client_table_memory {
        None => Some(base.policy.max_client_table_memory),
        Some(v) => byte_size(v, &p.key("max_client_table_memory"), d).filter(|m| {
            let ok = (MIN_TABLE_MEMORY..=MAX_TABLE_MEMORY).contains(m);
            if !ok {
                d.error(
                    &p.key("max_client_table_memory"),
                    "must be between 1MiB and 64GiB",
                );
            }
            ok
        }),
    };
    if let (Some(n), Some(m)) = (max_tracked_clients, max_client_table_memory) {
        let needed = TablePlan::memory_needed(n);
        if needed > m {
            d.error(
                &p.key("max_tracked_clients"),
                format!(
                    "{n} clients need {} MiB of tables, more than max_client_table_memory ({} MiB)",
                    needed.div_ceil(1 << 20),
                    m >> 20
                ),
            );
        }
    }
    let refund_on_client_abort = match c.refund_on_client_abort.as_deref() {
        None | Some("unstarted") => Some(AbortRefund::Unstarted),
        Some("none") => Some(AbortRefund::None),
        Some(o) => {
            d.error(
                &p.key("refund_on_client_abort"),
                format!("{o:?}: must be \"unstarted\" or \"none\""),
            );
            None
        }
    };
    let limit = |v: Option<i64>, max: u64, path: &KeyPath, d: &mut Diagnostics<'_>| match v {
        None => Some(None),
        Some(n) if n >= 0 && (n as u64) <= max => Some(Some(n as u64)),
        Some(_) => {
            d.error(path, format!("must be between 0 and {max}"));
            None
        }
    };
    let concurrency = |v: Option<i64>, path: &KeyPath, d: &mut Diagnostics<'_>| match v {
        None => Some(None),
        Some(n) if (1..=1 << 20).contains(&n) => Some(Some(n as u64)),
        Some(_) => {
            d.error(path, "must be between 1 and 1048576");
            None
        }
    };
    let mut default_max_concurrent = Some(None);
    let default = match c.default {
        None => Some(None),
        Some(q) => {
            let dp = p.key("default");
            let rpm = limit(q.rpm, MAX_RPM, &dp.key("rpm"), d);
            let tpm = limit(q.tpm, MAX_TPM, &dp.key("tpm"), d);
            default_max_concurrent = concurrency(q.max_concurrent, &dp.key("max_concurrent"), d);
            rpm.zip(tpm).map(|(rpm, tpm)| Some(Quota { rpm, tpm }))
        }
    };
    // Per-model limits: `models."gpt-4o" = { rpm, tpm }`.
    let models_of = |m: std::collections::BTreeMap<String, RawModelQuota>,
                     path: &KeyPath,
                     d: &mut Diagnostics<'_>| {
        let mut out = std::collections::BTreeMap::new();
        for (model, q) in m {
            let mp = path.key(&model);
            if model.is_empty() || model.len() > 128 || model.chars().any(char::is_control) {
                d.error(&mp, "a model name is 1-128 characters");
                continue;
            }
            let rpm = limit(q.rpm, MAX_RPM, &mp.key("rpm"), d);
            let tpm = limit(q.tpm, MAX_TPM, &mp.key("tpm"), d);
            if let (Some(rpm), Some(tpm)) = (rpm, tpm) {
                out.insert(model, Quota { rpm, tpm });
            }
        }
        out
    };
    let models = models_of(c.models, &p.key("models"), d);
    let mut limits = std::collections::BTreeMap::new();
    let mut key_owner: std::collections::HashMap<[u8; 32], String> = Default::default();
    for (id, l) in c.limits {
        let lp = p.key("limits").key(&id);
        if let Err(e) = crate::limits::clients::check_client_id(id.as_bytes()) {
            d.error(&lp, format!("client id {e}"));
            continue;
        }
        let fallback = default.flatten().unwrap_or_default();
        let rpm = limit(l.rpm, MAX_RPM, &lp.key("rpm"), d).map(|v| v.or(fallback.rpm));
        let tpm = limit(l.tpm, MAX_TPM, &lp.key("tpm"), d).map(|v| v.or(fallback.tpm));
        let cmode = mode_of(
            l.mode.as_deref(),
            &lp.key("mode"),
            mode.unwrap_or(Mode::Enforce),
            d,
        );
        let mut api_keys = Vec::new();
        for (i, k) in l.api_keys.iter().enumerate() {
            let kp = lp.key("api_keys").index(i);
            let digest = k
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            match digest {
                Some(dg) => {
                    if let Some(other) = key_owner.insert(dg, id.clone()) {
                        d.error(&kp, format!("this key is also client {other:?}'s"));
                    }
                    api_keys.push(dg);
                }
                None => d.error(
                    &kp,
                    "must be \"sha256:\" and 64 hex digits (e.g. `printf %s KEY | sha256sum`)",
                ),
            }
        }
        let max_wait = match l.max_wait {
            None => Some(None),
            Some(w) => duration_or(Some(w), "0s", &lp.key("max_wait"), d).map(|w| {
                if w > MAX_WAIT {
                    d.error(&lp.key("max_wait"), "must be at most 60s");
                }
                Some(w.min(MAX_WAIT))
            }),
        };
        let max_concurrent = concurrency(l.max_concurrent, &lp.key("max_concurrent"), d)
            .map(|v| v.or(default_max_concurrent.flatten()));
        let client_models = models_of(l.models, &lp.key("models"), d);
        if let (Some(rpm), Some(tpm), Some(m), Some(max_wait), Some(max_concurrent)) =
            (rpm, tpm, cmode, max_wait, max_concurrent)
        {
            limits.insert(
                id,
                ClientLimit {
                    quota: Quota { rpm, tpm },
                    enabled: l.enabled.unwrap_or(true),
                    mode: m,
                    api_keys,
                    privileges: Privileges {
                        critical: l.allow_criticality.unwrap_or(false),
                        max_wait,
                    },
                    max_concurrent,
                    models: client_models,
                },
            );
        }
    }
    Some(ClientsConfig {
        id_header: id_header?,
        token_header: token_header?,
        default_tokens: default_tokens?,
        missing_id: missing_id?,
        usage_header: usage_header?,
        refund_on_client_abort: refund_on_client_abort?,
        policy: ClientsPolicy {
            window: window?,
            mode: mode?,
            max_tracked_clients: max_tracked_clients?,
            max_client_table_memory: max_client_table_memory?,
            overflow: base.policy.overflow,
            default: default?,
            limits,
            models,
            default_max_concurrent: default_max_concurrent?,
            // Set from `[fleet]` once the whole file is validated.
            fleet: None,
        },
    })
}
