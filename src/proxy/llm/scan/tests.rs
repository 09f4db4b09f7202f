//! The usage scanner: chunked bodies, escapes, the skip of a last chunk.

use super::*;

fn scan_in_pieces(body: &[u8], cut: usize) -> UsageScanner {
    let mut s = UsageScanner::new();
    let cut = cut.min(body.len());
    s.feed(&body[..cut]);
    s.feed(&body[cut..]);
    s.finish();
    s
}

#[test]
fn usage_keys_and_text_in_any_chunking() {
    let body = br#"data: {"choices":[{"delta":{"content":"Hel\"lo"}}]}

data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}

data: [DONE]
"#;
    for cut in 0..body.len() {
        let s = scan_in_pieces(body, cut);
        assert_eq!(s.get("total_tokens"), Some(46), "cut {cut}");
        assert_eq!(s.get("prompt_tokens"), Some(12));
        assert_eq!(s.text().0, b"Hel\"lo", "cut {cut}");
    }
}

#[test]
fn anthropic_stream_keeps_the_last_numbers() {
    let body = br#"event: message_start
data: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}

event: content_block_delta
data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi there"}}

event: message_delta
data: {"type":"message_delta","usage":{"output_tokens":15}}
"#;
    let s = scan_in_pieces(body, 40);
    assert_eq!(s.get("input_tokens"), Some(25));
    assert_eq!(s.get("output_tokens"), Some(15));
    // `delta` is an object here: only `text` is text.
    assert_eq!(s.text().0, b"Hi there");
}

