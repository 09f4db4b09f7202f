//! Floodgate: an edge gateway on Pingora that protects APIs from overload.
//!
//! The crate is both the `floodgate` binary's implementation and a library
//! for tests, benchmarks and embedding. See `DESIGN.md` for the architecture.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod proxy;
pub mod watcher;
