//! The LLM APIs through the real gateway, driven by the official `openai`
//! and `anthropic` Python SDKs (and plain HTTP for Gemini), against the
//! demo upstream that speaks each wire format: what is charged is the
//! usage the upstream reported (or the gateway's own count when it
//! reported none), estimates come from the body, per-model and per-client
//! limits refuse at their numbers, a stream holds its concurrency place to
//! its last byte, and provider keys stay inside the gateway.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // tests and benches may block: they are not the gateway

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use floodgate::config::Tokenizer;
use floodgate::proxy::llm::count_tokens;

const PROMPT: &str = "Count the tokens of this prompt, please: one two three four five.";

/// The virtualenv's Python with the SDKs (`scripts/setup --test`).
fn sdk_python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    let ok = p.is_file()
        && Command::new(&p)
            .args(["-c", "import openai, anthropic"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the openai and anthropic SDKs are not installed: run scripts/setup --test (it installs them from PyPI into target/sdk-venv)"
    );
    p
}

/// Runs one SDK scenario as client `id`; returns what the SDK saw.
fn sdk(gw: &Gateway, id: &str, scenario: &str) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/llm_clients.py");
    let out = Command::new(sdk_python())
        .arg(script)
        .arg(format!("http://{}", gw.addr))
        .arg(id)
        .arg(scenario)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{scenario}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A gateway on `clients` (a `[clients]` table), with hour-long windows
/// that the test, started clear of an hour's end, never straddles: the
/// exact charges it asserts would read lower past a window's end.
fn llm_gateway(up: &Upstream, clients: &str) -> Gateway {
    let clients = clients.replacen("[clients]\n", "[clients]\nwindow = \"1h\"\n", 1);
    clear_of_window_boundary(Duration::from_secs(3600), Duration::from_secs(60));
    Gateway::start(
        "",
        &(upstream_toml("llm", &[up.addr], "") + &route_toml("llm", "/", "llm") + &clients),
    )
}

async fn tokens_used(gw: &Gateway, id: &str) -> u64 {
    let v = json_at(
        &client(),
        &gw.admin_url(&format!("/api/v1/clients/{id}/stats")),
    )
    .await;
    v["usage"]["tokens_used"].as_u64().unwrap()
}

fn tok(s: &str) -> u64 {
    count_tokens(Tokenizer::O200k, s)
}

/// Every format, plain and streamed, through its SDK: the client is
/// charged exactly the usage the upstream reported; a stream that
/// reported none is charged the gateway's own count (the prompt and the
/// output it streamed, with the same tokenizer); and no SDK saw a chunk it
/// did not ask for (the script fails if it does).
#[tokio::test]
async fn every_format_is_charged_its_usage() {
    let up = Upstream::start("llm");
    let gw = llm_gateway(&up, "[clients]\ndefault = { rpm = 1000, tpm = 1000000 }\n");
    for scenario in [
        "openai_chat",
        "openai_chat_stream_usage",
        "openai_responses",
        "openai_responses_stream",
        "anthropic",
        "anthropic_stream",
    ] {
        let id = format!("c-{scenario}");
        let seen = sdk(&gw, &id, scenario);
        let usage = seen["usage"].as_u64().unwrap_or_else(|| panic!("{seen}"));
        assert_eq!(tokens_used(&gw, &id).await, usage, "{scenario}: {seen}");
    }
    // A stream without usage: the gateway counts.
    let seen = sdk(&gw, "c-own", "openai_chat_stream");
    assert!(seen["usage"].is_null());
    let text = seen["text"].as_str().unwrap();
    let expected = tok(&format!("Be brief.\n{PROMPT}\n")) + tok(text);
    assert_eq!(tokens_used(&gw, "c-own").await, expected, "{seen}");

    // Gemini, plain and streamed, with and without usage.
    let c = client();
    let body = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]});
    let r: serde_json::Value = c
        .post(gw.url("/v1beta/models/gemini-x:generateContent"))
        .header("x-client-id", "g1")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = r["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    assert_eq!(tokens_used(&gw, "g1").await, total);
    let sse = c
        .post(gw.url("/v1beta/models/gemini-x:streamGenerateContent?alt=sse"))
        .header("x-client-id", "g2")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last = sse.lines().rfind(|l| l.starts_with("data: ")).unwrap();
    let last: serde_json::Value = serde_json::from_str(&last[6..]).unwrap();
    assert_eq!(
        tokens_used(&gw, "g2").await,
        last["usageMetadata"]["totalTokenCount"].as_u64().unwrap()
    );
    let plain: serde_json::Value = c
        .post(gw.url("/v1beta/models/gemini-x:generateContent?usage=none"))
        .header("x-client-id", "g3")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = plain["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(
        tokens_used(&gw, "g3").await,
        tok(&format!("{PROMPT}\n")) + tok(text)
    );
}

