//! An upstream's response on its way to the client: what one pass over
//! its names finds, the hop-by-hop fields that stay at the gateway, and a
//! protocol switch the client did not ask for.

use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, TRAILER, TRANSFER_ENCODING, UPGRADE};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::ratelimit::names;
use super::{KEEP_ALIVE, PROXY_CONNECTION, X_REQUEST_ID};

/// `GATEWAY_RESPONSE_HEADERS` as names.
static GATEWAY_NAMES: [HeaderName; 6] = [
    HeaderName::from_static(X_REQUEST_ID),
    HeaderName::from_static(names::LIMIT),
    HeaderName::from_static(names::REMAINING),
    HeaderName::from_static(names::RESET),
    HeaderName::from_static(names::POLICY),
    HeaderName::from_static(names::STATE),
];

/// What one pass over a response's names (an upstream's) finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseNames {
    /// Any of the headers the gateway sets on its responses:
    /// `X-Request-Id` and the rate-limit headers.
    pub gateway: bool,
    pub connection: bool,
    /// A `Connection` lists an option other than `keep-alive` and `close`
    /// (a name to remove): on nearly every answer it lists only those.
    pub connection_names: bool,
    /// An interim answer (1xx) carries `Connection`, which Pingora leaves.
    pub interim_connection: bool,
    pub keep_alive: bool,
    pub proxy_connection: bool,
    pub upgrade: bool,
}

impl ResponseNames {
    pub fn of(resp: &ResponseHeader) -> ResponseNames {
        let mut r = ResponseNames::default();
        // One pass over names and values: `Connection`'s values are read
        // as it comes (a pass over the names and then a look-up of its
        // values cost ~70 instructions more under callgrind). Names are
        // compared as `HeaderName`s: a standard one (nearly every name of
        // an answer) differs from each custom one here by its kind alone,
        // where a match on its text spelled it out first (~60 instructions
        // a response more under callgrind).
        for (n, v) in resp.headers.iter() {
            if *n == CONNECTION {
                r.connection = true;
                r.connection_names |= lists_names(v.as_bytes());
            } else if *n == UPGRADE {
                r.upgrade = true;
            } else if *n == KEEP_ALIVE {
                r.keep_alive = true;
            } else if *n == PROXY_CONNECTION {
                r.proxy_connection = true;
            } else if GATEWAY_NAMES.iter().any(|g| n == g) {
                r.gateway = true;
            }
        }
        r.interim_connection = r.connection && resp.status.is_informational();
        r
    }

    /// Anything for [`strip_response_hop_by_hop`] to remove.
    pub fn hop_by_hop(&self) -> bool {
        self.connection_names
            || self.interim_connection
            || self.keep_alive
            || self.proxy_connection
            || self.upgrade
    }
}

/// Whether a `Connection` value lists an option other than the usual
/// `keep-alive` and `close` (which name no field to remove here:
/// `Keep-Alive` is removed whenever present).
fn lists_names(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"close")
        })
}

/// Removes what describes the upstream's connection from its response
/// before it goes to the client (RFC 9110 §7.6.1): the names its
/// `Connection` lists, `Keep-Alive`, `Proxy-Connection`, `Upgrade`.
/// `Connection` itself Pingora replaces with the client's own (HTTP/1)
/// or removes (HTTP/2) on every answer but an interim one, where it goes
/// here. A 101 keeps everything: the protocol it switches to needs its
/// handshake. The body's framing fields stay whatever `Connection` lists:
/// Pingora frames the answer from them. `names`: what
/// [`ResponseNames::of`] found, so that a name the response does not
/// carry costs no removal, and an upstream's `Connection: keep-alive`, on
/// nearly every answer, costs nothing here.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader, names: ResponseNames) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if names.connection_names {
        let listed: Vec<HeaderName> = resp
            .headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            // The usual options: `Keep-Alive` goes below when present.
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| *n != http::header::TRANSFER_ENCODING && *n != http::header::CONTENT_LENGTH)
            .collect();
        for n in listed {
            resp.remove_header(&n);
        }
    }
    if names.interim_connection {
        resp.remove_header(&CONNECTION);
    }
    for (present, n) in [
        (names.keep_alive, &KEEP_ALIVE),
        (names.proxy_connection, &PROXY_CONNECTION),
        (names.upgrade, &UPGRADE),
    ] {
        if present {
            resp.remove_header(n);
        }
    }
}

