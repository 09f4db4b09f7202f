//! Health, readiness, hosts and their caps, the adaptive windows, reloads,
//! the fleet.

use std::sync::atomic::Ordering;

use super::types::*;
use super::{blocking, Admin, AdminError, ErrorKind};
use crate::limits::connections::{CapSource, HostInfo, Proxy};

/// The longest host name a cap may be set for (`host:port`).
const MAX_HOST: usize = 261;

impl Admin {
    pub fn health(&self) -> Health {
        Health {
            status: "ok".into(),
        }
    }

    /// Ready: the admin endpoint serves, the gateway is not draining, and
    /// (fleet mode with `required`) Redis answers.
    pub fn readiness(&self) -> Readiness {
        let draining = self.draining.load(Ordering::Acquire);
        let fleet_ok = self.fleet.as_ref().is_none_or(|f| f.ready());
        let ready = self.ready.load(Ordering::Acquire) && !draining && fleet_ok;
        crate::metrics::metrics().ready.set(i64::from(ready));
        let rt = self.runtime.load();
        Readiness {
            ready,
            draining,
            fleet: self.fleet.as_ref().map(|f| f.snapshot().up),
            routes: rt.router.routes().len(),
            upstreams: rt.upstreams.len(),
        }
    }

    /// The Prometheus text exposition, with the gauges read at scrape time
    /// brought up to date first.
    pub fn metrics_text(&self) -> String {
        let rt = self.runtime.load();
        crate::metrics::export_hosts(&rt.host_infos(), &rt.config);
        crate::metrics::record_dropped_log_lines(crate::logging::dropped_lines());
        let scopes: Vec<_> = rt
            .adaptive_windows()
            .into_iter()
            .map(|sc| (sc.name.clone(), sc.controller.snapshot()))
            .collect();
        crate::metrics::export_backpressure(&scopes);
        crate::metrics::metrics()
            .ready
            .set(i64::from(self.ready.load(Ordering::Acquire)));
        crate::metrics::render()
    }

    pub fn backpressure(&self) -> Backpressure {
        let rt = self.runtime.load();
        Backpressure {
            enabled: rt.adaptive.is_some(),
            gateway: rt.adaptive.as_ref().map(|sc| sc.controller.snapshot()),
            upstreams: rt
                .upstreams
                .iter()
                .filter_map(|u| u.adaptive.as_ref())
                .map(|sc| (sc.name.clone(), sc.controller.snapshot()))
                .collect(),
        }
    }

    pub fn list_hosts(&self) -> HostList {
        HostList {
            hosts: self.runtime.load().host_infos(),
        }
    }

    pub fn get_host(&self, host: &str, which: Which) -> Result<HostInfo, AdminError> {
        self.runtime
            .load()
            .host_infos()
            .into_iter()
            .find(|h| h.host == host && which.proxy.is_none_or(|p| p == h.proxy))
            .ok_or_else(|| AdminError::not_found(format!("no host {host:?}")))
    }

    /// Sets (`Some`) or removes (`None`) the API cap of `host`, at once for
    /// running and future requests alike. Persisted first: a failed write
    /// changes nothing.
    pub async fn set_host_cap(
        &self,
        host: &str,
        which: Which,
        cap: Option<u64>,
    ) -> Result<HostInfo, AdminError> {
        check_host(host)?;
        let backend = self.control.proxy_of(host) == Some(Proxy::Reverse);
        let proxy: Proxy = which
            .proxy
            .or_else(|| self.control.proxy_of(host))
            .ok_or_else(|| {
                AdminError::not_found(format!("no backend {host:?}, and no forward proxy"))
            })?;
        if proxy == Proxy::Forward && self.runtime.load().config.forward_proxy.is_none() {
            return Err(AdminError::not_found("the forward proxy is not configured"));
        }
        // A reverse-proxy cap is for a backend; removing one is allowed for
        // any host (a backend the config has since dropped).
        if proxy == Proxy::Reverse && cap.is_some() && !backend {
            return Err(AdminError::not_found(format!(
                "no backend {host:?} in any upstream"
            )));
        }
        let (control, h) = (self.control.clone(), host.to_string());
        let changed = blocking(move || control.set_host_cap(proxy, &h, cap)).await??;
        let now = self.get_host(host, Which { proxy: Some(proxy) }).ok();
        // What this call set, not what a concurrent call may have set since.
        let (max_connections, source) = match cap {
            Some(c) => {
                tracing::info!(target: "admin", host = %host, proxy = proxy.as_str(), max_connections = c, "connection cap set through the admin API");
                (c, CapSource::Api)
            }
            None if !changed => {
                return Err(AdminError::not_found(format!(
                    "host {host:?} has no API cap"
                )))
            }
            None => {
                tracing::info!(target: "admin", host = %host, "connection cap override removed");
                let file = now
                    .as_ref()
                    .filter(|h| h.source == CapSource::File)
                    .map_or(0, |h| h.max_connections);
                (file, CapSource::File)
            }
        };
        Ok(HostInfo {
            host: host.to_string(),
            proxy,
            active: now.map_or(0, |h| h.active),
            max_connections,
            source,
        })
    }

    /// Reads the config file again: what needs a restart, or every error of
    /// the new file (the old config keeps serving).
    pub async fn reload(&self) -> Result<Reloaded, AdminError> {
        let control = self.control.clone();
        match blocking(move || control.reload("admin API")).await? {
            Ok(report) => Ok(Reloaded {
                result: "success".into(),
                restart_required: report.restart_required,
            }),
            Err(e) => Err(AdminError {
                kind: ErrorKind::ConfigRejected,
                message: "the new config is invalid; the old one keeps serving".into(),
                errors: e
                    .errors
                    .iter()
                    .map(|x| ConfigIssue {
                        path: x.path.to_string(),
                        line: x.line,
                        message: x.message.clone(),
                    })
                    .collect(),
            }),
        }
    }

    /// This instance's view of the fleet.
    pub fn fleet(&self) -> Result<FleetReport, AdminError> {
        let f = self.fleet.as_ref().ok_or_else(|| {
            AdminError::not_found("fleet mode is off ([fleet] is not configured)")
        })?;
        let rt = self.runtime.load();
        let q = rt.clients.fleet();
        Ok(FleetReport {
            state: (*f.snapshot()).clone(),
            live_instances: q.map(|q| q.live()),
            quotas_degraded: q.map(|q| q.degraded()),
        })
    }
}

/// A host a cap may be set for: `host` or `host:port`, printable ASCII
/// without spaces or `%`, at most [`MAX_HOST`] bytes (`HOST_PATTERN`).
/// No host name holds a `%`; a path segment that did arrives decoded, so
/// a client that sent one unencoded would have its cap set for another
/// name (found by schemathesis: `Z%EF%BF%BD`, schema-valid while the
/// pattern allowed `%`, reached the check as `Z\u{FFFD}`).
pub(super) fn check_host(host: &str) -> Result<(), AdminError> {
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host.bytes().all(|b| b.is_ascii_graphic() && b != b'%')
    {
        return Err(AdminError::bad_request(format!(
            "host must be 1 to {MAX_HOST} printable ASCII characters without spaces or %"
        )));
    }
    Ok(())
}
