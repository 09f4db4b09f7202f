//! The admin operations' inputs and outputs (what the OpenAPI document
//! describes, and what the gRPC adapter converts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::limits::adaptive::Snapshot;
use crate::limits::clients::ClientCounters;
use crate::limits::connections::{HostInfo, Proxy};
use crate::runtime::control::ClientRecord;
use crate::services::fleet::FleetState;

/// Every error: a code, a message, and for `config_rejected` the file's
/// errors.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `body_too_large`, `request_timeout`, `config_rejected`,
    /// `state_not_saved`, `internal`.
    pub error: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ConfigIssue>>,
}

/// One error of a rejected config file.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ConfigIssue {
    /// The key path, e.g. `upstreams[0].max_connections`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Whether the instance can serve.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Finishing its requests before it exits (SIGTERM, SIGQUIT).
    pub draining: bool,
    /// Fleet mode: whether Redis answered the last round (absent without a fleet).
    pub fleet: Option<bool>,
    pub routes: usize,
    pub upstreams: usize,
}

/// A quota: requests and tokens per window (absent: unlimited).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct QuotaBody {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClientList {
    /// Every client the config file or the API defines, by id.
    pub clients: Vec<ClientRecord>,
    /// The quota of clients without limits of their own (absent: none).
    pub default: Option<QuotaBody>,
}

/// A client id: 1 to 256 characters, no control characters, no leading or
/// trailing white space (what `check_client_id` accepts). Written out in
/// the `#[schema]` attributes below (they take literals only); a test checks
/// the document against this.
pub const CLIENT_ID_PATTERN: &str = concat!(
    r"^[^\x00-\x1f\x7f-\x9f\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"(?:[^\x00-\x1f\x7f-\x9f]*",
    r"[^\x00-\x1f\x7f-\x9f\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
);

/// A host a cap may be set for: printable ASCII without spaces or `%`.
pub const HOST_PATTERN: &str = "^[!-$&-~]+$";

/// A client's limits, as `PUT /api/v1/clients/{id}` takes them.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientLimits {
    /// Requests per window; absent or null: the default's.
    #[serde(default, deserialize_with = "integers::optional")]
    #[schema(minimum = 0, maximum = 4194303)]
    pub rpm: Option<u64>,
    /// Tokens per window; absent or null: the default's.
    #[serde(default, deserialize_with = "integers::optional")]
    #[schema(minimum = 0, maximum = 274877906943_u64)]
    pub tpm: Option<u64>,
    /// `false`: not limited. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl From<ClientLimits> for crate::runtime::control::ClientOverride {
    fn from(l: ClientLimits) -> Self {
        crate::runtime::control::ClientOverride {
            rpm: l.rpm,
            tpm: l.tpm,
            enabled: l.enabled,
        }
    }
}

/// `POST /api/v1/clients`: a client's limits with its id (`id`, or
/// FlowGuard's `client_id`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// The client id (FlowGuard's `client_id` is accepted too).
    #[serde(alias = "client_id")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub id: String,
    /// Requests per window; absent or null: the default's.
    #[serde(default, deserialize_with = "integers::optional")]
    #[schema(minimum = 0, maximum = 4194303)]
    pub rpm: Option<u64>,
    /// Tokens per window; absent or null: the default's.
    #[serde(default, deserialize_with = "integers::optional")]
    #[schema(minimum = 0, maximum = 274877906943_u64)]
    pub tpm: Option<u64>,
    /// `false`: not limited. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Whole numbers as JSON Schema means them: `5` and `5.0` alike (a number
/// with a fractional part, or out of range, is refused).
mod integers {
    use serde::de::{Deserializer, Error, Visitor};

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number >= 0")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is below 0")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 itself is the first float above u64::MAX.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::custom(format!("{v} is not a whole number >= 0")))
            }
        }
    }

    pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number >= 0, or null")
            }
            fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
                whole(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }
}

