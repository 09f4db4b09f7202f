//! Floodgate: an edge gateway on Pingora that protects APIs from overload.
//!
//! The crate is both the `floodgate` binary's implementation and a library
//! for tests, benchmarks and embedding. Its layers, each importing only the
//! ones above it in this list (see `ARCHITECTURE.md`):
//!
//! - [`limits`]: the limiters and the vocabulary of their decisions; a leaf.
//! - [`config`]: the file model, its validation, and the validated types.
//! - [`metrics`]: every metric, defined in one place.
//! - [`logging`]: process logging and the access-log writer.
//! - [`runtime`]: the swappable snapshot a request sees, and the control
//!   plane that builds and swaps it (reloads, admin overrides).
//! - [`proxy`]: the request path (Pingora's `ProxyHttp` phases), the header
//!   guard and the forward proxy.
//! - [`services`]: background work: window rotation, the Prometheus monitor,
//!   the config watcher, health checks.
//! - [`admin`]: the admin API.
//! - [`server`]: assembles the Pingora server from all of the above.

pub mod limits;

pub mod config;

pub mod logging;
pub mod metrics;

pub mod runtime;

pub mod proxy;
pub mod services;

pub mod admin;

pub mod server;
