//! Per-request state, carried from `request_filter` to `logging`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::admission::{Admission, Outcome};
use super::headers::{Carries, Origin};
use super::llm::{self, Api, Estimate, Tokens, UsageScanner};
use crate::limits::clients::Privileges;
use crate::limits::rate::QuotaState;
use crate::limits::RejectReason;
use crate::runtime::upstream::Upstream;
use crate::runtime::Runtime;

/// Everything one request accumulates on its way through the phases.
pub struct RequestCtx {
    /// When the request header was read.
    pub started: Instant,
    /// The configuration this request sees from start to end.
    pub runtime: Option<Arc<Runtime>>,
    pub request_id: super::headers::RequestId,
    /// Name of the matched route.
    pub route: Option<Arc<str>>,
    /// The matched route's request metrics.
    pub route_metrics: Option<Arc<crate::metrics::RouteMetrics>>,
    /// The upstream serving the matched route.
    pub upstream: Option<Arc<Upstream>>,
    /// The backend of the current attempt.
    pub backend: Option<SocketAddr>,
    /// Backends that refused a connection for this request.
    pub failed_backends: Vec<SocketAddr>,
    /// Set when the gateway answered the request itself.
    pub reject: Option<RejectReason>,
    /// Who sent the request: peer, whether it is a trusted proxy, the
    /// client behind it.
    pub origin: Origin,
    /// Which of the names the request filter reads the request carries.
    pub carries: Carries,
    /// The resolved client id, when client limits apply.
    pub client_id: Option<String>,
    /// The client named itself with one of its Floodgate API keys (which
    /// then never goes upstream).
    pub by_api_key: bool,
    /// The id header, as the client sent it, already names the client in
    /// one line ([`super::identity::Identity::header_as_is`]).
    pub id_header_as_is: bool,
    /// What the client may ask of the adaptive windows.
    pub privileges: Privileges,
    /// Everything the request took (quota charge, permits, host slot).
    pub admission: Admission,
    /// The client's quotas after the decision, for the response headers.
    pub quota_state: Option<QuotaState>,
    /// What a shadow-mode policy would have answered.
    pub shadow: Option<RejectReason>,
    /// Reads actual token usage from the response body.
    pub usage: Option<UsageScanner>,
    /// Actual token usage from the configured response header.
    pub reported_tokens: Option<u64>,
    /// The upstream answered 5xx.
    pub upstream_failed: bool,
    /// The route's body limit, and the body bytes seen so far.
    pub max_body_size: Option<usize>,
    pub body_bytes: usize,
    /// When a body still streaming from the client is too late
    /// (`server.body_timeout` after the request was admitted).
    pub body_deadline: Option<std::time::Instant>,
    /// An LLM route's request: its API, estimate, model, place under the
    /// client's `max_concurrent`.
    pub llm: LlmCtx,
}

/// A request body the connection guard read whole, handed to the request's
/// context (through Pingora's connection user context) so that an LLM
/// route can estimate from it before deciding.
#[derive(Debug)]
pub struct RequestBody(pub bytes::Bytes);

