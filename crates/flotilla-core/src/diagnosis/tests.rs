#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::alert::{Severity as AlertSeverity, Signal};
use crate::auth::Role;
use crate::id::TenantId;
use crate::wire::{DiskInfo, ProcessInfo, SystemCaller};
use chrono::{Duration, TimeZone, Utc};
use std::collections::BTreeMap;

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
}

fn pool(name: &str, idle: u32, queued: u64) -> PoolView {
    let mut instances = BTreeMap::new();
    if idle > 0 {
        instances.insert("idle".to_owned(), idle);
    }
    PoolView {
        name: name.to_owned(),
        provisioner: "static".to_owned(),
        strategy: crate::balance::StrategyKind::default(),
        configured: true,
        autoscale: false,
        min_instances: 0,
        max_instances: 10,
        desired: idle,
        instances,
        capacity: idle * 4,
        load: 0,
        utilisation: 0.0,
        queued,
        last_decision: None,
        last_decision_at: None,
        processes: Vec::new(),
    }
}

fn key(name: &str, expires: Option<Timestamp>) -> KeyView {
    KeyView {
        id: format!("flt_{name}"),
        tenant_id: TenantId::DEFAULT,
        role: Role::Admin,
        name: name.to_owned(),
        created_at: now() - Duration::days(1),
        expires_at: expires,
        revoked_at: None,
        rate_limit: None,
    }
}

fn secret(path: &str, age_days: i64) -> SecretInfo {
    SecretInfo {
        path: path.to_owned(),
        latest_version: 1,
        versions: Vec::new(),
        created_at: now() - Duration::days(age_days),
        updated_at: now() - Duration::days(age_days),
    }
}

fn system() -> SystemInfo {
    SystemInfo {
        version: "0.1.0".to_owned(),
        started_at: now() - Duration::hours(1),
        uptime_s: 3600,
        store: "sqlite".to_owned(),
        listen: "0.0.0.0:8080".to_owned(),
        tls: true,
        metrics_public: false,
        caller: SystemCaller {
            key_id: "flt_ops".to_owned(),
            role: Role::Admin,
            tenant_id: TenantId::DEFAULT,
        },
        process: ProcessInfo {
            cpu_seconds: Some(10.0),
            cpus: Some(2),
            resident_memory_bytes: Some(100 << 20),
            memory_limit_bytes: Some(1 << 30),
            open_fds: Some(20),
            max_fds: Some(1024),
        },
        data_dir_disk: Some(DiskInfo {
            available_bytes: 50 << 30,
            total_bytes: 100 << 30,
        }),
        queued: BTreeMap::new(),
        providers: Vec::new(),
        replica: None,
    }
}

/// A deployment with nothing wrong.
fn healthy() -> Facts {
    Facts {
        now: now(),
        url: "https://flotilla.example".to_owned(),
        health: ProbeResult::Ok,
        ready: ProbeResult::Ok,
        key: KeyCheck::Accepted,
        system: Gathered::Measured(system()),
        cpu: Gathered::Measured(CpuWindow {
            first_cpu_seconds: 10.0,
            second_cpu_seconds: 10.2,
            elapsed_s: 1.0,
        }),
        metrics: Gathered::Measured(MetricsSummary {
            tasks_finished: 100,
            task_p95_s: Some(0.8),
            execute_calls: 100,
            execute_errors: 0,
        }),
        metrics_open: Gathered::Measured(false),
        prometheus: None,
        pools: Gathered::Measured(vec![pool("code", 2, 0)]),
        agents: Gathered::Measured(Vec::new()),
        alerts: Gathered::Measured(Vec::new()),
        keys: Gathered::Measured(vec![key("ops", Some(now() + Duration::days(30)))]),
        secrets: Gathered::Measured(vec![secret("db", 10)]),
        auth_failures: Gathered::Measured(AuthFailures {
            recent: 0,
            capped: false,
        }),
        kube: false,
        min_disk_free: DISK_FREE_WARNING,
        providers: Gathered::Unavailable("the model gateway is not built yet".to_owned()),
        budgets: Gathered::Unavailable("budgets are not built yet".to_owned()),
    }
}

fn find<'a>(report: &'a Report, name: &str) -> &'a Check {
    report
        .sections
        .iter()
        .flat_map(|s| &s.checks)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#?}"))
}

