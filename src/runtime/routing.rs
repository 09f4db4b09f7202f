//! Route resolution: host and longest path prefix.

use crate::config::RouteConfig;

/// A compiled route table. Routes are kept sorted so that the first match is
/// the best one: longest `path_prefix` first, and for equal prefixes a route
/// bound to a host before a host-less one.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// One route, as the request path sees it.
#[derive(Debug)]
pub struct Route {
    pub name: std::sync::Arc<str>,
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into `Runtime::upstreams`.
    pub upstream: usize,
    /// Largest request body accepted.
    pub max_body_size: Option<usize>,
    /// Its request metrics, resolved once.
    pub metrics: std::sync::Arc<crate::metrics::RouteMetrics>,
    /// The LLM API behind it, the tokenizer of its estimates, and the
    /// output assumed when a request sets no cap.
    pub api: Option<crate::config::LlmApi>,
    pub tokenizer: crate::config::Tokenizer,
    pub default_output_tokens: u64,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<Route> = routes
            .iter()
            .map(|r| Route {
                name: std::sync::Arc::from(r.name.as_str()),
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                upstream: r.upstream,
                max_body_size: r.max_body_size,
                metrics: crate::metrics::RouteMetrics::new(std::sync::Arc::from(r.name.as_str())),
                api: r.api,
                tokenizer: r.tokenizer,
                default_output_tokens: r.default_output_tokens,
            })
            .collect();
        routes.sort_by(|a, b| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Router { routes }
    }

    /// The route for a request to `host` (the Host header or `:authority`,
    /// any case, with or without port) and `path`.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            path.starts_with(r.path_prefix.as_str())
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(want), Some(got)) => host_matches(want, got),
                }
        })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `want` is lowercase; it matches `got` exactly, or `got` minus its port
/// when `want` names none.
fn host_matches(want: &str, got: &str) -> bool {
    if want.eq_ignore_ascii_case(got) {
        return true;
    }
    if want.contains(':') {
        return false;
    }
    let bare = match got.rsplit_once(':') {
        // An IPv6 literal keeps its brackets; only strip a trailing :port.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => got,
    };
    want.eq_ignore_ascii_case(bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str, up: usize) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            upstream: up,
            max_body_size: None,
            api: None,
            tokenizer: Default::default(),
            default_output_tokens: 0,
        }
    }

    #[test]
    fn longest_prefix_wins_and_host_routes_first() {
        let r = Router::new(&[
            route("root", None, "/", 0),
            route("api", None, "/api", 1),
            route("api-v2", None, "/api/v2", 2),
            route("host-root", Some("example.com"), "/", 3),
        ]);
        let name = |h: Option<&str>, p: &str| r.resolve(h, p).map(|r| &*r.name);
        assert_eq!(name(None, "/"), Some("root"));
        assert_eq!(name(None, "/api/v1/x"), Some("api"));
        assert_eq!(name(None, "/api/v2/x"), Some("api-v2"));
        assert_eq!(name(Some("example.com"), "/x"), Some("host-root"));
        assert_eq!(name(Some("EXAMPLE.com:8080"), "/x"), Some("host-root"));
        assert_eq!(name(Some("example.com"), "/api/v2"), Some("api-v2"));
        assert_eq!(name(Some("other.com"), "/x"), Some("root"));
    }

    #[test]
    fn no_match() {
        let r = Router::new(&[route("a", Some("a.com"), "/a", 0)]);
        assert!(r.resolve(Some("a.com"), "/b").is_none());
        assert!(r.resolve(Some("b.com"), "/a").is_none());
        assert!(r.resolve(None, "/a").is_none());
        assert!(r.resolve(Some("a.com"), "/a/b").is_some());
    }

    #[test]
    fn host_with_port_must_match_exactly() {
        let r = Router::new(&[route("a", Some("a.com:8443"), "/", 0)]);
        assert!(r.resolve(Some("a.com:8443"), "/").is_some());
        assert!(r.resolve(Some("a.com"), "/").is_none());
        assert!(r.resolve(Some("[::1]:8443"), "/").is_none());
    }
}
