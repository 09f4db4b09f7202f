//! `[[routes]]`: which upstream serves which host and path prefix.

use super::diag::Diagnostics;
use super::schema::*;
use super::values::*;
use super::*;

pub(super) fn validate_route(
    r: RawRoute,
    i: usize,
    p: &KeyPath,
    upstreams: &[UpstreamConfig],
    d: &mut Diagnostics<'_>,
) -> Option<RouteConfig> {
    let name = match r.name {
        Some(n) => name_ok(n, &p.key("name"), d),
        None => Some(format!("route{i}")),
    };
    let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        d.error(&p.key("path_prefix"), "must start with '/'");
    }
    let host = r.host.map(|h| h.to_ascii_lowercase());
    if let Some(h) = &host {
        if h.is_empty() || h.contains(['/', ' ']) {
            d.error(&p.key("host"), "must be a host name, optionally with :port");
        }
    }
    let upstream = required(r.upstream, &p.key("upstream"), d).and_then(|u| {
        let idx = upstreams.iter().position(|x| x.name == u);
        if idx.is_none() {
            let known: Vec<_> = upstreams.iter().map(|x| x.name.as_str()).collect();
            let defined = if known.is_empty() {
                "no valid upstream is defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            d.error(
                &p.key("upstream"),
                format!("unknown upstream {u:?} ({defined})"),
            );
        }
        idx
    });
    let max_body_size = match &r.max_body_size {
        None => Some(None),
        Some(v) => byte_size(v, &p.key("max_body_size"), d).map(Some),
    };
    let api = match r.api.as_deref() {
        None | Some("auto") => Some(Some(LlmApi::Auto)),
        Some("openai") => Some(Some(LlmApi::OpenAi)),
        Some("anthropic") => Some(Some(LlmApi::Anthropic)),
        Some("gemini") => Some(Some(LlmApi::Gemini)),
        Some("none") => Some(None),
        Some(o) => {
            d.error(
                &p.key("api"),
                format!(
                    "{o:?}: must be \"openai\", \"anthropic\", \"gemini\", \"auto\" or \"none\""
                ),
            );
            None
        }
    };
    let tokenizer = match r.tokenizer.as_deref() {
        None | Some("o200k_base") => Some(Tokenizer::O200k),
        Some("cl100k_base") => Some(Tokenizer::Cl100k),
        Some(o) => {
            d.error(
                &p.key("tokenizer"),
                format!("{o:?}: must be \"o200k_base\" or \"cl100k_base\""),
            );
            None
        }
    };
    let default_output_tokens = match r.default_output_tokens {
        None => Some(1024),
        Some(n) if (0..=1 << 30).contains(&n) => Some(n as u64),
        Some(_) => {
            d.error(
                &p.key("default_output_tokens"),
                "must be between 0 and 2^30",
            );
            None
        }
    };
    Some(RouteConfig {
        name: name?,
        host,
        path_prefix,
        upstream: upstream?,
        max_body_size: max_body_size?,
        api: api?,
        tokenizer: tokenizer?,
        default_output_tokens: default_output_tokens?,
    })
}