fn severity(facts: &Facts, name: &str) -> Severity {
    find(&diagnose(facts), name).severity
}

#[test]
fn a_healthy_deployment_is_healthy_with_exit_code_0() {
    let report = diagnose(&healthy());
    assert_eq!(report.status, Status::Healthy, "{report:#?}");
    assert_eq!(report.exit_code, 0);
    assert!(report.recommendations().is_empty());
    let names: Vec<&str> = report.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Connectivity",
            "Performance",
            "Resources",
            "Security",
            "Costs"
        ]
    );
    // What could not be measured says so, and does not change the status.
    assert_eq!(find(&report, "Model providers").severity, Severity::Unknown);
    assert_eq!(find(&report, "Budgets").severity, Severity::Unknown);
}

#[test]
fn an_unreachable_server_is_critical_with_exit_code_2() {
    let mut facts = healthy();
    facts.health = ProbeResult::Unreachable("connection refused".to_owned());
    facts.ready = ProbeResult::Unreachable("connection refused".to_owned());
    facts.key = KeyCheck::Untested("the server is unreachable".to_owned());
    facts.system = Gathered::Unavailable("the server is unreachable".to_owned());
    let report = diagnose(&facts);
    assert_eq!(report.status, Status::Critical);
    assert_eq!(report.exit_code, 2);
    assert!(find(&report, "API").summary.contains("connection refused"));
    assert_eq!(
        find(&report, "Control-plane memory").severity,
        Severity::Unknown
    );
}

#[test]
fn a_refused_key_or_an_unready_store_is_critical() {
    let mut facts = healthy();
    facts.key = KeyCheck::Rejected("invalid API key".to_owned());
    let report = diagnose(&facts);
    assert_eq!(report.status, Status::Critical);
    assert!(report.recommendations()[0].name == "Authentication");

    let mut facts = healthy();
    facts.ready = ProbeResult::Failed("migrations are not applied".to_owned());
    assert_eq!(diagnose(&facts).status, Status::Critical);

    let mut facts = healthy();
    facts.key = KeyCheck::Missing;
    assert_eq!(diagnose(&facts).status, Status::Critical);
}

#[test]
fn latency_warns_at_the_target_and_is_unhealthy_at_the_alert_threshold() {
    let mut facts = healthy();
    let set = |facts: &mut Facts, p95: f64| {
        if let Gathered::Measured(m) = &mut facts.metrics {
            m.task_p95_s = Some(p95);
        }
    };
    set(&mut facts, 4.99);
    assert_eq!(severity(&facts, "Task latency"), Severity::Ok);
    set(&mut facts, 5.0);
    assert_eq!(severity(&facts, "Task latency"), Severity::Warning);
    set(&mut facts, 30.0);
    assert_eq!(severity(&facts, "Task latency"), Severity::Error);
    assert_eq!(diagnose(&facts).status, Status::Unhealthy);
}

#[test]
fn prometheus_windows_take_precedence_over_counters_since_start() {
    let mut facts = healthy();
    facts.prometheus = Some(Gathered::Measured(PrometheusFacts {
        targets_up: 1,
        targets_down: 0,
        queue_series: 1,
        task_p95_s: Some(6.0),
        error_rate: Some(0.0),
    }));
    let report = diagnose(&facts);
    let latency = find(&report, "Task latency");
    assert_eq!(latency.severity, Severity::Warning);
    assert!(
        latency.summary.contains("Prometheus"),
        "{}",
        latency.summary
    );
    assert_eq!(find(&report, "Prometheus").severity, Severity::Ok);

    // A Prometheus that does not scrape Flotilla warns and is not used for figures.
    facts.prometheus = Some(Gathered::Measured(PrometheusFacts {
        targets_up: 1,
        queue_series: 0,
        task_p95_s: Some(60.0),
        ..PrometheusFacts::default()
    }));
    assert_eq!(severity(&facts, "Prometheus"), Severity::Warning);
    assert_eq!(severity(&facts, "Task latency"), Severity::Ok);
    facts.prometheus = Some(Gathered::Unavailable("connection refused".to_owned()));
    assert_eq!(severity(&facts, "Prometheus"), Severity::Warning);
}

