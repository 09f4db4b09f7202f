//! The gRPC adapter (tonic) on `server.grpc_listen`: the service
//! `floodgate.admin.v1.Admin` over the same service layer as REST, server
//! reflection (v1 and v1alpha, for `grpcurl` and older clients) and the
//! standard health service (`grpc.health.v1`).
//!
//! Calls that change something (`SetClientConfig`, `DeleteClient`,
//! `CheckRateLimit`, `SetHostLimit`, `Reload`) need the admin token, when
//! there is one, in the `authorization` metadata (`Bearer <token>`).

mod convert;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tonic::{Request, Response, Status};

use super::service::{Admin, AdminError, ErrorKind, Which};
use crate::limits::connections::Proxy;
use crate::runtime::control::ClientOverride;

/// The code `tonic-prost-build` generates from
/// `proto/floodgate/admin/v1/admin.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("floodgate.admin.v1");

    /// The encoded descriptors of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
        env!("OUT_DIR"),
        "/floodgate_admin_v1_descriptor.bin"
    ));
}

use pb::admin_server::AdminServer;

/// The longest status message sent, in bytes.
const MAX_MESSAGE: usize = 2048;

/// The service's full name, as reflection and health know it.
pub const SERVICE: &str = "floodgate.admin.v1.Admin";

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        let code = match e.kind {
            ErrorKind::BadRequest => tonic::Code::InvalidArgument,
            ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorKind::BodyTooLarge => tonic::Code::ResourceExhausted,
            ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
            ErrorKind::ConfigRejected => tonic::Code::FailedPrecondition,
            ErrorKind::StateNotSaved | ErrorKind::Internal => tonic::Code::Internal,
        };
        let mut message = format!("{}: {}", e.kind.code(), e.message);
        for x in &e.errors {
            message.push_str(&format!("; {}: {}", x.path, x.message));
        }
        // grpc-message travels in a header: keep it well under what clients
        // accept (grpcio refuses metadata over 8 KiB).
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Status::new(code, message)
    }
}

/// The gRPC face of [`Admin`].
#[derive(Clone)]
pub struct Rpc {
    admin: Admin,
}

impl Rpc {
    pub fn new(admin: Admin) -> Self {
        Rpc { admin }
    }

    /// A call that changes something: the admin token, when there is one.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::admin::service::bearer_token);
        if self.admin.authorized(presented) {
            Ok(())
        } else {
            Err(AdminError::new(
                ErrorKind::Unauthorized,
                "this call needs the metadata authorization: Bearer <admin token>",
            )
            .into())
        }
    }
}

fn proxy_of(s: &str) -> Result<Option<Proxy>, Status> {
    match s {
        "" => Ok(None),
        "reverse" => Ok(Some(Proxy::Reverse)),
        "forward" => Ok(Some(Proxy::Forward)),
        other => Err(Status::invalid_argument(format!(
            "bad_request: proxy must be \"reverse\", \"forward\" or empty, not {other:?}"
        ))),
    }
}

