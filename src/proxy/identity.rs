//! Request-path parsing for client quotas: who the client is, and what the
//! request costs in tokens.

use std::net::IpAddr;

use http::header::AUTHORIZATION;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use super::headers::Carries;
use crate::config::{ClientsConfig, MissingId};
use crate::limits::clients::{check_claimed_id, ClientPolicies, IP_PREFIX};

/// Who a request's client is, and how it said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    /// Named by one of its Floodgate API keys.
    pub by_api_key: bool,
    /// Named by the id header, in one line that reads as the id: the
    /// upstream gets that line as it is (nothing to look up or rewrite).
    pub header_as_is: bool,
}
use crate::limits::{Refusal, RejectReason};

/// The client id of a request:
/// 1. `Authorization: Bearer <key>`, when API keys are configured: the
///    key's client, or 401 `invalid_api_key`;
/// 2. the `id_header` (one value, 1-256 bytes, no control characters, else
///    400 `invalid_header`); a client that has API keys cannot be claimed
///    this way (401);
/// 3. else the client's address as `ip:<address>` (`missing_id = "ip"`;
///    a namespace no header may claim) or 400 `missing_header`.
pub fn client_id(
    req: &RequestHeader,
    cfg: &ClientsConfig,
    policies: &ClientPolicies,
    client_addr: Option<IpAddr>,
    carries: Carries,
) -> Result<Identity, Refusal> {
    // One credential a request: with a second `Authorization`, the key
    // in it went unseen (the first was read), was not taken off for the
    // upstream, and the request was charged to its address instead (found
    // by a hostile-client run).
    if carries.authorization && policies.has_api_keys() {
        let mut all = req.headers.get_all(AUTHORIZATION).iter();
        if all.next().is_some() && all.next().is_some() {
            return Err(Refusal::new(
                RejectReason::InvalidHeader,
                "Authorization is repeated",
            ));
        }
    }
    if let Some(key) = carries.authorization.then(|| bearer(req)).flatten() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        match policies.client_of_key(&digest) {
            Some(id) => {
                return Ok(Identity {
                    id: id.to_string(),
                    by_api_key: true,
                    header_as_is: false,
                })
            }
            None if policies.has_api_keys() => {
                return Err(Refusal::new(RejectReason::InvalidApiKey, "unknown API key"));
            }
            // No API keys configured: the header is the upstream's business.
            None => {}
        }
    }
    let mut values = carries
        .id_header
        .then(|| req.headers.get_all(&cfg.id_header).iter())
        .into_iter()
        .flatten();
    if let Some(first) = values.next() {
        let mut repeated = false;
        for v in values {
            if v != first {
                return Err(Refusal::new(
                    RejectReason::InvalidHeader,
                    format!("{} is repeated with different values", cfg.id_header),
                ));
            }
            repeated = true;
        }
        let raw = first.as_bytes();
        if let Err(e) = check_claimed_id(raw) {
            return Err(Refusal::new(
                RejectReason::InvalidHeader,
                format!("{} {e}", cfg.id_header),
            ));
        }
        // (`check_claimed_id` took UTF-8 only, so the lossy conversion is
        // a fallback that never runs; `from_utf8` checks a short ASCII id
        // for less than its chunked scan.)
        let id = match std::str::from_utf8(raw) {
            Ok(id) => id.to_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        };
        if policies.configured(&id).is_some_and(|c| c.requires_key) {
            return Err(Refusal::new(
                RejectReason::InvalidApiKey,
                format!("client {id:?} must authenticate with its API key"),
            ));
        }
        // (The id is the line's bytes: `check_claimed_id` took UTF-8 only.)
        return Ok(Identity {
            id,
            by_api_key: false,
            header_as_is: !repeated,
        });
    }
    let by_address = |id: String| Identity {
        id,
        by_api_key: false,
        header_as_is: false,
    };
    match (cfg.missing_id, client_addr) {
        (MissingId::Ip, Some(ip)) => Ok(by_address(address_id(ip))),
        (MissingId::Ip, None) => Ok(by_address(format!("{IP_PREFIX}unknown"))),
        (MissingId::Reject, _) => Err(Refusal::new(
            RejectReason::MissingHeader,
            format!("the {} header is required", cfg.id_header),
        )),
    }
}

/// `ip:` and the address.
fn address_id(ip: IpAddr) -> String {
    let text = super::headers::ip_text(ip);
    let mut s = String::with_capacity(IP_PREFIX.len() + text.as_str().len());
    s.push_str(IP_PREFIX);
    s.push_str(text.as_str());
    s
}