/// A 101 answering a request that asked for no protocol switch (no
/// `Upgrade`) is the upstream's failure: RFC 9110 §15.2.2 lets a server
/// switch only to a protocol the request's `Upgrade` names, and relaying
/// it would take the client's connection out of HTTP (found by a
/// hostile-upstream run: the upstream's bytes after it reached the client
/// and a pipelined request was lost). So is a 101 in HTTP/1.0, which has
/// none: Pingora opens no tunnel on it, and the client got a 101 and then
/// silence until the read timeout (found by a hostile-client run). The
/// client gets a 502.
pub fn refuse_unasked_switch(req: &RequestHeader, resp: &ResponseHeader) -> Result<()> {
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    let why = match (req.headers.contains_key(UPGRADE), resp.version) {
        (true, http::Version::HTTP_11) => return Ok(()),
        (false, _) => {
            "the upstream switched protocols (101) for a request that asked for no upgrade"
        }
        (true, _) => "the upstream switched protocols (101) in a version other than HTTP/1.1",
    };
    let mut e = Error::explain(InvalidHTTPHeader, why);
    e.esource = ErrorSource::Upstream;
    Err(e)
}

/// A 204 answer has no body, and may carry neither `Transfer-Encoding`
/// nor `Content-Length` (RFC 9112 §6.1, RFC 9110 §8.6); Pingora sends no
/// body for one but passes an upstream's framing fields on (found by a
/// hostile-client run: an HTTP/1.1 client got `Transfer-Encoding:
/// chunked` on a 204). A 304 may keep them: they describe the 200 it
/// stands for.
#[inline]
pub fn no_framing_on_204(resp: &mut ResponseHeader) {
    if resp.status != http::StatusCode::NO_CONTENT {
        return;
    }
    for n in [TRANSFER_ENCODING, CONTENT_LENGTH] {
        if resp.headers.contains_key(&n) {
            resp.remove_header(&n);
        }
    }
}

/// The gateway answers in its own HTTP version: "intermediaries ... MUST
/// send their own HTTP-version in forwarded messages" (RFC 9110 §2.5).
/// Pingora writes the upstream's (found by a hostile-client run: an
/// upstream's `HTTP/1.0 200 OK` reached an HTTP/1.1 client as it was).
#[inline]
pub fn own_version(resp: &mut ResponseHeader) {
    if resp.version < http::Version::HTTP_11 {
        resp.set_version(http::Version::HTTP_11);
    }
}

/// Whether the client may be sent interim (1xx) answers: "a server MUST
/// NOT send a 1xx response to an HTTP/1.0 client" (RFC 9110 §15.2).
/// Pingora forwards an upstream's (found by a hostile-client run: an
/// HTTP/1.0 client got a `103` before its answer); for a client for which
/// this is false, each proxy asks Pingora to drop them
/// (`set_ignore_info_resp`).
pub fn takes_interim(req: &RequestHeader) -> bool {
    req.version >= http::Version::HTTP_11
}

/// A client below HTTP/1.1 cannot read a chunked body, and a response to
/// it may carry no `Transfer-Encoding` (RFC 9112 §6.1). Pingora passes an
/// upstream's chunked framing on, and frames a body of unknown length
/// chunked itself, whatever the client's version (found by a
/// hostile-client run: an HTTP/1.0 client got `Transfer-Encoding:
/// chunked` and the chunk sizes in its body). For such a client the
/// framing fields go (`Content-Length` too: `Transfer-Encoding` overrode
/// it; and `Trailer`, whose fields cannot follow), so that the body is
/// sent as it is and ends with the connection.
/// True when a body follows: the caller closes the connection after it.
/// A coding other than chunked cannot be undone here, nor named to such a
/// client (no `Transfer-Encoding` may reach it): an answer with a body in
/// one is refused, a 502 (found by a hostile-client run: `gzip, chunked` reached
/// an HTTP/1.0 client as gzipped bytes with no label).
pub fn unchunk_for_http10(req: &RequestHeader, resp: &mut ResponseHeader) -> Result<bool> {
    if req.version >= http::Version::HTTP_11
        || resp.status.is_informational()
        || !resp.headers.contains_key(TRANSFER_ENCODING)
    {
        return Ok(false);
    }
    let body = !(req.method == http::Method::HEAD || matches!(resp.status.as_u16(), 204 | 304));
    let other_coding = body
        && resp
            .headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"));
    if other_coding {
        let mut e = Error::explain(
            InvalidHTTPHeader,
            "the upstream's transfer coding cannot reach an HTTP/1.0 client",
        );
        e.esource = ErrorSource::Upstream;
        return Err(e);
    }
    resp.remove_header(&TRANSFER_ENCODING);
    resp.remove_header(&CONTENT_LENGTH);
    // Trailer fields come only after a chunked body: none will come
    // (found by a hostile-client run: the `Trailer` line stayed).
    if resp.headers.contains_key(TRAILER) {
        resp.remove_header(&TRAILER);
    }
    Ok(body)
}