#[async_trait]
impl pb::admin_server::Admin for Rpc {
    async fn set_client_config(
        &self,
        req: Request<pb::SetClientConfigRequest>,
    ) -> Result<Response<pb::SetClientConfigResponse>, Status> {
        self.authorize(&req)?;
        let c = req
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("bad_request: config is required"))?;
        let o = ClientOverride {
            rpm: c.rpm,
            tpm: c.tpm,
            enabled: c.enabled.unwrap_or(true),
        };
        let set = self.admin.set_client(&c.client_id, o).await?;
        Ok(Response::new(pb::SetClientConfigResponse {
            config: Some(set.client.into()),
        }))
    }

    async fn get_client_config(
        &self,
        req: Request<pb::GetClientConfigRequest>,
    ) -> Result<Response<pb::GetClientConfigResponse>, Status> {
        let c = self.admin.get_client(&req.into_inner().client_id).await?;
        Ok(Response::new(pb::GetClientConfigResponse {
            config: Some(c.into()),
        }))
    }

    async fn get_client_stats(
        &self,
        req: Request<pb::GetClientStatsRequest>,
    ) -> Result<Response<pb::GetClientStatsResponse>, Status> {
        let r = self.admin.client_stats(&req.into_inner().client_id)?;
        Ok(Response::new(r.into()))
    }

    async fn list_clients(
        &self,
        _req: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let l = self.admin.list_clients().await?;
        Ok(Response::new(pb::ListClientsResponse {
            clients: l.clients.into_iter().map(Into::into).collect(),
            default: l.default.map(|q| pb::Quota {
                rpm: q.rpm,
                tpm: q.tpm,
            }),
        }))
    }

    async fn delete_client(
        &self,
        req: Request<pb::DeleteClientRequest>,
    ) -> Result<Response<pb::DeleteClientResponse>, Status> {
        self.authorize(&req)?;
        let d = self
            .admin
            .delete_client(&req.into_inner().client_id)
            .await?;
        Ok(Response::new(pb::DeleteClientResponse {
            deleted: true,
            now: d.now.map(Into::into),
        }))
    }

    async fn check_rate_limit(
        &self,
        req: Request<pb::CheckRateLimitRequest>,
    ) -> Result<Response<pb::CheckRateLimitResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let c = self.admin.check(&r.client_id, r.tokens)?;
        Ok(Response::new(pb::CheckRateLimitResponse {
            allowed: c.result.allowed,
            remaining: c.result.remaining,
            limit: c.result.limit,
            reset_after_ms: c.result.reset_after_ms,
            reason: c
                .refused
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            retry_after_ms: c.retry_after_ms,
        }))
    }

    async fn list_hosts(
        &self,
        _req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        Ok(Response::new(pb::ListHostsResponse {
            hosts: self
                .admin
                .list_hosts()
                .hosts
                .into_iter()
                .map(Into::into)
                .collect(),
        }))
    }

    async fn set_host_limit(
        &self,
        req: Request<pb::SetHostLimitRequest>,
    ) -> Result<Response<pb::SetHostLimitResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let which = Which {
            proxy: proxy_of(&r.proxy)?,
        };
        let cap = (!r.clear).then_some(r.max_connections);
        let h = self.admin.set_host_cap(&r.host, which, cap).await?;
        Ok(Response::new(pb::SetHostLimitResponse {
            host: Some(h.into()),
        }))
    }

    async fn get_backpressure(
        &self,
        _req: Request<pb::GetBackpressureRequest>,
    ) -> Result<Response<pb::GetBackpressureResponse>, Status> {
        Ok(Response::new(self.admin.backpressure().into()))
    }

    async fn reload(
        &self,
        req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        self.authorize(&req)?;
        let r = self.admin.reload().await?;
        Ok(Response::new(pb::ReloadResponse {
            restart_required: r.restart_required,
        }))
    }
}

/// The gRPC server on `grpc_listen`: bound before the server starts (a
/// taken port fails the start, as for the REST listener), served until
/// shutdown.
pub struct GrpcService {
    addr: SocketAddr,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// `(cert_file, key_file)` for TLS.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    admin: Admin,
    /// `server.keepalive_timeout`: a connection idle this long is closed.
    idle: Duration,
}

/// The most connections the gRPC listener holds at once, and the most
/// streams each may have open: what stalled readers can pin is bounded.
pub const MAX_CONNECTIONS: usize = 64;
const MAX_STREAMS: u32 = 16;

impl GrpcService {
    pub fn new(
        addr: SocketAddr,
        listener: Option<std::net::TcpListener>,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        admin: Admin,
        idle: Duration,
    ) -> Self {
        GrpcService {
            addr,
            listener: std::sync::Mutex::new(listener),
            tls,
            admin,
            idle,
        }
    }

    async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        mut shutdown: ShutdownWatch,
    ) -> Result<(), String> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| format!("reflection: {e}"))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| format!("reflection: {e}"))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let mut builder = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(MAX_STREAMS)
            .concurrency_limit_per_connection(MAX_STREAMS as usize)
            .initial_connection_window_size(Some(256 * 1024))
            .initial_stream_window_size(Some(64 * 1024));
        if let Some((cert, key)) = &self.tls {
            let cert = tokio::fs::read(cert)
                .await
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = tokio::fs::read(key)
                .await
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .map_err(|e| format!("TLS: {e}"))?;
        }
        let limited = crate::admin::listener::Limited::new(listener, MAX_CONNECTIONS, self.idle);
        let incoming = futures::stream::unfold(limited, |l| async move {
            let (io, _) = l.accept().await;
            Some((Ok::<_, std::io::Error>(io), l))
        });
        builder
            .add_service(AdminServer::new(Rpc::new(self.admin.clone())))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            })
            .await
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl BackgroundService for GrpcService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) =
            crate::admin::listener::take_or_bind(&self.listener, self.addr, &mut shutdown).await
        else {
            return;
        };
        let result = self.serve(listener, shutdown).await;
        if let Err(e) = result {
            tracing::error!("gRPC server on {}: {e}", self.addr);
        }
    }
}
