//! The usage scanner over a response body (JSON or server-sent events)
//! fed in arbitrary chunks: it never panics, and finds the same total
//! whatever the chunking.
#![no_main]

use floodgate::proxy::usage::UsageScanner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (body, cuts) = input;
    let mut whole = UsageScanner::new();
    whole.feed(&body);
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
    assert_eq!(whole.total(), chunked.total(), "chunking changed the total");
});
