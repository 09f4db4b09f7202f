//! Background work, off the request path. Each service reads the current
//! runtime snapshot on every round and publishes what it finds atomically;
//! none of them is ever awaited by a request.
//!
//! - [`rotation`]: prepares every limiter's next window ahead of time.
//! - [`monitor`]: reads Prometheus and moves the adaptive windows.
//! - [`watcher`]: reloads the config on a file change or SIGHUP.
//! - [`health`]: probes every upstream's backends; forgets idle
//!   forward-proxy destinations.
//! - [`fleet`]: fleet mode: shares quotas, connection leases and admin
//!   changes with the other instances through Redis.

pub mod fleet;
pub mod health;
pub mod monitor;
pub mod rotation;
pub mod watcher;
