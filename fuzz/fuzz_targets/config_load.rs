//! Config loading: any text is either rejected with errors or accepted —
//! and what is accepted builds a runtime without panicking (a value
//! `--check` accepts never crashes the gateway at start).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|src: &str| {
    let Ok(config) = floodgate::config::parse(src, std::path::Path::new("/nonexistent")) else {
        return;
    };
    let clock: Arc<dyn floodgate::limits::clock::Clock> =
        floodgate::limits::clock::ManualClock::new(0);
    let hosts = Arc::new(floodgate::limits::connections::Hosts::default());
    let _ = floodgate::runtime::Runtime::build(config, clock, hosts, None);
});
