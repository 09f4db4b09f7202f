//! Client policies: configured, unlisted and disabled clients, charges,
//! rebuilds, client ids.

use super::*;
use crate::limits::clock::ManualClock;
use crate::limits::rate::{Usage, MAX_TPM};
use std::sync::atomic::Ordering;

fn config() -> ClientsPolicy {
    let mut c = ClientsPolicy {
        default: Some(Quota {
            rpm: Some(2),
            tpm: Some(100),
        }),
        max_tracked_clients: 1024,
        ..ClientsPolicy::default()
    };
    c.limits.insert(
        "gold".into(),
        ClientLimit {
            max_concurrent: None,
            models: Default::default(),
            quota: Quota {
                rpm: Some(3),
                tpm: Some(1000),
            },
            enabled: true,
            mode: Mode::Enforce,
            api_keys: vec![[7; 32]],
            privileges: Default::default(),
        },
    );
    c.limits.insert(
        "free".into(),
        ClientLimit {
            max_concurrent: None,
            models: Default::default(),
            quota: Quota::default(),
            enabled: false,
            mode: Mode::Enforce,
            api_keys: vec![],
            privileges: Default::default(),
        },
    );
    c
}

fn admitted(d: Decision) -> Charge {
    match d {
        Decision::Admitted { charge, .. } => charge,
        _ => panic!("not admitted"),
    }
}

#[test]
fn configured_unlisted_and_disabled_clients() {
    let clock = ManualClock::new(1_000_000);
    let p = ClientPolicies::build(&config(), clock, None).unwrap();
    for _ in 0..3 {
        admitted(p.decide("gold", None, 10)).keep();
    }
    assert!(matches!(
        p.decide("gold", None, 10),
        Decision::Refused {
            reason: RejectReason::RpmExceeded,
            ..
        }
    ));
    // Each unlisted client has the default on its own.
    for id in ["a", "b", "c"] {
        admitted(p.decide(id, None, 1)).keep();
        admitted(p.decide(id, None, 1)).keep();
        assert!(matches!(p.decide(id, None, 1), Decision::Refused { .. }));
    }
    assert!(matches!(
        p.decide("free", None, 1_000_000),
        Decision::Unlimited
    ));
    assert_eq!(p.client_of_key(&[7; 32]), Some("gold"));
    assert_eq!(p.label("gold"), "gold");
    assert_eq!(p.label("a"), "other");
}

#[test]
fn a_charge_ends_in_one_of_three_ways() {
    let clock = ManualClock::new(1_000_000);
    let p = ClientPolicies::build(&config(), clock, None).unwrap();
    let used = |p: &ClientPolicies| p.peek("gold").unwrap().used;
    // Dropped unsettled: stays as charged.
    drop(admitted(p.decide("gold", None, 100)));
    assert_eq!(
        used(&p),
        Usage {
            requests: 1,
            tokens: 100
        }
    );
    // Refused after all: nothing stays.
    admitted(p.decide("gold", None, 500)).refund_all();
    assert_eq!(
        used(&p),
        Usage {
            requests: 1,
            tokens: 100
        }
    );
    // The upstream failed: the request stays, its tokens do not.
    admitted(p.decide("gold", None, 500)).refund_tokens();
    assert_eq!(
        used(&p),
        Usage {
            requests: 2,
            tokens: 100
        }
    );
    // Settled to the actual count; a huge count is clamped.
    let p2 = ClientPolicies::build(&config(), ManualClock::new(1_000_000), None).unwrap();
    let s = admitted(p2.decide("gold", None, 500)).settle(42);
    assert_eq!(s.tokens, 42);
    assert_eq!(
        used(&p2),
        Usage {
            requests: 1,
            tokens: 42
        }
    );
    let s = admitted(p2.decide("gold", None, 5)).settle(u64::MAX);
    assert!(s.clamped);
    assert_eq!(
        used(&p2).requests,
        2,
        "the count did not carry into the requests"
    );
    assert_eq!(
        p2.configured("gold")
            .unwrap()
            .stats
            .tokens
            .load(Ordering::Relaxed),
        42 + MAX_TPM
    );
}

#[test]
fn rebuild_keeps_counters() {
    let clock = ManualClock::new(1_000_000);
    let p = ClientPolicies::build(&config(), clock.clone(), None).unwrap();
    admitted(p.decide("gold", None, 5)).keep();
    admitted(p.decide("zed", None, 5)).keep();
    let p2 = ClientPolicies::build(&config(), clock, Some(&p)).unwrap();
    assert_eq!(p2.peek("gold").unwrap().used.requests, 1);
    assert_eq!(p2.peek("zed").unwrap().used.requests, 1);
}

#[test]
fn client_ids() {
    assert!(check_client_id(b"acme-1").is_ok());
    assert!(check_client_id(b"").is_err());
    assert!(check_client_id(b"a\nb").is_err());
    assert!(check_client_id(&[b'a'; 257]).is_err());
    assert!(check_client_id(&[0xff, 0xfe]).is_err());
    assert!(check_client_id(&[b'a'; 256]).is_ok());
    assert!(check_client_id(" a".as_bytes()).is_err());
    assert!(check_client_id("a b".as_bytes()).is_ok());
    assert!(check_client_id("a\x7f".as_bytes()).is_err());
    assert!(check_client_id("caf\u{e9}".as_bytes()).is_ok());
    assert!(check_client_id("\u{e9}".repeat(256).as_bytes()).is_ok());
    assert!(check_client_id("\u{e9}".repeat(257).as_bytes()).is_err());
}

/// Whether any client is limited, as each request asks it: worked out when
/// the policies are built, and rebuilt with them.
#[test]
fn any_limits_follows_the_config() {
    let clock = ManualClock::new(0) as Arc<dyn Clock>;
    let build = |c: &ClientsPolicy| ClientPolicies::build(c, clock.clone(), None).unwrap();
    let mut c = config();
    assert!(build(&c).any_limits(), "a default quota");
    c.default = None;
    assert!(build(&c).any_limits(), "an enabled configured client");
    c.limits.retain(|_, l| !l.enabled);
    assert!(!build(&c).any_limits(), "only a disabled client");
    c.default_max_concurrent = Some(3);
    assert!(
        build(&c).any_limits(),
        "a cap on unlisted clients in flight"
    );
    c.default_max_concurrent = None;
    c.models.insert(
        "m".into(),
        Quota {
            rpm: Some(1),
            tpm: None,
        },
    );
    assert!(build(&c).any_limits(), "a model limit on unlisted clients");
    c.models.clear();
    assert!(!build(&c).any_limits());
}
