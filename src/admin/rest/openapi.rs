//! The OpenAPI 3.1 description of the REST API, generated from the
//! handlers' annotations and the service layer's types. Served at
//! `GET /api/v1/openapi.json`; committed as `docs/admin-api.json` (a test
//! fails when the two differ: `floodgate openapi > docs/admin-api.json`
//! brings the file up to date).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use once_cell::sync::Lazy;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers::*;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub(super) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Floodgate admin API",
        description = "Clients and their quotas, connection caps, the adaptive windows, reloads and the fleet of a Floodgate gateway. Every error is JSON {\"error\", \"message\"}. When the gateway has an admin token (server.admin_token_env), every POST, PUT and DELETE needs Authorization: Bearer <token>. The same operations are served over gRPC (floodgate.admin.v1.Admin) on server.grpc_listen.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health, ready, metrics, openapi_json,
        list_clients, post_client, get_client, put_client, delete_client, client_stats, stats, check,
        backpressure, list_hosts, get_host, put_host, delete_host,
        reload, fleet,
    ),
    modifiers(&Bearer),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "clients", description = "Client quotas and usage; the limiter as a service"),
        (name = "limits", description = "Connection caps and adaptive windows"),
        (name = "config", description = "Reloads"),
        (name = "fleet", description = "Fleet mode (several gateways sharing their limits through Redis)"),
    )
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (server.admin_token_env)"))
                    .build(),
            ),
        );
    }
}

/// The document, rendered once (pretty, with a final newline, byte for
/// byte what `docs/admin-api.json` holds).
pub fn document() -> &'static str {
    static DOC: Lazy<String> = Lazy::new(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        let mut s = doc.to_pretty_json().unwrap_or_else(|e| {
            // The document is built from static types: this cannot fail
            // short of a bug, which the test against the committed file
            // catches.
            format!("{{\"error\": \"internal\", \"message\": \"{e}\"}}")
        });
        s.push('\n');
        s
    });
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_patterns_are_the_ones_the_code_checks() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let params = &doc["paths"]["/api/v1/clients/{id}"]["put"]["parameters"][0]["schema"];
        assert_eq!(params["pattern"], crate::admin::service::CLIENT_ID_PATTERN);
        assert_eq!(params["maxLength"], crate::limits::clients::MAX_CLIENT_ID);
        let key = &doc["paths"]["/api/v1/ratelimit/{key}/check"]["post"]["parameters"][0]["schema"];
        assert_eq!(key["pattern"], crate::admin::service::CLIENT_ID_PATTERN);
        let new = &doc["components"]["schemas"]["NewClient"]["properties"];
        assert_eq!(
            new["id"]["pattern"],
            crate::admin::service::CLIENT_ID_PATTERN
        );
        let host = &doc["paths"]["/api/v1/hosts/{host}"]["put"]["parameters"][0]["schema"];
        assert_eq!(host["pattern"], crate::admin::service::HOST_PATTERN);
        let limits = &doc["components"]["schemas"]["ClientLimits"]["properties"];
        assert_eq!(limits["rpm"]["maximum"], crate::limits::rate::MAX_RPM);
        assert_eq!(limits["tpm"]["maximum"], crate::limits::rate::MAX_TPM);
        assert_eq!(new["rpm"]["maximum"], crate::limits::rate::MAX_RPM);
        assert_eq!(new["tpm"]["maximum"], crate::limits::rate::MAX_TPM);
        let cap = &doc["components"]["schemas"]["HostCap"]["properties"]["max_connections"];
        assert_eq!(cap["maximum"], crate::limits::connections::MAX_CAP);
        let tokens = &doc["components"]["schemas"]["CheckRequest"]["properties"]["tokens"];
        assert_eq!(tokens["maximum"], crate::limits::rate::MAX_TPM);
    }
}