fn bearer(req: &RequestHeader) -> Option<&[u8]> {
    let v = req.headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// The request's token cost from `header`: a non-negative integer, the same
/// in every copy of the header; `default` when absent.
pub fn token_cost(
    req: &RequestHeader,
    header: &http::HeaderName,
    default: u64,
) -> Result<u64, Refusal> {
    let mut cost: Option<u64> = None;
    for v in req.headers.get_all(header) {
        let bad = || {
            Refusal::new(
                RejectReason::InvalidHeader,
                format!("{header} must be a non-negative integer"),
            )
        };
        let s = v.to_str().map_err(|_| bad())?.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = s.parse().map_err(|_| {
            Refusal::new(
                RejectReason::InvalidHeader,
                format!("{header} is too large"),
            )
        })?;
        match cost {
            Some(c) if c != n => {
                return Err(Refusal::new(
                    RejectReason::InvalidHeader,
                    format!("{header} is repeated with different values"),
                ))
            }
            _ => cost = Some(n),
        }
    }
    Ok(cost.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::clients::{ClientLimit, Mode};
    use crate::limits::clock::ManualClock;
    use crate::limits::rate::Quota;

    fn req(headers: &[(&str, &[u8])]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    /// What the request filter's one pass over the names finds.
    fn carries(r: &RequestHeader, c: &ClientsConfig) -> Carries {
        Carries::of(r, &c.id_header, &c.token_header)
    }

    fn policies(missing: MissingId) -> (ClientsConfig, ClientPolicies) {
        let mut c = ClientsConfig {
            missing_id: missing,
            ..ClientsConfig::default()
        };
        let digest: [u8; 32] = Sha256::digest(b"s3cret").into();
        c.policy.limits.insert(
            "acme".into(),
            ClientLimit {
                max_concurrent: None,
                models: Default::default(),
                quota: Quota::default(),
                enabled: true,
                mode: Mode::Enforce,
                api_keys: vec![digest],
                privileges: Default::default(),
            },
        );
        (
            c.clone(),
            ClientPolicies::build(&c.policy, ManualClock::new(0), None).unwrap(),
        )
    }

    #[test]
    fn identity_sources() {
        let (c, p) = policies(MissingId::Ip);
        let ip: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        let id = |h: &[(&str, &[u8])]| {
            client_id(&req(h), &c, &p, ip, carries(&req(h), &c)).map(|i| i.id)
        };
        assert_eq!(id(&[("authorization", b"Bearer s3cret")]).unwrap(), "acme");
        assert_eq!(
            id(&[
                ("authorization", b"bearer s3cret"),
                ("x-client-id", b"other")
            ])
            .unwrap(),
            "acme"
        );
        assert_eq!(
            id(&[("authorization", b"Bearer nope")]).unwrap_err().reason,
            RejectReason::InvalidApiKey
        );
        assert_eq!(
            id(&[("x-client-id", b"acme")]).unwrap_err().reason,
            RejectReason::InvalidApiKey
        );
        assert_eq!(id(&[("x-client-id", b"bob")]).unwrap(), "bob");
        let long = vec![b'a'; 300];
        assert_eq!(
            id(&[("x-client-id", &long)]).unwrap_err().reason,
            RejectReason::InvalidHeader
        );
        assert_eq!(
            id(&[("x-client-id", b"a"), ("x-client-id", b"b")])
                .unwrap_err()
                .reason,
            RejectReason::InvalidHeader
        );
        assert_eq!(id(&[]).unwrap(), "ip:10.1.2.3");
        // Whether the id header's line can go upstream as it is: one line
        // that reads as the id, and nothing else.
        let as_is = |h: &[(&str, &[u8])]| {
            client_id(&req(h), &c, &p, ip, carries(&req(h), &c))
                .unwrap()
                .header_as_is
        };
        assert!(as_is(&[("x-client-id", b"bob")]));
        assert!(!as_is(&[("x-client-id", b"bob"), ("x-client-id", b"bob")]));
        assert!(!as_is(&[("authorization", b"Bearer s3cret")]));
        assert!(!as_is(&[]));
        // A second Authorization, the key in either, is refused.
        for pair in [
            [&b"Basic eA=="[..], b"Bearer s3cret"],
            [b"Bearer s3cret", b"Basic eA=="],
        ] {
            assert_eq!(
                id(&[("authorization", pair[0]), ("authorization", pair[1])])
                    .unwrap_err()
                    .reason,
                RejectReason::InvalidHeader
            );
        }
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.10",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(address_id(ip), format!("ip:{ip}"));
        }
        // The address namespace is not for headers to claim.
        assert_eq!(
            id(&[("x-client-id", b"ip:10.1.2.3")]).unwrap_err().reason,
            RejectReason::InvalidHeader
        );
        // A key-named client is marked so (its key never goes upstream).
        assert!(
            client_id(
                &req(&[("authorization", b"Bearer s3cret")]),
                &c,
                &p,
                ip,
                Carries::ALL
            )
            .unwrap()
            .by_api_key
        );
        let (c, p) = policies(MissingId::Reject);
        assert_eq!(
            client_id(&req(&[]), &c, &p, ip, Carries::ALL)
                .unwrap_err()
                .reason,
            RejectReason::MissingHeader
        );
    }

    #[test]
    fn token_costs() {
        let h = http::HeaderName::from_static("x-token-estimate");
        let cost = |v: &[&[u8]]| {
            let hs: Vec<(&str, &[u8])> = v.iter().map(|x| ("x-token-estimate", *x)).collect();
            token_cost(&req(&hs), &h, 7)
        };
        assert_eq!(cost(&[]).unwrap(), 7);
        assert_eq!(cost(&[b"120"]).unwrap(), 120);
        assert_eq!(cost(&[b" 5 ", b"5"]).unwrap(), 5);
        for bad in [
            &b"-1"[..],
            b"1.5",
            b"1e3",
            b"+3",
            b"",
            b"99999999999999999999999",
            b"abc",
        ] {
            assert!(cost(&[bad]).is_err(), "{bad:?}");
        }
        assert!(cost(&[b"1", b"2"]).is_err());
    }
}
