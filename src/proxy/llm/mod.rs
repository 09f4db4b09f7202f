//! The LLM APIs a gateway most often protects — OpenAI (Chat Completions
//! and Responses), Anthropic Messages, Gemini — as far as limits need them:
//! which API a request is for, what it will cost (estimated from its body
//! with a real tokenizer when the client sends no estimate), which model
//! it asks for, and what it did cost (read from the response as it streams
//! by, or counted by the gateway when the upstream reports nothing).

pub mod estimate;
pub mod scan;

pub use estimate::{count_tokens, Estimate};
pub use scan::UsageScanner;

use crate::config::LlmApi;

/// The API of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    Gemini,
    /// An LLM route, but not a path this recognises: usage is read from
    /// whichever keys report it.
    Unknown,
}

impl Api {
    /// The API of a request to `path` on a route serving `route`.
    pub fn of(route: LlmApi, path: &str) -> Api {
        let by_path = || {
            if path.ends_with("/chat/completions") {
                Api::OpenAiChat
            } else if path.ends_with("/responses") {
                Api::OpenAiResponses
            } else if path.ends_with("/messages") {
                Api::Anthropic
            } else if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
                Api::Gemini
            } else {
                Api::Unknown
            }
        };
        match route {
            LlmApi::Auto => by_path(),
            LlmApi::OpenAi => match by_path() {
                Api::OpenAiResponses => Api::OpenAiResponses,
                _ => Api::OpenAiChat,
            },
            LlmApi::Anthropic => Api::Anthropic,
            LlmApi::Gemini => Api::Gemini,
        }
    }
}

/// The tokens of one exchange, by kind (`total` is what is charged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tokens {
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.output)
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// The metric `kind` labels and counts.
    pub fn kinds(&self) -> [(&'static str, u64); 4] {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ]
    }
}

/// The usage the upstream reported, in `api`'s terms; `None` when it
/// reported none.
pub fn reported(api: Api, s: &UsageScanner) -> Option<Tokens> {
    // Every shape below needs a number found: a body without usage, the
    // usual case on a route that is not an LLM API, is done at once.
    if !s.has_usage() {
        return None;
    }
    let g = |k| s.get(k);
    // A total, split into kinds: `input` as reported (cached tokens apart),
    // `output` whatever else the total counts (reasoning included).
    let split = |total: u64, input: u64, cached: u64| {
        let input = input.min(total);
        let cache_read = cached.min(input);
        Tokens {
            input: input - cache_read,
            output: total - input,
            cache_read,
            cache_write: 0,
        }
    };
    let openai = || {
        let total = g("total_tokens")?;
        let input = g("prompt_tokens").or(g("input_tokens")).unwrap_or(0);
        Some(split(total, input, g("cached_tokens").unwrap_or(0)))
    };
    let anthropic = || {
        let (i, o) = (g("input_tokens"), g("output_tokens"));
        if i.is_none() && o.is_none() {
            return None;
        }
        Some(Tokens {
            input: i.unwrap_or(0),
            output: o.unwrap_or(0),
            cache_read: g("cache_read_input_tokens").unwrap_or(0),
            cache_write: g("cache_creation_input_tokens").unwrap_or(0),
        })
    };
    let gemini = || {
        let total = g("totalTokenCount")?;
        Some(split(
            total,
            g("promptTokenCount").unwrap_or(0),
            g("cachedContentTokenCount").unwrap_or(0),
        ))
    };
    match api {
        Api::OpenAiChat | Api::OpenAiResponses => openai(),
        Api::Anthropic => anthropic(),
        Api::Gemini => gemini(),
        Api::Unknown => openai().or_else(gemini).or_else(anthropic),
    }
}