#[test]
fn error_rate_warns_at_one_percent_and_is_unhealthy_at_ten() {
    let mut facts = healthy();
    for (errors, expected) in [
        (0, Severity::Ok),
        (1, Severity::Warning),
        (9, Severity::Warning),
        (10, Severity::Error),
    ] {
        facts.metrics = Gathered::Measured(MetricsSummary {
            tasks_finished: 100,
            task_p95_s: Some(1.0),
            execute_calls: 100,
            execute_errors: errors,
        });
        assert_eq!(severity(&facts, "Error rate"), expected, "{errors} errors");
    }
    facts.metrics = Gathered::Measured(MetricsSummary::default());
    assert_eq!(severity(&facts, "Error rate"), Severity::Unknown);
    assert_eq!(severity(&facts, "Task latency"), Severity::Unknown);
}

#[test]
fn a_pool_with_queued_work_and_no_healthy_instance_is_unhealthy_and_named() {
    let mut facts = healthy();
    let mut dead = pool("summariser", 0, 0);
    dead.instances.insert("failed".to_owned(), 1);
    facts.pools = Gathered::Measured(vec![pool("code", 2, 0), dead]);
    // Nothing queued: it warns.
    assert_eq!(severity(&facts, "Pool summariser"), Severity::Warning);
    // Queued work (as the store counts it now): unhealthy, and the advice names the pool.
    if let Gathered::Measured(s) = &mut facts.system {
        s.queued.insert("summariser".to_owned(), 3);
    }
    let report = diagnose(&facts);
    let check = find(&report, "Pool summariser");
    assert_eq!(check.severity, Severity::Error);
    assert!(check.summary.contains("3 queued"), "{}", check.summary);
    assert!(
        check
            .recommendation
            .as_deref()
            .is_some_and(|r| r.contains("summariser"))
    );
    assert_eq!(report.status, Status::Unhealthy);
    assert_eq!(report.exit_code, 2);
}

#[test]
fn failed_instances_and_backlogs_warn() {
    let mut facts = healthy();
    let mut p = pool("code", 2, 0);
    p.instances.insert("ejected".to_owned(), 1);
    facts.pools = Gathered::Measured(vec![p]);
    assert_eq!(severity(&facts, "Pool code"), Severity::Warning);

    let mut facts = healthy();
    facts.pools = Gathered::Measured(vec![pool("code", 1, 5)]);
    assert_eq!(severity(&facts, "Pool code"), Severity::Warning);
    facts.pools = Gathered::Measured(vec![pool("code", 1, 4)]);
    assert_eq!(severity(&facts, "Pool code"), Severity::Ok);
    facts.pools = Gathered::Measured(Vec::new());
    assert_eq!(severity(&facts, "Pools"), Severity::Warning);
}

#[test]
fn firing_alerts_count_by_severity() {
    let alert = |severity, state: &str| ActiveAlert {
        rule: "low_success_rate".to_owned(),
        by: crate::alert::Dimension::AgentType,
        agent_type: Some("code".to_owned()),
        model: None,
        tenant: None,
        state: state.to_owned(),
        severity,
        signal: Signal::SuccessRate,
        comparison: "<".to_owned(),
        threshold: 0.9,
        value: 0.5,
        since: now(),
        labels: BTreeMap::new(),
    };
    let mut facts = healthy();
    facts.alerts = Gathered::Measured(vec![alert(AlertSeverity::Critical, "pending")]);
    assert_eq!(severity(&facts, "Alerts"), Severity::Ok);
    facts.alerts = Gathered::Measured(vec![alert(AlertSeverity::Warning, "firing")]);
    assert_eq!(severity(&facts, "Alerts"), Severity::Warning);
    facts.alerts = Gathered::Measured(vec![alert(AlertSeverity::Critical, "firing")]);
    let report = diagnose(&facts);
    assert_eq!(find(&report, "Alerts").severity, Severity::Error);
    assert!(
        find(&report, "Alerts")
            .summary
            .contains("low_success_rate (code)")
    );
}