#[test]
fn only_whole_usage_keys_count_and_long_strings_are_no_keys() {
    let long = "k".repeat(MAX_KEY);
    let longer = "k".repeat(MAX_KEY + 1);
    let body = format!(
        r#"{{"total_tokens_x":5,"xtotal_tokens":6,"{long}":"content","{longer}":"t","total_tokens":7,"prompt_tokens":1}}"#
    );
    for cut in 0..body.len() {
        let s = scan_in_pieces(body.as_bytes(), cut);
        assert_eq!(s.get("total_tokens"), Some(7), "cut {cut}");
        assert_eq!(s.get("prompt_tokens"), Some(1));
        assert_eq!(s.get("completion_tokens"), None);
        assert_eq!(s.get("total_tokens_x"), None);
        assert!(s.has_usage());
        // Neither long string is `content`: no text.
        assert_eq!(s.text().0, b"", "cut {cut}");
    }
    // A string too long to be a key, then `:`: nothing is remembered,
    // so the string after it is read as a key may be.
    let body = format!(r#"{{"{longer}":"content":"x","text":"y"}}"#);
    let s = scan_in_pieces(body.as_bytes(), 3);
    assert_eq!(s.text().0, b"xy");
    assert!(!UsageScanner::new().has_usage());
}

#[test]
fn a_usage_only_scan_collects_no_text() {
    let body = br#"{"content":"a long article","usage":{"total_tokens":7}}"#;
    let mut s = UsageScanner::usage_only();
    s.feed(body);
    s.finish();
    assert_eq!(s.get("total_tokens"), Some(7));
    assert_eq!(s.text(), (&b""[..], 0));
}

/// A last chunk a scan skips is one where it would have found
/// nothing: the same usage and text as reading it, for bodies with and
/// without them, cut anywhere (in a key, after it, after its colon, in
/// its value), with keys spelled with escapes; usage-only scans too.
#[test]
fn a_skipped_last_chunk_held_nothing_kept() {
    let bodies: &[&[u8]] = &[
        br#"{"ok":true,"from":"origin"}"#,
        br#"{"usage":{"total_tokens":1234,"prompt_tokens":5}}"#,
        br#"{"usageMetadata":{"totalTokenCount":77}}"#,
        br#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}"#,
        br#"{"a":"k","b":"oke","total_tokens" : 9 }"#,
        br#"{"total\_tokens":12,"x":"\"total_tokens\":5"}"#,
        br#"{"total_to\kens":3,"te\xt":"hidden"}"#,
        br#"{"output_tokens":4"#,
        br#"{"type":"content_block_delta","delta":{"text":"a\"b"}}"#,
        br#"{"content" : "x", "mytext":"y", "Count":"z"}"#,
        b"data: {\"usage\":{\"output_tokens\":15}}\n\ndata: [DONE]\n",
        br#"{"ok":1,"k":2}"#,
    ];
    for body in bodies {
        for cut in 0..=body.len() {
            let (first, last) = body.split_at(cut);
            for new in [UsageScanner::new, UsageScanner::usage_only] {
                let mut read = new();
                read.feed(first);
                read.feed(last);
                read.finish();
                let mut skipped = new();
                skipped.feed(first);
                skipped.feed_last(last);
                skipped.finish();
                assert_eq!(
                    found(&skipped),
                    found(&read),
                    "{} cut {cut}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }
    // It does skip: a chunk that ends in a string is not read.
    for mut s in [UsageScanner::new(), UsageScanner::usage_only()] {
        s.feed_last(br#"{"ok":true,"from":"ori"#);
        assert_eq!(s.lex, Lex::Between);
    }
}

/// The skip relies on it.
#[test]
fn every_kept_key_ends_as_the_skip_looks_for() {
    for k in USAGE_KEYS.iter().chain(TEXT_KEYS) {
        assert!(may_hold_key(format!("\"{k}\"").as_bytes()), "{k}");
        assert!(may_hold_key(format!("x{k}\"").as_bytes()), "{k}");
    }
    assert!(!may_hold_key(br#"{"ok":"toke","k":1,"s":"a","tokens ":2}"#));
    assert!(may_hold_key(b"\\"));
}

/// The check a byte at a time, as it was: the word-at-a-time one must
/// agree with it on every input.
fn may_hold_key_bytewise(chunk: &[u8]) -> bool {
    chunk.iter().enumerate().any(|(i, &b)| match b {
        b'\\' => true,
        b'"' => closes_kept_key(&chunk[..i]),
        _ => false,
    })
}

/// Every place in a word and across words, every length's tail, bytes
/// with the high bit set next to the ones it looks for (a carry between
/// bytes would make a false match or hide a real one), and random bodies
/// of JSON-ish bytes.
#[test]
fn the_check_by_words_is_the_check_by_bytes() {
    let specials: &[&[u8]] = &[
        b"\\",
        b"\"",
        b"s\"",
        b"t\"",
        b"a\"",
        b"tokens\"",
        b"Count\"",
        b"content\"",
        b"text\"",
        b"delta\"",
        b"\x80\"",
        b"\xff\"",
        b"\x22\x80",
        b"\xdc\"",
        b"#",
        b"\x5c\xa2",
    ];
    for len in 0..40 {
        for at in 0..len {
            for sp in specials {
                let mut body = vec![b'x'; len];
                for (k, &b) in sp.iter().enumerate() {
                    if let Some(to) = body.get_mut(at + k) {
                        *to = b;
                    }
                }
                assert_eq!(
                    may_hold_key(&body),
                    may_hold_key_bytewise(&body),
                    "{:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
    let alphabet: &[u8] = b"\"\\:{},tokensCountcontextdela \x80\xff\x22\x5c\xa2\xdc0123";
    let mut rng = fastrand::Rng::with_seed(38);
    for _ in 0..200_000 {
        let n = rng.usize(0..48);
        let body: Vec<u8> = (0..n)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        assert_eq!(
            may_hold_key(&body),
            may_hold_key_bytewise(&body),
            "{body:?}"
        );
    }
}

#[test]
fn an_escape_is_text_only_in_text() {
    let body =
        br#"{"id":"\u0041\u0042","model":"\u00e9","choices":[{"delta":{"content":"a\u00e9b"}}]}"#;
    for cut in 0..body.len() {
        let s = scan_in_pieces(body, cut);
        assert_eq!(s.text(), (&b"a?b"[..], 0), "cut {cut}");
        let mut s = UsageScanner::usage_only();
        s.feed(body);
        assert_eq!(s.text(), (&b""[..], 0));
    }
}

/// Everything a scan found, to compare two scans.
fn found(s: &UsageScanner) -> (Vec<Option<u64>>, Vec<u8>, usize) {
    let numbers = USAGE_KEYS.iter().map(|k| s.get(k)).collect();
    let (text, overflow) = s.text();
    (numbers, text.to_vec(), overflow)
}

#[test]
fn runs_of_string_bytes_are_taken_as_byte_by_byte() {
    let long = "k".repeat(MAX_KEY - 1);
    let mut bodies: Vec<Vec<u8>> = vec![
        br#"data: {"choices":[{"delta":{"content":"Hel\"lo \u00e9\n"}}],"usage":{"total_tokens":46}}"#.to_vec(),
        b"event: message_delta\ndata: {\"usage\": {\"input_tokens\":12,\"output_tokens\" : 345}}\n\nevent: x\ndata: [1, 22,true,null,{\"text\":\"q\"}]\r\n\r\n".to_vec(),
        br#"{"a":12,"b":[1,2,true,null],"input_tokens":33,"output_tokens":4}"#.to_vec(),
        br#"{"prompt_tokens":18446744073709551616999,"completion_tokens":7 ,"total_tokens":8}"#.to_vec(),
        format!(r#"{{"{long}":1,"{long}k":2,"{long}kk":"content","text":"a\\b","prompt_tokens":3}}"#).into_bytes(),
        br#"{"content":"say \"total_tokens\": 99","usage":{"total_tokens":7}}"#.to_vec(),
    ];
    // Text past `MAX_TEXT`: kept up to it, the rest counted.
    let mut big = br#"{"text":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', MAX_TEXT + 5));
    big.extend_from_slice(br#"","total_tokens":9}"#);
    bodies.push(big);
    for body in &bodies {
        let mut one = UsageScanner::new();
        for &b in body {
            one.byte(b);
        }
        one.finish();
        let cuts = [0, 1, 7, 20, 33, 50, body.len() / 2, body.len()];
        for cut in cuts.into_iter().chain(0..body.len().min(120)) {
            let s = scan_in_pieces(body, cut);
            assert!(found(&s) == found(&one), "cut {cut}");
        }
    }
}

#[test]
fn every_usage_key_is_longer_than_every_text_key() {
    assert!(USAGE_KEYS.iter().all(|k| k.len() >= 12));
    assert!(TEXT_KEYS.iter().all(|k| k.len() < 12));
    for (i, k) in USAGE_KEYS.iter().enumerate() {
        assert_eq!(Key::of(k.as_bytes()), Key::Usage(i));
    }
    for k in TEXT_KEYS {
        assert_eq!(Key::of(k.as_bytes()), Key::Text);
    }
    assert_eq!(Key::of(b"total_tokenz"), Key::Other);
}

#[test]
fn escaped_keys_inside_text_are_not_keys() {
    let body = br#"{"content":"say \"total_tokens\": 99","usage":{"total_tokens":7}}"#;
    let s = scan_in_pieces(body, 13);
    assert_eq!(s.get("total_tokens"), Some(7));
}
