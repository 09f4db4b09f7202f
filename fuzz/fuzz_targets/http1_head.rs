//! The HTTP/1 guard's header block reader: `head_end` and `inspect` never
//! panic, and a chunked body's end is found the same whatever the pieces
//! it arrives in.
#![no_main]

use floodgate::proxy::guard::http1::{head_end, inspect, ChunkScan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    if let Some(len) = head_end(data, 0) {
        assert!(len <= data.len());
        if let Ok(head) = inspect(data, len) {
            assert!(head.len <= len);
            for r in head.expect_continue {
                assert!(r.end <= len);
            }
        }
    }
    // The same body, whole and in two pieces.
    let whole = ChunkScan::default().advance(data);
    let cut = (split as usize).min(data.len());
    let mut scan = ChunkScan::default();
    let pieces = match scan.advance(&data[..cut]) {
        Ok(None) => scan.advance(&data[cut..]),
        other => other,
    };
    match (whole, pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("whole {a:?} vs in pieces {b:?}"),
    }
});
