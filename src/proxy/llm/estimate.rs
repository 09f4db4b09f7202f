//! What a request will cost, from its body: the prompt's tokens counted
//! with a real BPE tokenizer (`tiktoken-rs`), plus the output cap the
//! request sets (`max_tokens`, `max_completion_tokens`,
//! `max_output_tokens`, Gemini's `generationConfig.maxOutputTokens`) or
//! the route's `default_output_tokens`. Also the model it asks for.

use serde_json::Value;

use super::Api;
use crate::config::Tokenizer;

/// A request's estimated cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// The model the request names.
    pub model: Option<String>,
    /// Tokens of the prompt.
    pub prompt: u64,
    /// The output cap it sets (or the route's default).
    pub output_cap: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.output_cap)
    }
}

/// Tokens of `text` under `tokenizer`.
pub fn count_tokens(tokenizer: Tokenizer, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let bpe = match tokenizer {
        Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
    };
    bpe.encode_ordinary(text).len() as u64
}

/// The model named in a Gemini path (`…/models/{model}:generateContent`).
/// Runs on every request of an `auto` route (every route by default), so it
/// scans bytes: `rsplit_once("/models/")` built a substring searcher each
/// time, about 400 instructions for a path with no model in it.
pub fn gemini_model(path: &str) -> Option<String> {
    const NEEDLE: &[u8] = b"/models/";
    let at = path
        .as_bytes()
        .windows(NEEDLE.len())
        .rposition(|w| w == NEEDLE)?;
    let after = path.get(at + NEEDLE.len()..)?;
    let model = after.split(':').next()?;
    (!model.is_empty()).then(|| model.to_string())
}

/// The prompt's text: every string of the fields a prompt lives in.
fn prompt_text(v: &Value, out: &mut String) {
    const FIELDS: &[&str] = &[
        "messages",
        "content",
        "text",
        "system",
        "input",
        "instructions",
        "prompt",
        "contents",
        "parts",
        "systemInstruction",
    ];
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| prompt_text(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if FIELDS.contains(&k.as_str()) {
                    prompt_text(x, out);
                }
            }
        }
        _ => {}
    }
}

/// The estimate of a request to `path` with `body` (JSON); `None` when the
/// body is not JSON.
pub fn estimate(
    api: Api,
    path: &str,
    body: &[u8],
    tokenizer: Tokenizer,
    default_output: u64,
) -> Option<Estimate> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let model = match api {
        Api::Gemini => gemini_model(path),
        _ => v.get("model").and_then(Value::as_str).map(str::to_string),
    }
    .or_else(|| gemini_model(path));
    let mut text = String::new();
    for k in [
        "messages",
        "system",
        "input",
        "instructions",
        "prompt",
        "contents",
        "systemInstruction",
    ] {
        if let Some(x) = v.get(k) {
            prompt_text(x, &mut text);
        }
    }
    let cap = [
        v.get("max_completion_tokens"),
        v.get("max_tokens"),
        v.get("max_output_tokens"),
        v.pointer("/generationConfig/maxOutputTokens"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_u64);
    Some(Estimate {
        model,
        prompt: count_tokens(tokenizer, &text),
        output_cap: cap.unwrap_or(default_output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_model_is_the_last_models_segment() {
        let m = |p: &str| gemini_model(p);
        assert_eq!(
            m("/v1beta/models/gemini-2.0-flash:generateContent").as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            m("/models/a/models/b:streamGenerateContent").as_deref(),
            Some("b")
        );
        assert_eq!(m("/v1/models/gpt-4o").as_deref(), Some("gpt-4o"));
        assert_eq!(m("/v1/models/").as_deref(), None);
        assert_eq!(m("/v1/models/:x").as_deref(), None);
        assert_eq!(m("/"), None);
        assert_eq!(m(""), None);
        assert_eq!(m("/models"), None);
        assert_eq!(m("/é/models/ü:x").as_deref(), Some("ü"));
    }

    #[test]
    fn estimates_every_format() {
        let chat = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"Hello there, how are you?"}]}],"max_tokens":50}"#;
        let e = estimate(
            Api::OpenAiChat,
            "/v1/chat/completions",
            chat,
            Tokenizer::O200k,
            1024,
        )
        .unwrap();
        assert_eq!(e.model.as_deref(), Some("gpt-4o"));
        assert_eq!(e.output_cap, 50);
        let expected = count_tokens(
            Tokenizer::O200k,
            "You are terse.\nHello there, how are you?\n",
        );
        assert_eq!(e.prompt, expected);
        assert!((8..=14).contains(&e.prompt), "{}", e.prompt);

        let claude = br#"{"model":"claude-x","system":"Be brief.","max_tokens":300,"messages":[{"role":"user","content":"Hi"}]}"#;
        let e = estimate(
            Api::Anthropic,
            "/v1/messages",
            claude,
            Tokenizer::O200k,
            1024,
        )
        .unwrap();
        assert_eq!((e.model.as_deref(), e.output_cap), (Some("claude-x"), 300));

        let gemini = br#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku"}]}],"generationConfig":{"maxOutputTokens":64}}"#;
        let e = estimate(
            Api::Gemini,
            "/v1beta/models/gemini-2.0-flash:generateContent",
            gemini,
            Tokenizer::O200k,
            1024,
        )
        .unwrap();
        assert_eq!(
            (e.model.as_deref(), e.output_cap),
            (Some("gemini-2.0-flash"), 64)
        );
        assert!(e.prompt > 0);

        let responses = br#"{"model":"gpt-4o","input":"Tell me a joke","instructions":"Be funny"}"#;
        let e = estimate(
            Api::OpenAiResponses,
            "/v1/responses",
            responses,
            Tokenizer::Cl100k,
            77,
        )
        .unwrap();
        assert_eq!(e.output_cap, 77);
        assert!(e.prompt > 0);
        assert!(estimate(Api::OpenAiChat, "/", b"not json", Tokenizer::O200k, 1).is_none());
    }
}
