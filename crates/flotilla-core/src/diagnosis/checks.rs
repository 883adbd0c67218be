//! The checks of each section. Each returns findings; none reads anything but its facts.

use super::*;
use crate::agent::AgentStatus;
use crate::alert::Severity as AlertSeverity;

fn check(name: impl Into<String>, severity: Severity, summary: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        severity,
        summary: summary.into(),
        recommendation: None,
    }
}

fn advise(mut c: Check, recommendation: impl Into<String>) -> Check {
    c.recommendation = Some(recommendation.into());
    c
}

fn unknown(name: &str, why: &str) -> Check {
    check(name, Severity::Unknown, format!("not measured: {why}"))
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Instances of a pool that take work.
fn healthy(pool: &PoolView) -> u32 {
    ["idle", "busy"]
        .iter()
        .filter_map(|s| pool.instances.get(*s))
        .sum()
}

/// Tasks waiting in a pool: the store's count of this request when `/v1/system` answered, else
/// the autoscaler's last sample.
fn queued(facts: &Facts, pool: &PoolView) -> u64 {
    facts
        .system
        .measured()
        .and_then(|s| s.queued.get(&pool.name).copied())
        .unwrap_or(pool.queued)
}

/// Several control planes on PostgreSQL: the one that answered, and who leads.
fn leadership(replica: &crate::wire::ReplicaInfo) -> Check {
    match (&replica.leader_owner, replica.leader) {
        (_, true) => check(
            "Leader",
            Severity::Ok,
            format!(
                "{} (this replica) leads, generation {}",
                replica.owner,
                replica.generation.unwrap_or_default()
            ),
        ),
        (Some(leader), false) => check(
            "Leader",
            Severity::Ok,
            format!("{leader} leads; {} answered", replica.owner),
        ),
        (None, false) => advise(
            check(
                "Leader",
                Severity::Warning,
                format!("{} knows no leader yet", replica.owner),
            ),
            "No control plane holds the leader lease: the autoscaler, the alert engine and the              re-queueing of expired leases are not running. Check the replicas' logs and that              they reach the database; a new replica takes the lease within [database]              leader_lease_ms.",
        ),
    }
}

pub(super) fn connectivity(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &facts.health {
        ProbeResult::Ok => check(
            "API",
            Severity::Ok,
            format!("{} answers /health", facts.url),
        ),
        ProbeResult::Failed(why) => advise(
            check("API", Severity::Critical, format!("/health failed: {why}")),
            "Read the control plane's logs; restart it if it does not recover.",
        ),
        ProbeResult::Unreachable(why) => advise(
            check(
                "API",
                Severity::Critical,
                format!("nothing answers at {}: {why}", facts.url),
            ),
            "Check that `flotilla serve` runs and listens on this address (and that --url is \
             right, including http/https).",
        ),
    });
    out.push(match &facts.ready {
        ProbeResult::Ok => check(
            "Store",
            Severity::Ok,
            "/ready: store reachable, migrations applied",
        ),
        ProbeResult::Failed(why) => advise(
            check("Store", Severity::Critical, format!("/ready failed: {why}")),
            "Check the database: is it up, reachable from the control plane, and are the \
             migrations applied (they run at start)?",
        ),
        ProbeResult::Unreachable(why) => unknown("Store", why),
    });
    if let Some(system) = facts.system.measured()
        && system.store == "postgres"
        && let Some(replica) = &system.replica
    {
        out.push(leadership(replica));
    }
    out.push(match &facts.key {
        KeyCheck::Accepted => {
            let role = facts
                .system
                .measured()
                .map(|s| format!("valid, role {:?}", s.caller.role).to_lowercase())
                .unwrap_or_else(|| "valid".to_owned());
            check("Authentication", Severity::Ok, format!("the key is {role}"))
        }
        KeyCheck::Missing => advise(
            check("Authentication", Severity::Critical, "no API key was given"),
            "Pass --key or set FLOTILLA_KEY (an admin key gives the fullest diagnosis).",
        ),
        KeyCheck::Rejected(why) => advise(
            check(
                "Authentication",
                Severity::Critical,
                format!("the key was refused: {why}"),
            ),
            "Use a key that is valid, not expired and not revoked (`flotilla keys list` with \
             an admin key); the checks below could not run without one.",
        ),
        KeyCheck::Untested(why) => unknown("Authentication", why),
    });
    if let Some(role) = facts.system.measured().map(|s| s.caller.role)
        && role != crate::auth::Role::Admin
    {
        out.push(advise(
            check(
                "Key role",
                Severity::Unknown,
                format!("{role:?} key: some checks need an admin key").to_lowercase(),
            ),
            "Run the doctor with an admin key for the audit-log and key checks.",
        ));
    }
    out.push(match &facts.prometheus {
        None => check(
            "Prometheus",
            Severity::Unknown,
            "not checked (no --prometheus given)",
        ),
        Some(Gathered::Unavailable(why)) => advise(
            check(
                "Prometheus",
                Severity::Warning,
                format!("unreachable or failing: {why}"),
            ),
            "Check the Prometheus URL and that the server runs; dashboards and alert rules \
             depend on it.",
        ),
        Some(Gathered::Measured(p)) if p.queue_series == 0 => advise(
            check(
                "Prometheus",
                Severity::Warning,
                format!(
                    "reachable ({} targets up, {} down) but holds no ai_agent_queue_length series",
                    p.targets_up, p.targets_down
                ),
            ),
            "Add the control plane's /metrics to Prometheus' scrape configuration (with a \
             bearer key unless telemetry.metrics_public is set).",
        ),
        Some(Gathered::Measured(p)) if p.targets_down > 0 => advise(
            check(
                "Prometheus",
                Severity::Warning,
                format!(
                    "scrapes Flotilla, but {} of {} targets are down",
                    p.targets_down,
                    p.targets_up + p.targets_down
                ),
            ),
            "Look at Prometheus' /targets page for the scrape errors.",
        ),
        Some(Gathered::Measured(p)) => check(
            "Prometheus",
            Severity::Ok,
            format!(
                "scrapes Flotilla ({} targets up, {} queue series)",
                p.targets_up, p.queue_series
            ),
        ),
    });
    out.push(match &facts.providers {
        Gathered::Unavailable(why) => check("Model providers", Severity::Unknown, why.clone()),
        Gathered::Measured(providers) if providers.is_empty() => {
            check("Model providers", Severity::Unknown, "none configured")
        }
        Gathered::Measured(providers) => {
            let down: Vec<&str> = providers
                .iter()
                .filter(|p| !p.reachable)
                .map(|p| p.name.as_str())
                .collect();
            if down.is_empty() {
                check(
                    "Model providers",
                    Severity::Ok,
                    format!("{} reachable", providers.len()),
                )
            } else {
                advise(
                    check(
                        "Model providers",
                        Severity::Warning,
                        format!("unreachable: {}", down.join(", ")),
                    ),
                    "Check the providers' status pages and credentials; the gateway falls back \
                     where routes allow it.",
                )
            }
        }
    });
    out
}

