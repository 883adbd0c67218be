#![allow(clippy::unwrap_used)]
use super::*;
use chrono::{Duration as Span, Utc};
use flotilla_core::config::load;
use flotilla_core::event::NewEvent;
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

fn instance(agent_type: &str, capacity: u32) -> AgentInstance {
    let now = Utc::now();
    AgentInstance {
        id: AgentId(Uuid::now_v7()),
        agent_type: agent_type.to_owned(),
        tenant_id: None,
        url: "http://127.0.0.1:1".to_owned(),
        capacity,
        load: 0,
        weight: 1,
        status: AgentStatus::Idle,
        version: None,
        metadata: serde_json::json!({}),
        signing_secret: String::new(),
        latency_ms: None,
        success_rate: None,
        last_heartbeat: now,
        created_at: now,
    }
}

/// A registry whose pool `t` is configured by `pool_toml` (lines after `name = "t"`).
fn registry_with(pool_toml: &str) -> (Registry, UnboundedReceiver<NewEvent>) {
    let text = format!("[[pools]]\nname = \"t\"\nprovisioner = \"static\"\n{pool_toml}\n");
    let config = load(Some(("test", &text)), &[], &[]).unwrap();
    let (events, rx) = EventSink::detached();
    (
        Registry::new(Arc::new(Wakers::default()), events, Arc::new(config)),
        rx,
    )
}

fn registry() -> Registry {
    registry_with("").0
}

/// The tenant whose tasks most tests acquire slots for.
const T: TenantId = TenantId::DEFAULT;

/// All free slots of a type, whoever owns them.
fn free(reg: &Registry, agent_type: &str) -> u32 {
    reg.free_capacity(agent_type).iter().map(|f| f.slots).sum()
}

fn owned_by(tenant: TenantId, capacity: u32) -> AgentInstance {
    AgentInstance {
        tenant_id: Some(tenant),
        ..instance("t", capacity)
    }
}

#[test]
fn a_tenant_instance_never_gets_another_tenants_task() {
    let reg = registry();
    let (a, b) = (TenantId(Uuid::now_v7()), TenantId(Uuid::now_v7()));
    let rogue = owned_by(a, 100);
    reg.insert(rogue.clone(), Utc::now());
    // Tenant b has no instance of its own and the platform none: b's task gets no slot at all,
    // however much room a's instance has.
    assert!(reg.acquire("t", b, None, None).is_none());
    let platform = instance("t", 1);
    reg.insert(platform.clone(), Utc::now());
    let slot = reg.acquire("t", b, None, None).unwrap();
    assert_eq!((slot.agent_id, slot.owner), (platform.id, None));
    assert!(
        reg.acquire("t", b, None, None).is_none(),
        "the platform's one slot is taken"
    );
    // a's own instance takes a's tasks first.
    let own = reg.acquire("t", a, None, None).unwrap();
    assert_eq!((own.agent_id, own.owner), (rogue.id, Some(a)));
    assert!(reg.serves("t", a) && reg.serves("t", b));
}

#[test]
fn free_slots_say_whose_tasks_they_may_take() {
    let (reg, _) = registry_with(&format!("tenants = [\"{}\"]", T.0));
    let a = TenantId(Uuid::now_v7());
    reg.insert(owned_by(a, 2), Utc::now());
    reg.insert(instance("t", 3), Utc::now());
    let free = reg.free_capacity("t");
    assert_eq!(
        free,
        vec![
            FreeSlots {
                owner: Some(a),
                serves: Some(vec![a]),
                slots: 2
            },
            FreeSlots {
                owner: None,
                serves: Some(vec![T]),
                slots: 3
            },
        ]
    );
    // The pool serves only T: a's tasks run on a's instance, never on the platform's.
    assert!(reg.acquire("t", a, None, None).is_some());
    assert!(reg.acquire("t", a, None, None).is_some());
    assert!(reg.acquire("t", a, None, None).is_none());
    let other = TenantId(Uuid::now_v7());
    assert!(!reg.serves("t", other));
    assert_eq!(reg.owned_by(a), (1, vec!["t".to_owned()]));
}

fn messages(rx: &mut UnboundedReceiver<NewEvent>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| e.message)
        .collect()
}

#[test]
fn slots_never_exceed_capacity_and_are_returned() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone(), Utc::now());
    assert_eq!(free(&reg, "t"), 2);
    assert!(reg.acquire("t", T, None, None).is_some());
    assert!(reg.acquire("t", T, None, None).is_some());
    assert!(reg.acquire("t", T, None, None).is_none());
    assert_eq!(
        reg.get(a.id).map(|v| (v.load, v.status)),
        Some((2, AgentStatus::Busy))
    );
    assert!(!reg.release(a.id));
    assert_eq!(free(&reg, "t"), 1);
    assert_eq!(free(&reg, "other"), 0);
}

#[test]
fn failed_instances_get_no_work_until_they_heartbeat_again() {
    let (reg, mut rx) = registry_with("");
    let a = instance("t", 1);
    reg.insert(a.clone(), Utc::now());
    let slot = reg.acquire("t", T, None, None).unwrap();
    let later = Utc::now() + Span::seconds(30);
    assert_eq!(reg.expire_heartbeats(later, Span::seconds(10)), vec![a.id]);
    assert!(
        slot.failed.is_cancelled(),
        "in-flight attempts are cut short"
    );
    reg.release(a.id);
    assert!(reg.acquire("t", T, None, None).is_none());
    assert_eq!(
        reg.heartbeat(a.id, false, later),
        Some((Desired::Run, AgentStatus::Idle))
    );
    assert!(reg.acquire("t", T, None, None).is_some());
    let log = messages(&mut rx);
    assert!(
        log.iter()
            .any(|m| m.contains("busy → failed: no heartbeat since")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|m| m.ends_with("failed → idle: heartbeats resumed")),
        "{log:?}"
    );
}

