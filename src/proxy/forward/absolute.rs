//! The forward proxy's absolute-form requests (`GET http://host:port/path`),
//! through Pingora's HTTP proxy with [`ForwardGateway`] as its logic.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use super::{admit, FORWARD_ROUTE};
use crate::limits::{Refusal, RejectReason};
use crate::proxy::{headers, respond, RequestCtx};
use crate::runtime::SharedRuntime;

/// The request target as sent (`http://host:port/path` in absolute form).
fn absolute_target(req: &RequestHeader) -> http::Uri {
    http::Uri::try_from(req.raw_path()).unwrap_or_else(|_| req.uri.clone())
}

/// The forward proxy's logic for absolute-form requests.
pub struct ForwardGateway {
    runtime: SharedRuntime,
}

impl ForwardGateway {
    pub fn new(runtime: SharedRuntime) -> Self {
        ForwardGateway { runtime }
    }
}

#[async_trait]
impl ProxyHttp for ForwardGateway {
    /// Boxed, as the reverse proxy's (`Gateway`'s) is.
    type CTX = Box<RequestCtx>;

    /// Runs when a request header has been read.
    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx::new())
    }

    /// Runs once at start: no downstream modules. Pingora's default adds a
    /// (disabled) response-compression module that every request would
    /// still pass through; the gateway never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Runs before anything goes to the destination: the target must be
    /// absolute-form `http://`, allowed by the policy, and under its cap.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let rt = self.runtime.load_full();
        ctx.runtime = Some(rt.clone());
        ctx.route = Some(Arc::from(FORWARD_ROUTE));
        ctx.route_metrics = Some(super::forward_metrics().clone());
        ctx.request_id = headers::request_id(session.req_header(), true);
        if !headers::takes_interim(session.req_header()) {
            session.set_ignore_info_resp(true);
        }
        let Some(fp) = rt.config.forward_proxy.as_ref() else {
            let msg = "the forward proxy is off";
            return respond::refuse(session, ctx, Refusal::new(RejectReason::NoRoute, msg)).await;
        };
        // Pingora keeps the absolute-form target in the raw path; its `uri`
        // holds the path only.
        let uri = absolute_target(session.req_header());
        let target = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(h)) => Ok((h.to_ascii_lowercase(), uri.port_u16().unwrap_or(80))),
            (Some(s), Some(_)) => Err(format!(
                "only http:// targets are proxied in absolute form; use CONNECT for {s}"
            )),
            _ => Err(format!(
                "the forward proxy takes absolute-form requests (GET http://host/path) and CONNECT, not {uri}"
            )),
        };
        let (host, port) = match target {
            Ok(t) => t,
            Err(msg) => {
                return respond::refuse(session, ctx, Refusal::new(RejectReason::BadRequest, msg))
                    .await
            }
        };
        match admit(fp, &rt, &host, port).await {
            Ok(admitted) => {
                ctx.backend = Some(admitted.addr);
                for slot in admitted.slots {
                    ctx.admission.hold_slot(slot);
                }
                Ok(false)
            }
            Err(r) => respond::refuse(session, ctx, r).await,
        }
    }

    /// Runs before connecting: the destination resolved in `request_filter`.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(addr) = ctx.backend else {
            return Error::e_explain(InternalError, "no destination resolved");
        };
        let timeout = ctx
            .runtime
            .as_ref()
            .and_then(|rt| rt.config.forward_proxy.as_ref())
            .map(|f| f.connect_timeout);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = timeout;
        Ok(Box::new(peer))
    }

    /// Runs before the request goes to the destination: origin-form target,
    /// `Host` from the absolute URI, forwarding headers.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.admission.mark_sent();
        let target = absolute_target(req);
        let authority = target.authority().map(|a| a.as_str().to_string());
        // An empty path is `/` in origin form (RFC 9112 §3.2.1), with the
        // query kept (found by a hostile-client run: `http://h:p?q` was
        // refused 502, `?q` being no target).
        let origin = match target.path_and_query().map(|p| p.as_str()) {
            Some(pq) if pq.starts_with('/') => pq.parse::<http::Uri>(),
            Some(pq) => format!("/{pq}").parse::<http::Uri>(),
            None => Ok(http::Uri::from_static("/")),
        }
        .or_err(InvalidHTTPHeader, "request target")?;
        req.set_uri(origin);
        if let Some(a) = authority {
            req.insert_header(http::header::HOST, a)?;
        }
        let peer = crate::proxy::peer_ip(session);
        let origin = match &ctx.runtime {
            Some(rt) => headers::Origin::of(req, peer, false, |ip| rt.is_trusted_proxy(ip)),
            None => headers::Origin::default(),
        };
        headers::prepare_upstream(req, &origin, &ctx.request_id, None)
    }

    /// Runs when the destination's response header arrives: the request id
    /// to the client; a header that is the whole response (HEAD, 204, 304,
    /// an empty body) frees the slot.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut pingora::http::ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        headers::refuse_unasked_switch(session.req_header(), resp)?;
        headers::no_framing_on_204(resp);
        headers::own_version(resp);
        // An HTTP/1.0 client's unchunked body ends with the connection;
        // an answer given once the server has begun to stop is its
        // connection's last, and says so (`Connection: close`) rather than
        // letting the client send another request on a connection about to
        // close (found by a hostile-client run).
        if headers::unchunk_for_http10(session.req_header(), resp)?
            || session.is_process_shutting_down()
        {
            session.set_keepalive(None);
        }
        let names = headers::ResponseNames::of(resp);
        if names.hop_by_hop() {
            headers::strip_response_hop_by_hop(resp, names);
        }
        // The id the destination was sent, written as the reverse proxy
        // writes it (a destination's own `X-Request-Id` is replaced).
        let id = ctx.request_id.as_bytes();
        headers::add_response(resp, &headers::H_X_REQUEST_ID, id, !names.gateway)?;
        ctx.upstream_failed = resp.status.is_server_error();
        if !headers::is_interim(resp) && headers::ends_with_header(session.req_header(), resp) {
            ctx.upstream_response_ended();
        }
        Ok(())
    }

    /// Runs for each chunk of the response: frees the slot at its end.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            ctx.upstream_response_ended();
        }
        Ok(None)
    }

    /// Runs when proxying failed: the JSON error.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, ctx, e).await
    }

    /// Runs last: what is still held is settled; metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        respond::settle_leftovers(ctx);
        crate::proxy::log::request_done(session, e, ctx);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }
}
