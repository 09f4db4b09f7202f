//! The LLM wire formats the demo upstream speaks, plain and streamed, so
//! that the official SDKs can talk to it through the gateway:
//!
//! - `POST …/chat/completions` — OpenAI Chat Completions (a stream ends in
//!   a usage chunk when `stream_options.include_usage` asks for one);
//! - `POST …/responses` — the OpenAI Responses API (`response.completed`
//!   carries the usage in a stream);
//! - `POST …/messages` — Anthropic Messages (`message_start` carries the
//!   input tokens, the last `message_delta` the output tokens);
//! - `POST …/models/{model}:generateContent` and `:streamGenerateContent`
//!   — Gemini (`usageMetadata`).
//!
//! The reply is `words` words (query `words=N`, default 8). Its usage counts
//! words: the prompt's and the reply's. Query `usage=none` leaves usage out
//! (plain and streamed); `delay_ms=N` spaces a stream's chunks.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

/// Which API a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Chat,
    Responses,
    Messages,
    Gemini { stream: bool },
}

/// An answer: its content type and its body, in chunks `delay` apart.
pub struct Reply {
    pub content_type: &'static str,
    pub chunks: Vec<Bytes>,
    pub delay: Duration,
}

/// The format of a `POST` to `path`, if it is one of the LLM APIs.
pub fn format_of(path: &str) -> Option<Format> {
    if path.ends_with("/chat/completions") {
        Some(Format::Chat)
    } else if path.ends_with("/responses") {
        Some(Format::Responses)
    } else if path.ends_with("/messages") {
        Some(Format::Messages)
    } else if path.ends_with(":streamGenerateContent") {
        Some(Format::Gemini { stream: true })
    } else if path.ends_with(":generateContent") {
        Some(Format::Gemini { stream: false })
    } else {
        None
    }
}

const WORDS: &[&str] = &[
    "the", "gateway", "kept", "every", "limit", "while", "tokens", "flowed", "through", "it",
];

/// Words in every string of `v` under the prompt's fields.
fn prompt_words(v: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "content"
                            | "text"
                            | "parts"
                            | "system"
                            | "input"
                            | "instructions"
                            | "prompt"
                            | "contents"
                            | "messages"
                    )
                })
                .map(|(_, v)| words(v))
                .sum(),
            _ => 0,
        }
    }
    words(v)
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    match event {
        Some(e) => Bytes::from(format!("event: {e}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

/// The answer to `body` in `format`.
pub fn reply(
    format: Format,
    path: &str,
    body: &Value,
    query: &BTreeMap<String, String>,
    name: &str,
) -> Reply {
    let n: usize = query.get("words").and_then(|v| v.parse().ok()).unwrap_or(8);
    let delay = Duration::from_millis(
        query
            .get("delay_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let usage = query.get("usage").map(String::as_str) != Some("none");
    let words: Vec<String> = (0..n)
        .map(|i| format!("{} ", WORDS[i % WORDS.len()]))
        .collect();
    let text: String = words.concat();
    let input = prompt_words(body);
    let output = n as u64;
    let model = match format {
        Format::Gemini { .. } => path
            .rsplit('/')
            .next()
            .and_then(|m| m.split(':').next())
            .unwrap_or("gemini")
            .to_string(),
        _ => body["model"].as_str().unwrap_or("demo-model").to_string(),
    };
    let stream = match format {
        Format::Gemini { stream } => stream,
        _ => body["stream"].as_bool().unwrap_or(false),
    };
    let plain = |v: Value| Reply {
        content_type: "application/json",
        chunks: vec![Bytes::from(v.to_string())],
        delay: Duration::ZERO,
    };
    let events = |chunks: Vec<Bytes>| Reply {
        content_type: "text/event-stream",
        chunks,
        delay,
    };
    match (format, stream) {
        (Format::Chat, false) => {
            let mut v = json!({
                "id": "chatcmpl-demo", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "system_fingerprint": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            });
            if usage {
                v["usage"] = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
            }
            plain(v)
        }
        (Format::Chat, true) => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            };
            let mut out = vec![sse(
                None,
                &chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            )];
            out.extend(
                words
                    .iter()
                    .map(|w| sse(None, &chunk(json!({"content": w}), Value::Null))),
            );
            out.push(sse(None, &chunk(json!({}), json!("stop"))));
            let asked = body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false);
            if usage && asked {
                out.push(sse(None, &json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                    "choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}})));
            }
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            events(out)
        }
        (Format::Responses, _) => {
            let response = |status: &str, with_text: bool| {
                let mut r = json!({
                    "id": "resp_demo", "object": "response", "created_at": 1_700_000_000, "model": model, "status": status,
                    "output": if with_text {
                        json!([{"type": "message", "id": "msg_demo", "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}])
                    } else { json!([]) },
                    "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
                });
                if usage && with_text {
                    r["usage"] = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + output});
                }
                r
            };
            if !stream {
                return plain(response("completed", true));
            }
            let mut out = vec![sse(
                Some("response.created"),
                &json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", false)}),
            )];
            for (i, w) in words.iter().enumerate() {
                out.push(sse(Some("response.output_text.delta"), &json!({"type": "response.output_text.delta", "sequence_number": i + 1,
                    "item_id": "msg_demo", "output_index": 0, "content_index": 0, "delta": w, "logprobs": []})));
            }
            out.push(sse(Some("response.completed"), &json!({"type": "response.completed", "sequence_number": n + 1, "response": response("completed", true)})));
            events(out)
        }
        (Format::Messages, false) => {
            let mut v = json!({
                "id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            });
            v["usage"] = if usage {
                json!({"input_tokens": input, "output_tokens": output, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
            } else {
                json!({"input_tokens": 0, "output_tokens": 0})
            };
            if !usage {
                v.as_object_mut().map(|o| o.remove("usage"));
            }
            plain(v)
        }
        (Format::Messages, true) => {
            let start_usage = if usage {
                json!({"input_tokens": input, "output_tokens": 1})
            } else {
                json!({})
            };
            let mut out = vec![
                sse(
                    Some("message_start"),
                    &json!({"type": "message_start", "message": {"id": "msg_demo", "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
                ),
                sse(
                    Some("content_block_start"),
                    &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            out.extend(words.iter().map(|w| {
                sse(Some("content_block_delta"), &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}))
            }));
            out.push(sse(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 0}),
            ));
            let end_usage = if usage {
                json!({"output_tokens": output})
            } else {
                json!({})
            };
            out.push(sse(Some("message_delta"), &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": end_usage})));
            out.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
            events(out)
        }
        (Format::Gemini { .. }, false) => {
            let mut v = json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                "modelVersion": model});
            if usage {
                v["usageMetadata"] = json!({"promptTokenCount": input, "candidatesTokenCount": output, "totalTokenCount": input + output});
            }
            plain(v)
        }
        (Format::Gemini { .. }, true) => {
            let mut out: Vec<Bytes> = words
                .iter()
                .map(|w| sse(None, &json!({"candidates": [{"content": {"parts": [{"text": w}], "role": "model"}, "index": 0}], "modelVersion": model})))
                .collect();
            let mut last = json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}], "modelVersion": model});
            if usage {
                last["usageMetadata"] = json!({"promptTokenCount": input, "candidatesTokenCount": output, "totalTokenCount": input + output});
            }
            out.push(sse(None, &last));
            events(out)
        }
    }
}