#[test]
fn failed_instances_are_removed_after_a_while() {
    let reg = registry();
    let a = instance("t", 1);
    reg.insert(a.clone(), Utc::now());
    let t1 = Utc::now() + Span::seconds(30);
    reg.expire_heartbeats(t1, Span::seconds(10));
    assert!(
        reg.remove_failed(t1 + Span::seconds(5), Span::seconds(60))
            .is_empty()
    );
    assert_eq!(
        reg.remove_failed(t1 + Span::seconds(61), Span::seconds(60)),
        vec![a.id]
    );
    assert!(reg.get(a.id).is_none());
    assert!(
        reg.heartbeat(a.id, false, t1).is_none(),
        "it must register again"
    );
}

#[test]
fn deregistration_drains_in_flight_work_first() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone(), Utc::now());
    let _slot = reg.acquire("t", T, None, None).unwrap();
    assert_eq!(reg.deregister(a.id, Utc::now()), Deregistration::Draining);
    assert!(reg.acquire("t", T, None, None).is_none());
    assert_eq!(
        reg.heartbeat(a.id, false, Utc::now()).map(|h| h.0),
        Some(Desired::Drain)
    );
    assert!(reg.release(a.id));
    assert!(reg.get(a.id).is_none());
    assert_eq!(reg.deregister(a.id, Utc::now()), Deregistration::Unknown);
}

#[test]
fn draining_heartbeat_stops_new_work() {
    let reg = registry();
    let a = instance("t", 2);
    reg.insert(a.clone(), Utc::now());
    reg.heartbeat(a.id, true, Utc::now());
    assert!(reg.acquire("t", T, None, None).is_none());
    assert_eq!(free(&reg, "t"), 0);
}

#[test]
fn an_instance_that_keeps_failing_is_ejected_then_restored() {
    let (reg, mut rx) = registry_with(
        "[pools.outlier]\nconsecutive_failures = 3\nbase_ejection_s = 10\nmin_requests = 100",
    );
    let (a, b) = (instance("t", 4), instance("t", 4));
    let now = Utc::now();
    reg.insert(a.clone(), now);
    reg.insert(b.clone(), now);
    for _ in 0..3 {
        reg.record_outcome(a.id, now, Duration::from_millis(5), false);
    }
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Ejected));
    for _ in 0..20 {
        let slot = reg.acquire("t", T, None, None).unwrap();
        assert_eq!(slot.agent_id, b.id, "ejected instances get no work");
        reg.release(slot.agent_id);
    }
    // The cap (half the pool, at least one, never the last) keeps b in rotation.
    for _ in 0..3 {
        reg.record_outcome(b.id, now, Duration::from_millis(5), false);
    }
    assert_eq!(reg.get(b.id).map(|v| v.status), Some(AgentStatus::Idle));
    reg.restore_ejected(now + Span::seconds(9));
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Ejected));
    reg.restore_ejected(now + Span::seconds(10));
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Idle));
    let log = messages(&mut rx);
    assert!(
        log.iter()
            .any(|m| m.contains("idle → ejected: 3 consecutive failures (offence 1")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|m| m.ends_with("ejected → idle: ejection time over"))
    );
}

#[test]
fn health_checks_fail_and_restore_with_hysteresis() {
    let (reg, mut rx) = registry_with(
        "[pools.health]\ninterval_ms = 1000\nunhealthy_threshold = 2\nhealthy_threshold = 2",
    );
    let a = instance("t", 1);
    let now = Utc::now();
    reg.insert(a.clone(), now);
    assert!(
        reg.due_checks(now).is_empty(),
        "first check shortly after registration"
    );
    let due = reg.due_checks(now + Span::seconds(1));
    assert_eq!(due.len(), 1);
    assert!(
        reg.due_checks(now + Span::seconds(1)).is_empty(),
        "scheduled once"
    );
    reg.record_check(a.id, false, "refused", now);
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Idle));
    reg.record_check(a.id, false, "refused", now);
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Failed));
    // A heartbeat does not override failed health checks.
    reg.heartbeat(a.id, false, now);
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Failed));
    reg.record_check(a.id, true, "", now);
    reg.record_check(a.id, true, "", now);
    assert_eq!(reg.get(a.id).map(|v| v.status), Some(AgentStatus::Idle));
    let log = messages(&mut rx);
    assert!(
        log.iter()
            .any(|m| m.contains("idle → failed: 2 health checks failed, last: refused")),
        "{log:?}"
    );
}

#[test]
fn the_pool_strategy_is_used() {
    let (reg, _rx) = registry_with("strategy = \"round_robin\"");
    let ids: Vec<_> = (0..3)
        .map(|_| {
            let a = instance("t", 10);
            reg.insert(a.clone(), Utc::now());
            a.id
        })
        .collect();
    // Slots are not released, so every pick sees different loads: only round robin gives the
    // registration order twice over (p2c or least connections would not keep this order).
    let picks: Vec<_> = (0..6)
        .map(|_| reg.acquire("t", T, None, None).unwrap().agent_id)
        .collect();
    let expected: Vec<_> = ids.iter().chain(ids.iter()).copied().collect();
    assert_eq!(picks, expected);
}

#[test]
fn replicas_share_an_instances_capacity() {
    assert_eq!(capacity_share(16, 1), 16);
    assert_eq!(capacity_share(16, 3), 6, "rounded up: 3 × 6 ≥ 16");
    assert_eq!(
        capacity_share(2, 3),
        1,
        "never 0: an instance still gets work"
    );
    assert_eq!(capacity_share(4, 0), 4, "no count yet: the whole capacity");
}