#[test]
fn cpu_memory_disk_and_descriptors_against_their_thresholds() {
    let mut facts = healthy();
    facts.cpu = Gathered::Measured(CpuWindow {
        first_cpu_seconds: 10.0,
        second_cpu_seconds: 11.7,
        elapsed_s: 1.0,
    });
    // 1.7 CPU-seconds per second on 2 CPUs: 85 %.
    assert_eq!(severity(&facts, "Control-plane CPU"), Severity::Warning);

    let with = |f: &dyn Fn(&mut SystemInfo)| {
        let mut facts = healthy();
        if let Gathered::Measured(s) = &mut facts.system {
            f(s);
        }
        facts
    };
    let memory = |share: f64| {
        with(&|s: &mut SystemInfo| {
            s.process.resident_memory_bytes = Some((share * 1000.0).round() as u64);
            s.process.memory_limit_bytes = Some(1000);
        })
    };
    assert_eq!(
        severity(&memory(0.84), "Control-plane memory"),
        Severity::Ok
    );
    assert_eq!(
        severity(&memory(0.85), "Control-plane memory"),
        Severity::Warning
    );
    assert_eq!(
        severity(&memory(0.95), "Control-plane memory"),
        Severity::Error
    );
    let unmeasured = with(&|s: &mut SystemInfo| s.process = ProcessInfo::default());
    assert_eq!(
        severity(&unmeasured, "Control-plane memory"),
        Severity::Unknown
    );
    assert_eq!(
        severity(&unmeasured, "Control-plane CPU"),
        Severity::Unknown
    );

    let disk = |free: u64| {
        with(&move |s: &mut SystemInfo| {
            s.data_dir_disk = Some(DiskInfo {
                available_bytes: free,
                total_bytes: 100,
            })
        })
    };
    assert_eq!(severity(&disk(10), "Data directory disk"), Severity::Ok);
    assert_eq!(severity(&disk(9), "Data directory disk"), Severity::Warning);
    assert_eq!(severity(&disk(4), "Data directory disk"), Severity::Error);

    let fds = with(&|s: &mut SystemInfo| s.process.open_fds = Some(900));
    assert_eq!(severity(&fds, "File descriptors"), Severity::Warning);
}

#[test]
fn busy_pools_warn_about_load() {
    let mut facts = healthy();
    let mut p = pool("code", 2, 0);
    p.load = 7;
    facts.pools = Gathered::Measured(vec![p]);
    let report = diagnose(&facts);
    assert_eq!(find(&report, "Agent load").severity, Severity::Warning);
    assert!(find(&report, "Agent load").summary.contains("code"));
}

#[test]
fn kubernetes_pods_are_reported_only_with_kube() {
    let mut facts = healthy();
    let mut p = pool("k", 1, 0);
    p.provisioner = "kubernetes".to_owned();
    p.desired = 3;
    facts.pools = Gathered::Measured(vec![p]);
    let report = diagnose(&facts);
    assert!(
        report
            .sections
            .iter()
            .flat_map(|s| &s.checks)
            .all(|c| c.name != "Kubernetes pods")
    );
    facts.kube = true;
    let report = diagnose(&facts);
    let check = find(&report, "Kubernetes pods");
    assert_eq!(check.severity, Severity::Warning);
    assert!(check.summary.contains("1 of 3"), "{}", check.summary);
}