/// The estimate of a request without `X-Token-Estimate` is its prompt's
/// tokens plus its output cap: a client with a 100-token TPM is refused a
/// request estimated past it, and the message gives the estimate.
#[tokio::test]
async fn an_estimate_is_the_prompt_plus_the_output_cap() {
    let up = Upstream::start("llm");
    let gw = llm_gateway(&up, "[clients]\n[clients.limits.small]\ntpm = 100\n");
    let cases = [
        (
            "/v1/chat/completions",
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 500}),
            500,
        ),
        (
            "/v1/messages",
            serde_json::json!({"model": "m", "system": "Be brief.", "max_tokens": 300, "messages": [{"role": "user", "content": PROMPT}]}),
            300,
        ),
        (
            "/v1beta/models/g:generateContent",
            serde_json::json!({"contents": [{"parts": [{"text": PROMPT}]}], "generationConfig": {"maxOutputTokens": 200}}),
            200,
        ),
    ];
    for (path, body, cap) in cases {
        let r = client()
            .post(gw.url(path))
            .header("x-client-id", "small")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "estimate_too_large");
        let msg = v["message"].as_str().unwrap();
        let n: u64 = msg
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{msg}"));
        let prompt = if path == "/v1/messages" {
            tok(&format!("Be brief.\n{PROMPT}\n"))
        } else {
            tok(&format!("{PROMPT}\n"))
        };
        let expected = prompt + cap;
        let off = (n as f64 - expected as f64).abs() / expected as f64;
        assert!(off <= 0.05, "{path}: estimate {n}, tokenizer {expected}");
    }
}

/// A model's limit and the client's both refuse at exactly their numbers,
/// and a refusal charges neither.
#[tokio::test]
async fn model_and_client_limits_refuse_at_exactly_their_numbers() {
    let up = Upstream::start("llm");
    let gw = llm_gateway(
        &up,
        "[clients]\n[clients.models.\"gpt-4o\"]\nrpm = 3\n[clients.limits.acme]\nrpm = 5\n",
    );
    let send = |model: &'static str| {
        let url = gw.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .header("x-client-id", "acme")
                .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    for _ in 0..3 {
        assert_eq!(send("gpt-4o").await.0, 200);
    }
    let (s, body) = send("gpt-4o").await;
    assert_eq!(s, 429, "{body}");
    assert!(
        body.contains("rpm_exceeded") && body.contains("gpt-4o"),
        "{body}"
    );
    let v = json_at(&client(), &gw.admin_url("/api/v1/clients/acme/stats")).await;
    assert_eq!(
        v["usage"]["requests_used"], 3,
        "the model's refusal charged nothing: {v}"
    );
    assert_eq!(v["models"]["gpt-4o"]["requests_used"], 3, "{v}");
    assert_eq!(send("gpt-4o-mini").await.0, 200);
    assert_eq!(send("gpt-4o-mini").await.0, 200);
    let (s, body) = send("gpt-4o-mini").await;
    assert_eq!(s, 429, "the client's own rpm of 5: {body}");
    assert!(!body.contains("for model"), "{body}");
}

/// `max_concurrent = 1`: while a slow stream is answered, the client's
/// next request is refused (429 `concurrency_exceeded`, Retry-After); once
/// the stream's last byte is read, it is admitted.
#[tokio::test]
async fn a_stream_holds_its_concurrency_place_until_its_last_byte() {
    let up = Upstream::start("llm");
    let gw = llm_gateway(&up, "[clients]\n[clients.limits.one]\nmax_concurrent = 1\n");
    let body = serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut stream = client()
        .post(gw.url("/v1/chat/completions?delay_ms=150&words=8"))
        .header("x-client-id", "one")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap();
    assert!(first.is_some());
    let other = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-client-id", "one")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 429);
    assert!(other.headers().contains_key("retry-after"));
    let v: serde_json::Value = other.json().await.unwrap();
    assert_eq!(v["error"], "concurrency_exceeded");
    let started = Instant::now();
    while stream.chunk().await.unwrap().is_some() {}
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the stream was slow"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-client-id", "one")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

/// A provider key held by the gateway (from the environment): the
/// upstream gets it, never the client's Floodgate key; it is in no log
/// and no admin answer; without its variable the gateway does not start.
#[tokio::test]
async fn provider_keys_stay_in_the_gateway() {
    let up = Upstream::start("llm");
    let secret = "sk-provider-secret-42";
    let digest = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(b"client-key"))
    };
    let rest = upstream_toml(
        "llm",
        &[up.addr],
        "request_headers = { set = { authorization = \"Bearer ${env:FG_TEST_PROVIDER_KEY}\" }, remove = [\"x-debug\"] }",
    ) + &route_toml("llm", "/", "llm")
        + &format!("[clients]\n[clients.limits.acme]\nrpm = 100\napi_keys = [\"sha256:{digest}\"]\n");
    let gw = Gateway::start_full("", &rest, &[], &[("FG_TEST_PROVIDER_KEY", secret)]);
    let v: serde_json::Value = client()
        .get(gw.url("/echo"))
        .header("authorization", "Bearer client-key")
        .header("x-debug", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["authorization"],
        serde_json::json!([format!("Bearer {secret}")])
    );
    assert!(v["headers"].get("x-debug").is_none(), "{v}");
    let c = client();
    for path in [
        "/metrics",
        "/api/v1/hosts",
        "/api/v1/clients",
        "/api/v1/stats",
        "/api/v1/backpressure",
        "/ready",
    ] {
        let body = c
            .get(gw.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(secret), "{path} shows the provider key");
    }
    assert!(!gw.log().contains(secret), "the log shows the provider key");

    // Without its variable: no start, and the error names the key.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("floodgate.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"127.0.0.1:{}\"\n\n{rest}",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let mut p = Proc::spawn_env(&["--conf", &conf_s], &[], dir.path().join("log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "started without its provider key"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains("request_headers.set.authorization") && log.contains("FG_TEST_PROVIDER_KEY"),
        "{log}"
    );
}