/// What `set_client` did.
#[derive(Clone, Debug, Serialize)]
pub struct ClientSet {
    pub client: ClientRecord,
    /// Whether the client had no API override before.
    pub created: bool,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClientDeleted {
    /// The id whose API override was removed.
    pub deleted: String,
    /// The client as it is now (its file limits), if it is still configured.
    pub now: Option<ClientRecord>,
}

/// A client's usage of its quota in the current window.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Usage {
    /// `false`: no quota applies (the other fields are absent).
    pub limited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_remaining: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ClientStatsReport {
    pub id: String,
    /// Whether the client has limits of its own (only those keep stats).
    pub configured: bool,
    pub stats: Option<ClientCounters>,
    pub usage: Usage,
    /// Usage under each per-model quota the client has used.
    pub models: BTreeMap<String, Usage>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Requests answered since start.
    pub requests: u64,
    /// Requests by outcome (`allowed` or a refusal code).
    pub by_outcome: BTreeMap<String, u64>,
    /// Tokens charged to configured clients.
    pub tokens_configured_clients: u64,
    pub clients: BTreeMap<String, ClientCounters>,
}

/// `POST /api/v1/ratelimit/{key}/check`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// Tokens to charge with the request (default 0; at most the largest
    /// TPM a quota may have).
    #[serde(default, deserialize_with = "integers::whole")]
    #[schema(minimum = 0, maximum = 274877906943_u64)]
    pub tokens: u64,
}

/// The limiter's answer to a check.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CheckResult {
    pub allowed: bool,
    /// What is left of the tightest quota (absent: unlimited).
    pub remaining: Option<u64>,
    /// The tightest quota (absent: unlimited).
    pub limit: Option<u64>,
    /// Milliseconds until the window ends.
    pub reset_after_ms: u64,
}

/// A check with what the adapters need besides its body.
#[derive(Clone, Debug)]
pub struct Check {
    pub result: CheckResult,
    /// Why it was refused (a refusal code), with its HTTP status.
    pub refused: Option<crate::limits::RejectReason>,
    pub retry_after_ms: u64,
    pub state: Option<crate::limits::rate::QuotaState>,
    pub exceeded: Option<crate::limits::rate::Exceeded>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostInfo>,
}

/// Which proxy a host means, when it could be both.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Which {
    /// `reverse` (an upstream's backend) or `forward` (a forward-proxy
    /// destination); absent: a backend if there is one, else the forward
    /// proxy's.
    pub proxy: Option<Proxy>,
}

/// `PUT /api/v1/hosts/{host}`.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCap {
    /// 0 = no cap; at most 4 294 967 295.
    #[serde(deserialize_with = "integers::whole")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub max_connections: u64,
}

/// The adaptive concurrency windows: the gateway-wide one's fields (those
/// of a `Snapshot`: `window`, `inflight`, `signals`, ...) at the top level
/// when `enabled`, each upstream's window under `upstreams`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Backpressure {
    /// Whether the gateway has a gateway-wide window.
    pub enabled: bool,
    #[serde(flatten)]
    #[schema(ignore)]
    pub gateway: Option<Snapshot>,
    pub upstreams: BTreeMap<String, Snapshot>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Reloaded {
    /// Always `success`.
    pub result: String,
    /// Keys whose new values apply only after a restart.
    pub restart_required: Vec<String>,
}

/// This instance's view of the fleet.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FleetReport {
    #[serde(flatten)]
    pub state: FleetState,
    /// Instances whose heartbeat is recent.
    pub live_instances: Option<u64>,
    /// Whether the quotas decide locally because Redis is unreachable.
    pub quotas_degraded: Option<bool>,
}

/// `{id}` of the client routes.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClientId {
    /// The client id.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub id: String,
}

/// `{key}` of the check route.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CheckKey {
    /// A client id, under the same policies as proxied traffic.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x1f\\x7f-\\x9f\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?$"
    )]
    pub key: String,
}

/// `{host}` of the host routes.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HostName {
    /// `host:port` (a backend, or a forward-proxy destination).
    #[param(min_length = 1, max_length = 261, pattern = "^[!-$&-~]+$")]
    pub host: String,
}
