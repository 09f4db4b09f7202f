//! The usage scanner over a response body (JSON or server-sent events)
//! fed in arbitrary chunks: it never panics, and reads the same usage and
//! the same text whatever the chunking.
#![no_main]

use floodgate::proxy::llm::UsageScanner;
use libfuzzer_sys::fuzz_target;

const KEYS: &[&str] = &[
    "total_tokens",
    "prompt_tokens",
    "input_tokens",
    "output_tokens",
    "totalTokenCount",
];

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (body, cuts) = input;
    let mut whole = UsageScanner::new();
    whole.feed(&body);
    whole.finish();
    let mut chunked = UsageScanner::new();
    let mut rest = &body[..];
    for c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (c as usize % rest.len()).max(1);
        chunked.feed(&rest[..n]);
        rest = &rest[n..];
    }
    chunked.feed(rest);
    chunked.finish();
    for k in KEYS {
        assert_eq!(whole.get(k), chunked.get(k), "chunking changed {k}");
    }
    assert_eq!(whole.text(), chunked.text(), "chunking changed the text");
});
