#![allow(clippy::unwrap_used)]
use super::*;
use chrono::{Duration, Utc};
use uuid::Uuid;

fn instance(agent_type: &str, capacity: u32) -> AgentInstance {
    let now = Utc::now();
    AgentInstance {
        id: AgentId(Uuid::now_v7()),
        agent_type: agent_type.to_owned(),
        url: "http://127.0.0.1:1".to_owned(),
        capacity,
        load: 0,
        weight: 1,
        status: AgentStatus::Idle,
        version: None,
        metadata: serde_json::json!({}),
        signing_secret: String::new(),
        last_heartbeat: now,
        created_at: now,
    }
}

fn registry() -> Registry {
    Registry::new(Arc::new(Wakers::default()))
}

#[test]
fn slots_never_exceed_capacity_and_are_returned() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone());
    assert_eq!(reg.free_capacity("t"), 2);
    assert!(reg.acquire("t", &[]).is_some());
    assert!(reg.acquire("t", &[]).is_some());
    assert!(reg.acquire("t", &[]).is_none());
    assert_eq!(
        reg.get(a.id).map(|v| (v.load, v.status)),
        Some((2, AgentStatus::Busy))
    );
    assert!(!reg.release(a.id));
    assert_eq!(reg.free_capacity("t"), 1);
    assert_eq!(reg.free_capacity("other"), 0);
}

#[test]
fn failed_instances_get_no_work_until_they_heartbeat_again() {
    let reg = registry();
    let a = instance("t", 1);
    reg.insert(a.clone());
    let later = Utc::now() + Duration::seconds(30);
    let expired = reg.expire_heartbeats(later, Duration::seconds(10));
    assert_eq!(expired.len(), 1);
    assert!(reg.acquire("t", &[]).is_none());
    assert_eq!(
        reg.heartbeat(a.id, None, later),
        Some((Desired::Run, AgentStatus::Idle))
    );
    assert!(reg.acquire("t", &[]).is_some());
}

#[test]
fn deregistration_drains_in_flight_work_first() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone());
    let _slot = reg.acquire("t", &[]).unwrap();
    assert_eq!(reg.deregister(a.id), Deregistration::Draining);
    assert!(reg.acquire("t", &[]).is_none());
    assert_eq!(
        reg.heartbeat(a.id, None, Utc::now()).map(|h| h.0),
        Some(Desired::Drain)
    );
    assert!(reg.release(a.id));
    assert!(reg.get(a.id).is_none());
    assert_eq!(reg.deregister(a.id), Deregistration::Unknown);
}

#[test]
fn draining_heartbeat_stops_new_work() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone());
    reg.heartbeat(a.id, Some(AgentStatus::Draining), Utc::now());
    assert!(reg.acquire("t", &[]).is_none());
    assert_eq!(reg.free_capacity("t"), 0);
}
