#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use flotilla_core::egress::Rule;
use std::net::IpAddr;
use std::str::FromStr;

fn loopback_denied() -> EgressPolicy {
    EgressPolicy {
        deny: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        ..EgressPolicy::default()
    }
}

async fn resolve(policy: EgressPolicy, owner: Option<TenantId>) -> Result<Vec<IpAddr>, String> {
    let resolver = EgressResolver::new(Arc::new(policy), owner);
    match resolver.resolve(Name::from_str("localhost").unwrap()).await {
        Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
        Err(e) => Err(refusal_in(e.as_ref()).map_or_else(|| e.to_string(), |r| r.to_string())),
    }
}

#[tokio::test]
async fn the_resolver_drops_refused_addresses_and_names_the_rule_when_none_remain() {
    let platform = resolve(EgressPolicy::default(), None).await.unwrap();
    assert!(!platform.is_empty() && platform.iter().all(|ip| ip.is_loopback()));
    let tenant = Some(TenantId(uuid::Uuid::from_u128(1)));
    let refused = resolve(EgressPolicy::default(), tenant).await.unwrap_err();
    assert!(refused.contains("loopback"), "{refused}");
    let denied = resolve(loopback_denied(), None).await.unwrap_err();
    assert!(
        denied.contains("in the denied range 127.0.0.0/8") || denied.contains("::1/128"),
        "{denied}"
    );
}

/// The send-time check: a host name the policy refuses after registration (here, from the
/// start) is never connected to, and the request's error carries the rule.
#[tokio::test]
async fn a_request_to_a_refused_name_never_connects() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let clients = AgentClients::new(None, loopback_denied()).unwrap();
    let url = format!("http://localhost:{port}/execute");
    let error = clients.for_owner(None).get(&url).send().await.unwrap_err();
    let refusal = refusal_in(&error).expect("the refusal is in the error chain");
    assert!(matches!(refusal.rule, Rule::Denied(_)), "{refusal}");
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the refused address was connected to");
    // An IP-literal host is checked before sending.
    let literal = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    assert!(clients.check_host(None, &literal).is_err());
    assert!(
        clients
            .check_host(None, &url::Url::parse("http://localhost/").unwrap())
            .is_ok()
    );
}

#[tokio::test]
async fn registration_checks_the_shape_then_every_resolved_address() {
    let clients = AgentClients::new(None, loopback_denied()).unwrap();
    let refused = clients
        .registrable(None, "http://localhost:9")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RegistrationRefusal::Egress(_)),
        "{refused}"
    );
    let shape = clients
        .registrable(None, "http://127.0.0.1:9/x?")
        .await
        .unwrap_err();
    assert!(
        matches!(shape, RegistrationRefusal::Shape(UrlRefusal::Query)),
        "{shape}"
    );
    let open = AgentClients::new(None, EgressPolicy::default()).unwrap();
    assert!(open.registrable(None, "http://localhost:9").await.is_ok());
    // A name that does not resolve is left to the check at send time.
    assert!(
        open.registrable(None, "http://no-such-host.invalid:9")
            .await
            .is_ok()
    );
}