#[test]
fn security_findings() {
    // TLS off.
    let mut facts = healthy();
    facts.url = "http://10.0.0.1:8080".to_owned();
    if let Gathered::Measured(s) = &mut facts.system {
        s.tls = false;
    }
    assert_eq!(severity(&facts, "TLS"), Severity::Warning);
    // Plain HTTP on a loopback-only listener does not cross a network.
    if let Gathered::Measured(s) = &mut facts.system {
        s.listen = "127.0.0.1:8080".to_owned();
    }
    assert_eq!(severity(&facts, "TLS"), Severity::Ok);
    facts.system = Gathered::Unavailable("down".to_owned());
    assert_eq!(severity(&facts, "TLS"), Severity::Warning);

    // Keys without expiry and the bootstrap key; revoked and expired keys do not count.
    let mut facts = healthy();
    let mut revoked = key("old", None);
    revoked.revoked_at = Some(now());
    let expired = key("gone", Some(now() - Duration::days(1)));
    facts.keys = Gathered::Measured(vec![
        key(BOOTSTRAP_KEY_NAME, None),
        revoked,
        expired,
        key("ops", Some(now() + Duration::days(1))),
    ]);
    let report = diagnose(&facts);
    assert_eq!(find(&report, "Bootstrap key").severity, Severity::Warning);
    let expiry = find(&report, "Key expiry");
    assert_eq!(expiry.severity, Severity::Warning);
    assert!(expiry.summary.starts_with("1 of 2"), "{}", expiry.summary);
    assert_eq!(report.status, Status::Warning);
    assert_eq!(report.exit_code, 1);

    // Secrets by age.
    for (age, expected) in [
        (89, Severity::Ok),
        (90, Severity::Warning),
        (179, Severity::Warning),
        (180, Severity::Error),
    ] {
        let mut facts = healthy();
        facts.secrets = Gathered::Measured(vec![secret("db", age)]);
        assert_eq!(severity(&facts, "Secret rotation"), expected, "{age} days");
    }

    // Open metrics: measured, or from the server's setting when the probe failed.
    let mut facts = healthy();
    facts.metrics_open = Gathered::Measured(true);
    assert_eq!(severity(&facts, "Metrics access"), Severity::Warning);
    facts.metrics_open = Gathered::Unavailable("timeout".to_owned());
    assert_eq!(severity(&facts, "Metrics access"), Severity::Ok);

    // Authentication failures, and an audit log the key may not read.
    let mut facts = healthy();
    facts.auth_failures = Gathered::Measured(AuthFailures {
        recent: AUTH_FAILURES_WARNING,
        capped: false,
    });
    assert_eq!(
        severity(&facts, "Authentication failures"),
        Severity::Warning
    );
    facts.auth_failures = Gathered::Unavailable("needs an admin key".to_owned());
    let report = diagnose(&facts);
    let check = find(&report, "Authentication failures");
    assert_eq!(check.severity, Severity::Unknown);
    assert!(check.summary.contains("needs an admin key"));
}

#[test]
fn budgets_when_they_exist() {
    let mut facts = healthy();
    let budget = |utilisation, projected| BudgetFact {
        name: "acme monthly".to_owned(),
        utilisation,
        projected,
    };
    facts.budgets = Gathered::Measured(vec![budget(0.5, Some(0.9))]);
    assert_eq!(severity(&facts, "Budget acme monthly"), Severity::Ok);
    facts.budgets = Gathered::Measured(vec![budget(0.5, Some(1.2))]);
    assert_eq!(severity(&facts, "Budget acme monthly"), Severity::Warning);
    facts.budgets = Gathered::Measured(vec![budget(0.8, None)]);
    assert_eq!(severity(&facts, "Budget acme monthly"), Severity::Warning);
    facts.budgets = Gathered::Measured(vec![budget(1.0, None)]);
    assert_eq!(severity(&facts, "Budget acme monthly"), Severity::Error);
}

#[test]
fn the_report_serialises_with_its_status_and_exit_code() {
    let json = serde_json::to_value(diagnose(&healthy())).unwrap();
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["exit_code"], 0);
    assert_eq!(json["sections"][0]["checks"][0]["severity"], "ok");
}

#[test]
fn several_replicas_say_who_leads_and_warn_without_a_leader() {
    let replica = |leader: bool, leader_owner: Option<&str>| {
        let mut facts = healthy();
        if let Gathered::Measured(system) = &mut facts.system {
            system.store = "postgres".to_owned();
            system.replica = Some(crate::wire::ReplicaInfo {
                owner: "flotilla-b".to_owned(),
                leader,
                leader_owner: leader_owner.map(str::to_owned),
                generation: leader.then_some(4),
            });
        }
        facts
    };
    let report = diagnose(&replica(true, Some("flotilla-b")));
    assert_eq!(find(&report, "Leader").severity, Severity::Ok);
    assert!(find(&report, "Leader").summary.contains("generation 4"));
    let report = diagnose(&replica(false, Some("flotilla-a")));
    assert!(find(&report, "Leader").summary.contains("flotilla-a leads"));
    assert_eq!(severity(&replica(false, None), "Leader"), Severity::Warning);
    // One control plane on SQLite: nothing to say.
    let sqlite = diagnose(&healthy());
    assert!(
        sqlite
            .sections
            .iter()
            .flat_map(|s| &s.checks)
            .all(|c| c.name != "Leader")
    );
}

#[test]
fn status_names_are_pinned() {
    crate::enum_names::assert_names(
        &[
            (Status::Healthy, "healthy"),
            (Status::Warning, "warning"),
            (Status::Unhealthy, "unhealthy"),
            (Status::Critical, "critical"),
        ],
        Status::as_str,
        crate::enum_names::parse_with_serde,
    );
}