pub(super) fn performance(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    // Prefer Prometheus' 5-minute windows (recent behaviour) over counters since the start.
    let recent = facts
        .prometheus
        .as_ref()
        .and_then(|p| p.measured())
        .filter(|p| p.queue_series > 0);
    let (p95, p95_source) = match (recent.and_then(|p| p.task_p95_s), facts.metrics.measured()) {
        (Some(p95), _) => (Some(p95), "last 5 min, Prometheus".to_owned()),
        (None, Some(m)) => (
            m.task_p95_s,
            format!("{} tasks since the server started", m.tasks_finished),
        ),
        (None, None) => (None, String::new()),
    };
    out.push(match (p95, &facts.metrics) {
        (Some(p95), _) => {
            let summary =
                format!("p95 task latency {p95:.2} s ({p95_source}); target < {P95_TARGET_S} s");
            if p95 >= P95_UNHEALTHY_S {
                advise(
                    check("Task latency", Severity::Error, summary),
                    "Find the slow pool (`flotilla pools list`, ai_agent_response_time_seconds); \
                     add instances or capacity, or look for queueing behind a saturated pool.",
                )
            } else if p95 >= P95_TARGET_S {
                advise(
                    check("Task latency", Severity::Warning, summary),
                    "Latency misses the target: check queue backlogs and agents' response times \
                     per pool; scale the slow pool.",
                )
            } else {
                check("Task latency", Severity::Ok, summary)
            }
        }
        (None, Gathered::Unavailable(why)) => unknown("Task latency", why),
        (None, Gathered::Measured(_)) => check(
            "Task latency",
            Severity::Unknown,
            "no task has finished yet: nothing to measure",
        ),
    });
    let (rate, rate_source) = match (recent.and_then(|p| p.error_rate), facts.metrics.measured()) {
        (Some(r), _) => (Some(r), "last 5 min, Prometheus".to_owned()),
        (None, Some(m)) => (
            m.error_rate(),
            format!(
                "{} of {} agent calls since the server started",
                m.execute_errors, m.execute_calls
            ),
        ),
        (None, None) => (None, String::new()),
    };
    out.push(match (rate, &facts.metrics) {
        (Some(rate), _) => {
            let summary = format!(
                "error rate {} ({rate_source}); target < {}",
                percent(rate),
                percent(ERROR_RATE_TARGET)
            );
            if rate >= ERROR_RATE_UNHEALTHY {
                advise(
                    check("Error rate", Severity::Error, summary),
                    "Agents are failing: read `flotilla events` and the agents' logs; failing \
                     instances are ejected, add healthy capacity meanwhile.",
                )
            } else if rate >= ERROR_RATE_TARGET {
                advise(
                    check("Error rate", Severity::Warning, summary),
                    "Find the failing pool (ai_agent_requests_total by agent_type and status) \
                     and its errors in `flotilla events`.",
                )
            } else {
                check("Error rate", Severity::Ok, summary)
            }
        }
        (None, Gathered::Unavailable(why)) => unknown("Error rate", why),
        (None, Gathered::Measured(_)) => check(
            "Error rate",
            Severity::Unknown,
            "no agent call yet: nothing to measure",
        ),
    });
    match &facts.pools {
        Gathered::Unavailable(why) => out.push(unknown("Pools", why)),
        Gathered::Measured(pools) if pools.is_empty() => out.push(advise(
            check(
                "Pools",
                Severity::Warning,
                "no pool is configured or registered",
            ),
            "Configure a [[pools]] entry or start agents; no task can run.",
        )),
        Gathered::Measured(pools) => {
            for pool in pools {
                out.push(pool_check(facts, pool));
            }
        }
    }
    out.push(match &facts.alerts {
        Gathered::Unavailable(why) => unknown("Alerts", why),
        Gathered::Measured(alerts) => {
            let firing: Vec<&ActiveAlert> = alerts.iter().filter(|a| a.state == "firing").collect();
            let pending = alerts.len() - firing.len();
            let worst = firing.iter().map(|a| a.severity).max();
            let names = firing
                .iter()
                .map(|a| match &a.agent_type {
                    Some(t) => format!("{} ({t})", a.rule),
                    None => a.rule.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            match worst {
                None => check(
                    "Alerts",
                    Severity::Ok,
                    format!("none firing ({pending} pending)"),
                ),
                Some(AlertSeverity::Critical) => advise(
                    check("Alerts", Severity::Error, format!("firing: {names}")),
                    "Follow each alert's runbook in docs/operations.md; `flotilla alerts list` \
                     shows values and since when.",
                ),
                Some(AlertSeverity::Warning) => advise(
                    check("Alerts", Severity::Warning, format!("firing: {names}")),
                    "Look at `flotilla alerts list` and the runbook in docs/operations.md.",
                ),
                Some(AlertSeverity::Info) => {
                    check("Alerts", Severity::Ok, format!("firing (info): {names}"))
                }
            }
        }
    });
    out
}

fn pool_check(facts: &Facts, pool: &PoolView) -> Check {
    let name = format!("Pool {}", pool.name);
    let healthy = healthy(pool);
    let queued = queued(facts, pool);
    let failed = pool.instances.get("failed").copied().unwrap_or(0)
        + pool.instances.get("ejected").copied().unwrap_or(0);
    let starting = pool.instances.get("starting").copied().unwrap_or(0);
    let summary = format!(
        "{healthy} healthy instance(s), {failed} failed or ejected, {starting} starting; \
         {queued} queued; load {}/{}",
        pool.load, pool.capacity
    );
    if healthy == 0 && queued > 0 {
        return advise(
            check(&name, Severity::Error, summary),
            format!(
                "Pool {} has queued work and no healthy instance: start agents of type `{}` \
                 (or fix the failing ones; `flotilla agents list`), or raise its \
                 min_instances.",
                pool.name, pool.name
            ),
        );
    }
    if healthy == 0 {
        return advise(
            check(&name, Severity::Warning, summary),
            format!(
                "Pool {} has no healthy instance: tasks submitted to it will wait. Start agents \
                 or remove the pool.",
                pool.name
            ),
        );
    }
    if failed > 0 {
        return advise(
            check(&name, Severity::Warning, summary),
            format!(
                "Pool {} has failed or ejected instances: read `flotilla events --type {}` and \
                 the agents' logs; replace instances that do not recover.",
                pool.name, pool.name
            ),
        );
    }
    if queued > u64::from(pool.capacity) {
        return advise(
            check(&name, Severity::Warning, summary),
            format!(
                "Pool {} has more work waiting than its capacity: add instances (or enable \
                 autoscaling with a higher max_instances).",
                pool.name
            ),
        );
    }
    check(&name, Severity::Ok, summary)
}

pub(super) fn resources(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    let system = facts.system.measured();
    let cpus = system.and_then(|s| s.process.cpus);
    out.push(match (&facts.cpu, cpus) {
        (Gathered::Unavailable(why), _) => unknown("Control-plane CPU", why),
        (Gathered::Measured(_), None) => unknown("Control-plane CPU", "CPU count unknown"),
        (Gathered::Measured(w), Some(cpus)) if w.elapsed_s > 0.0 && cpus > 0 => {
            let used = ((w.second_cpu_seconds - w.first_cpu_seconds) / w.elapsed_s).max(0.0);
            let share = used / f64::from(cpus);
            let summary = format!(
                "{} of {cpus} CPU(s) over {:.1} s; target < {}",
                percent(share),
                w.elapsed_s,
                percent(CPU_TARGET)
            );
            if share >= CPU_TARGET {
                advise(
                    check("Control-plane CPU", Severity::Warning, summary),
                    "Give the control plane more CPU or run another replica (PostgreSQL store).",
                )
            } else {
                check("Control-plane CPU", Severity::Ok, summary)
            }
        }
        (Gathered::Measured(_), Some(_)) => {
            unknown("Control-plane CPU", "no time passed between the samples")
        }
    });
    let process = system.map(|s| &s.process);
    out.push(
        match (
            process.and_then(|p| p.resident_memory_bytes),
            process.and_then(|p| p.memory_limit_bytes),
        ) {
            (Some(rss), Some(limit)) if limit > 0 => {
                let share = rss as f64 / limit as f64;
                let summary = format!(
                    "{} resident of {} ({}); target < {}",
                    bytes(rss),
                    bytes(limit),
                    percent(share),
                    percent(MEMORY_TARGET)
                );
                let advice = "Raise the memory limit or find the growth (flotilla_* metrics, \
                              heap profile); restart only after capturing it.";
                if share >= MEMORY_UNHEALTHY {
                    advise(
                        check("Control-plane memory", Severity::Error, summary),
                        advice,
                    )
                } else if share >= MEMORY_TARGET {
                    advise(
                        check("Control-plane memory", Severity::Warning, summary),
                        advice,
                    )
                } else {
                    check("Control-plane memory", Severity::Ok, summary)
                }
            }
            _ => unknown(
                "Control-plane memory",
                match &facts.system {
                    Gathered::Unavailable(why) => why.as_str(),
                    Gathered::Measured(_) => "the server could not read its memory use",
                },
            ),
        },
    );
    if let (Some(open), Some(max)) = (
        process.and_then(|p| p.open_fds),
        process.and_then(|p| p.max_fds),
    ) && max > 0
    {
        let share = open as f64 / max as f64;
        let summary = format!("{open} of {max} open");
        out.push(if share >= FDS_WARNING {
            advise(
                check("File descriptors", Severity::Warning, summary),
                "Raise the open-files limit (LimitNOFILE, ulimit -n) or look for leaked \
                 connections.",
            )
        } else {
            check("File descriptors", Severity::Ok, summary)
        });
    }
    out.push(
        match (&facts.system, system.and_then(|s| s.data_dir_disk.as_ref())) {
            (Gathered::Unavailable(why), _) => unknown("Data directory disk", why),
            (Gathered::Measured(_), None) => unknown(
                "Data directory disk",
                "the server could not read its file system",
            ),
            (Gathered::Measured(_), Some(d)) if d.total_bytes > 0 => {
                let free = d.available_bytes as f64 / d.total_bytes as f64;
                let summary = format!(
                    "{} free of {} ({} free)",
                    bytes(d.available_bytes),
                    bytes(d.total_bytes),
                    percent(free)
                );
                let advice = "Free space or grow the volume of the data directory (SQLite \
                          database, vault master key, local agents' logs).";
                if free < facts.min_disk_free / 2.0 {
                    advise(
                        check("Data directory disk", Severity::Error, summary),
                        advice,
                    )
                } else if free < facts.min_disk_free {
                    advise(
                        check("Data directory disk", Severity::Warning, summary),
                        advice,
                    )
                } else {
                    check("Data directory disk", Severity::Ok, summary)
                }
            }
            (Gathered::Measured(_), Some(_)) => {
                unknown("Data directory disk", "size reported as 0")
            }
        },
    );
    out.push(match (&facts.agents, &facts.pools) {
        (Gathered::Unavailable(why), _) | (_, Gathered::Unavailable(why)) => {
            unknown("Agent load", why)
        }
        (Gathered::Measured(agents), Gathered::Measured(pools)) => {
            let load: u32 = pools.iter().map(|p| p.load).sum();
            let capacity: u32 = pools.iter().map(|p| p.capacity).sum();
            let dead = agents
                .iter()
                .filter(|a| matches!(a.status, AgentStatus::Failed | AgentStatus::Ejected))
                .count();
            let busy: Vec<&str> = pools
                .iter()
                .filter(|p| {
                    p.capacity > 0 && f64::from(p.load) / f64::from(p.capacity) >= LOAD_WARNING
                })
                .map(|p| p.name.as_str())
                .collect();
            let summary = format!(
                "{} instance(s), {dead} failed or ejected; load {load} of capacity {capacity}",
                agents.len()
            );
            if busy.is_empty() {
                check("Agent load", Severity::Ok, summary)
            } else {
                advise(
                    check(
                        "Agent load",
                        Severity::Warning,
                        format!(
                            "{summary}; at or above {} of capacity: {}",
                            percent(LOAD_WARNING),
                            busy.join(", ")
                        ),
                    ),
                    "Add instances to the busy pools or enable autoscaling before they queue.",
                )
            }
        }
    });
    if facts.kube {
        out.push(kube_check(facts));
    }
    out
}

fn kube_check(facts: &Facts) -> Check {
    let Gathered::Measured(pools) = &facts.pools else {
        return unknown("Kubernetes pods", "the pools could not be read");
    };
    let kube: Vec<&PoolView> = pools
        .iter()
        .filter(|p| p.provisioner == "kubernetes")
        .collect();
    if kube.is_empty() {
        return check(
            "Kubernetes pods",
            Severity::Unknown,
            "no pool uses the kubernetes provisioner",
        );
    }
    let short: Vec<String> = kube
        .iter()
        .filter(|p| healthy(p) < p.desired)
        .map(|p| format!("{} ({} of {} ready)", p.name, healthy(p), p.desired))
        .collect();
    let summary = kube
        .iter()
        .map(|p| format!("{}: {} of {} desired ready", p.name, healthy(p), p.desired))
        .collect::<Vec<_>>()
        .join("; ");
    if short.is_empty() {
        check("Kubernetes pods", Severity::Ok, summary)
    } else {
        advise(
            check("Kubernetes pods", Severity::Warning, summary),
            format!(
                "Pods are missing in {}: `kubectl describe deployment` and `kubectl get events` \
                 in the pool's namespace show why (image pull, quota, scheduling).",
                short.join(", ")
            ),
        )
    }
}

pub(super) fn security(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    let system = facts.system.measured();
    let https = facts.url.starts_with("https://");
    let tls_on = system.map_or(https, |s| s.tls);
    let loopback = system
        .and_then(|s| s.listen.parse::<std::net::SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback());
    out.push(match (tls_on, loopback) {
        (true, _) => check("TLS", Severity::Ok, "the API listener serves TLS"),
        (false, Some(addr)) => check(
            "TLS",
            Severity::Ok,
            format!("TLS is off, but the API listens on loopback only ({addr}): traffic stays on this host"),
        ),
        (false, None) => advise(
            check(
                "TLS",
                Severity::Warning,
                "TLS is off: keys and task data cross the network in clear text",
            ),
            "Configure [tls] cert_file and key_file (docs/security.md), or terminate TLS in \
             front of the control plane and point clients at https://.",
        ),
    });
    match &facts.keys {
        Gathered::Unavailable(why) => out.push(unknown("API keys", why)),
        Gathered::Measured(keys) => {
            let active: Vec<&KeyView> = keys
                .iter()
                .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > facts.now))
                .collect();
            let forever: Vec<&str> = active
                .iter()
                .filter(|k| k.expires_at.is_none())
                .map(|k| k.name.as_str())
                .collect();
            out.push(if forever.is_empty() {
                check(
                    "Key expiry",
                    Severity::Ok,
                    format!("{} active key(s), all with an expiry", active.len()),
                )
            } else {
                advise(
                    check(
                        "Key expiry",
                        Severity::Warning,
                        format!(
                            "{} of {} active key(s) never expire: {}",
                            forever.len(),
                            active.len(),
                            forever.join(", ")
                        ),
                    ),
                    "Replace long-lived keys with ones that expire (`flotilla keys create \
                     --expires-in …`) and revoke the old ones.",
                )
            });
            let bootstrap = active.iter().any(|k| k.name == BOOTSTRAP_KEY_NAME);
            out.push(if bootstrap {
                advise(
                    check(
                        "Bootstrap key",
                        Severity::Warning,
                        "the bootstrap admin key is still active",
                    ),
                    "Create a named admin key for each operator, then revoke the bootstrap one \
                     (`flotilla keys revoke <id>`).",
                )
            } else {
                check(
                    "Bootstrap key",
                    Severity::Ok,
                    "the bootstrap admin key is revoked",
                )
            });
        }
    }
    out.push(match &facts.secrets {
        Gathered::Unavailable(why) => unknown("Secret rotation", why),
        Gathered::Measured(secrets) => {
            let age = |s: &SecretInfo| (facts.now - s.updated_at).num_days();
            let stale: Vec<String> = secrets
                .iter()
                .filter(|s| age(s) >= SECRET_UNHEALTHY_DAYS)
                .map(|s| format!("{} ({} d)", s.path, age(s)))
                .collect();
            let old: Vec<String> = secrets
                .iter()
                .filter(|s| (SECRET_WARNING_DAYS..SECRET_UNHEALTHY_DAYS).contains(&age(s)))
                .map(|s| format!("{} ({} d)", s.path, age(s)))
                .collect();
            let advice = "Rotate them (`flotilla secrets rotate <path>`) and roll the agents \
                          that use them.";
            if !stale.is_empty() {
                advise(
                    check(
                        "Secret rotation",
                        Severity::Error,
                        format!(
                            "not rotated for {SECRET_UNHEALTHY_DAYS}+ days: {}{}",
                            stale.join(", "),
                            if old.is_empty() {
                                String::new()
                            } else {
                                format!("; {SECRET_WARNING_DAYS}+ days: {}", old.join(", "))
                            }
                        ),
                    ),
                    advice,
                )
            } else if !old.is_empty() {
                advise(
                    check(
                        "Secret rotation",
                        Severity::Warning,
                        format!(
                            "not rotated for {SECRET_WARNING_DAYS}+ days: {}",
                            old.join(", ")
                        ),
                    ),
                    advice,
                )
            } else {
                check(
                    "Secret rotation",
                    Severity::Ok,
                    format!(
                        "{} secret(s), none older than {SECRET_WARNING_DAYS} days",
                        secrets.len()
                    ),
                )
            }
        }
    });
    let open = match &facts.metrics_open {
        Gathered::Measured(open) => Some(*open),
        Gathered::Unavailable(_) => system.map(|s| s.metrics_public),
    };
    out.push(match (open, &facts.metrics_open) {
        (Some(true), _) => advise(
            check(
                "Metrics access",
                Severity::Warning,
                "/metrics answers without a key (telemetry.metrics_public = true)",
            ),
            "Set telemetry.metrics_public = false and give Prometheus a viewer key as its \
             bearer token, unless /metrics is reachable only from a trusted network.",
        ),
        (Some(false), _) => check("Metrics access", Severity::Ok, "/metrics needs a key"),
        (None, Gathered::Unavailable(why)) => unknown("Metrics access", why),
        (None, Gathered::Measured(_)) => unknown("Metrics access", "no answer"),
    });
    out.push(match &facts.auth_failures {
        Gathered::Unavailable(why) => unknown("Authentication failures", why),
        Gathered::Measured(f) => {
            let count = if f.capped {
                format!("at least {}", f.recent)
            } else {
                f.recent.to_string()
            };
            let summary = format!("{count} in the last {AUTH_FAILURE_WINDOW_HOURS} h (audit log)");
            if f.recent >= AUTH_FAILURES_WARNING {
                advise(
                    check("Authentication failures", Severity::Warning, summary),
                    "Look at the sources and keys (`flotilla audit list --action auth.failure`): \
                     a misconfigured client, or someone guessing keys. Revoke exposed keys.",
                )
            } else {
                check("Authentication failures", Severity::Ok, summary)
            }
        }
    });
    out
}

pub(super) fn costs(facts: &Facts) -> Vec<Check> {
    match &facts.budgets {
        Gathered::Unavailable(why) => vec![check("Budgets", Severity::Unknown, why.clone())],
        Gathered::Measured(budgets) if budgets.is_empty() => vec![check(
            "Budgets",
            Severity::Unknown,
            "no budget is configured",
        )],
        Gathered::Measured(budgets) => budgets
            .iter()
            .map(|b| {
                let name = format!("Budget {}", b.name);
                let projection = b
                    .projected
                    .map(|p| format!(", projected {} by the period's end", percent(p)))
                    .unwrap_or_default();
                let summary = format!("{} used{projection}", percent(b.utilisation));
                if b.utilisation >= 1.0 {
                    advise(
                        check(&name, Severity::Error, summary),
                        "The budget is spent: raise it or expect blocked or downgraded calls.",
                    )
                } else if b.utilisation >= BUDGET_WARNING || b.projected.is_some_and(|p| p >= 1.0) {
                    advise(
                        check(&name, Severity::Warning, summary),
                        "Spending will reach the limit: review the biggest spenders or raise the \
                         budget.",
                    )
                } else {
                    check(&name, Severity::Ok, summary)
                }
            })
            .collect(),
    }
}