/// What an LLM route's request carries (see [`crate::proxy::llm`]).
#[derive(Debug, Default)]
pub struct LlmCtx {
    /// The API of the request (`None`: not an LLM route).
    pub api: Option<Api>,
    pub tokenizer: crate::config::Tokenizer,
    pub default_output_tokens: u64,
    /// The request body, when it was read whole before the decision.
    pub body: Option<bytes::Bytes>,
    /// The cost estimated from the body.
    pub estimate: Option<Estimate>,
    /// The model the request asks for.
    pub model: Option<String>,
    /// Its place under the client's `max_concurrent`, held until the
    /// response ends (a stream: its last byte).
    pub inflight: Option<crate::limits::clients::InFlight>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            started: Instant::now(),
            runtime: None,
            request_id: Default::default(),
            route: None,
            route_metrics: None,
            upstream: None,
            backend: None,
            failed_backends: Vec::new(),
            reject: None,
            origin: Origin::default(),
            carries: Carries::ALL,
            client_id: None,
            by_api_key: false,
            id_header_as_is: false,
            privileges: Privileges::default(),
            admission: Admission::default(),
            quota_state: None,
            shadow: None,
            usage: None,
            reported_tokens: None,
            upstream_failed: false,
            max_body_size: None,
            body_bytes: 0,
            body_deadline: None,
            llm: LlmCtx::default(),
        }
    }

    /// The tokens the exchange took: the upstream's usage (its header, else
    /// its body in the route's API's terms), else — on an LLM route that
    /// was answered — the gateway's own count (the prompt, estimated, and
    /// the output it streamed, counted with the same tokenizer).
    pub fn tokens(&self) -> Option<Tokens> {
        if let Some(n) = self.reported_tokens {
            let input = self.llm.estimate.as_ref().map_or(0, |e| e.prompt).min(n);
            return Some(Tokens {
                input,
                output: n - input,
                ..Tokens::default()
            });
        }
        let scanner = self.usage.as_ref()?;
        let api = self.llm.api.unwrap_or(Api::Unknown);
        if let Some(t) = llm::reported(api, scanner) {
            return Some(t);
        }
        if self.llm.api.is_none() || self.upstream_failed {
            return None;
        }
        let (text, overflow) = scanner.text();
        if text.is_empty() && overflow == 0 {
            return None;
        }
        let output = llm::count_tokens(self.llm.tokenizer, &String::from_utf8_lossy(text))
            + (overflow as u64).div_ceil(4);
        Some(Tokens {
            input: self.llm.estimate.as_ref().map_or(0, |e| e.prompt),
            output,
            ..Tokens::default()
        })
    }

    /// The usage the upstream reported so far (or the gateway counted).
    pub fn reported_usage(&self) -> Option<u64> {
        self.tokens().map(|t| t.total())
    }

    /// The upstream response has ended (with or without a body): settle
    /// now, not when Pingora drops the context after the client has its
    /// last byte, so the client's next request sees the settled state.
    pub fn upstream_response_ended(&mut self) {
        // Counted once, for the outcome and for the metric.
        let tokens = self.tokens();
        let outcome = if self.upstream_failed {
            Outcome::UpstreamFailed
        } else {
            Outcome::Answered {
                usage: tokens.map(|t| t.total()),
            }
        };
        self.settle_with(outcome, tokens);
    }

    /// Ends the admission with `outcome` and counts the tokens it settled.
    pub fn settle(&mut self, outcome: Outcome) {
        // Counted only for a charge still held (a second settlement, as
        // after an upstream failure once the answer had settled, counts
        // nothing: up to a megabyte of collected text need not be read).
        let tokens = match self.admission.charged_tokens() {
            Some(_) => self.tokens(),
            None => None,
        };
        self.settle_with(outcome, tokens);
    }

    /// [`Self::settle`], with what [`Self::tokens`] says now.
    fn settle_with(&mut self, outcome: Outcome, tokens: Option<Tokens>) {
        let Some(settled) = self.admission.finish(outcome) else {
            return;
        };
        let m = crate::metrics::metrics();
        if settled.clamped {
            m.usage_clamped_total.inc();
        }
        // No token settled, none to count by kind (and no label to look up).
        if settled.tokens == 0 {
            return;
        }
        if let (Some(rt), Some(id)) = (&self.runtime, &self.client_id) {
            // By kind: the usage's split when there is one, else the
            // estimate's (prompt as input, the rest as output).
            let kinds = match tokens.filter(|t| t.total() == settled.tokens) {
                Some(t) => t,
                None => {
                    let prompt = self.llm.estimate.as_ref().map_or(0, |e| e.prompt);
                    let input = prompt.min(settled.tokens);
                    Tokens {
                        input,
                        output: settled.tokens - input,
                        ..Tokens::default()
                    }
                }
            };
            let client = rt.clients.label(id);
            let model = self
                .llm
                .model
                .as_deref()
                .map_or("none", |m| rt.clients.model_label(m));
            for (kind, n) in kinds.kinds() {
                if n > 0 {
                    m.tokens_total
                        .with_label_values(&[client, model, kind])
                        .inc_by(n);
                }
            }
        }
    }

    /// The metric `outcome` label: `allowed` or the reject code.
    pub fn outcome(&self) -> &'static str {
        self.reject
            .map_or(crate::metrics::OUTCOME_ALLOWED, RejectReason::as_str)
    }

    /// The metric `route` label.
    pub fn route_label(&self) -> &str {
        self.route
            .as_deref()
            .unwrap_or(crate::metrics::NO_ROUTE_LABEL)
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
