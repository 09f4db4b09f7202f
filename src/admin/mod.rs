//! The admin API: one service layer (`service`), and two adapters over it —
//! REST with its OpenAPI description (`rest`, on `server.admin_listen`) and
//! gRPC (`grpc`, on `server.grpc_listen`). Both run as Pingora background
//! services, off the request path.
//!
//! REST:
//! - `GET /health`, `GET /ready`, `GET /metrics`, `GET /api/v1/openapi.json`
//! - `GET|POST /api/v1/clients`, `GET|PUT|DELETE /api/v1/clients/{id}`,
//!   `GET /api/v1/clients/{id}/stats`, `GET /api/v1/stats`
//! - `POST /api/v1/ratelimit/{key}/check`: the limiter as a service
//! - `GET /api/v1/hosts`, `GET|PUT|DELETE /api/v1/hosts/{host}`
//! - `GET /api/v1/backpressure`, `POST /api/v1/reload`, `GET /api/v1/fleet`
//!
//! gRPC: `floodgate.admin.v1.Admin` (proto/floodgate/admin/v1/admin.proto),
//! server reflection (v1 and v1alpha) and `grpc.health.v1`.
//!
//! With `admin_token_env` set, every call that changes something needs the
//! bearer token (`Authorization: Bearer <token>`; over gRPC the
//! `authorization` metadata). Errors are JSON `{"error", "message"}` (over
//! gRPC: a status with the same message).

pub mod grpc;
mod listener;
pub mod rest;
pub mod service;

pub use rest::{router, AdminService};
pub use service::Admin;
