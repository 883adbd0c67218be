use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn no_configuration_at_all_gives_working_defaults() {
    let config = load(None, &[], &[]);
    let config = config.as_ref().map_err(ToString::to_string);
    assert_eq!(
        config.map(|c| c.listen.to_string()),
        Ok("127.0.0.1:8080".to_owned())
    );
    let config = load(None, &[], &[]).ok();
    assert_eq!(
        config.map(|c| c.database),
        Some(Database::Sqlite(
            PathBuf::from("flotilla-data").join("flotilla.db")
        ))
    );
}

#[test]
fn unknown_keys_in_the_file_are_errors_naming_the_key_and_line() {
    let text = "[server]\nlisten = \"127.0.0.1:9000\"\nlisten_port = 9\n";
    let err = load(Some(("flotilla.toml", text)), &[], &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("listen_port"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    let err = load(Some(("f.toml", "[sever]\n")), &[], &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("sever"), "{err}");
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let text = "[server]\nlisten = \"127.0.0.1:9000\"\n[scheduler]\nlease_ttl_ms = 5000\n";
    let vars = env(&[
        ("FLOTILLA_SERVER__LISTEN", "127.0.0.1:9001"),
        ("FLOTILLA_SCHEDULER__LEASE_TTL_MS", "7000"),
        ("FLOTILLA_BOOTSTRAP_ADMIN_KEY", "not a setting"),
        ("HOME", "/root"),
    ]);
    let config = load(Some(("f", text)), &vars, &[]).ok();
    assert_eq!(config.as_ref().map(|c| c.listen.port()), Some(9001));
    assert_eq!(
        config.map(|c| c.scheduler.lease_ttl),
        Some(Duration::from_millis(7000))
    );
    let flags = vec![(
        "server.listen".to_owned(),
        toml::Value::String("127.0.0.1:9002".to_owned()),
    )];
    assert_eq!(
        load(Some(("f", text)), &vars, &flags)
            .ok()
            .map(|c| c.listen.port()),
        Some(9002)
    );
}

#[test]
fn unknown_environment_settings_name_the_variable() {
    let err = load(None, &env(&[("FLOTILLA_SERVER__LISTN", "x")]), &[]).err();
    assert!(
        matches!(err, Some(ConfigError::Env { ref var, .. }) if var == "FLOTILLA_SERVER__LISTN"),
        "{err:?}"
    );
    let err = load(
        None,
        &env(&[("FLOTILLA_SCHEDULER__LEASE_TTL_MS", "soon")]),
        &[],
    )
    .err();
    assert!(matches!(err, Some(ConfigError::Env { .. })), "{err:?}");
}

#[test]
fn out_of_range_values_name_the_setting() {
    let cases = [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[scheduler]\nlease_ttl_ms = 10\n", "scheduler.lease_ttl_ms"),
        (
            "[scheduler]\ndefault_max_attempts = 0\n",
            "scheduler.default_max_attempts",
        ),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[[pools]]\nname = \"Bad Name\"\n", "pools[0].name"),
        (
            "[[pools]]\nname = \"a\"\n[[pools]]\nname = \"a\"\n",
            "pools[1].name",
        ),
    ];
    for (text, key) in cases {
        let err = load(Some(("f", text)), &[], &[]).err();
        assert!(
            matches!(err, Some(ConfigError::Invalid { key: ref k, .. }) if k == key),
            "{text}: {err:?}"
        );
    }
}

#[test]
fn database_urls_select_the_store() {
    let pg = load(
        Some(("f", "[database]\nurl = \"postgres://127.0.0.1/test\"\n")),
        &[],
        &[],
    )
    .ok();
    assert_eq!(
        pg.map(|c| c.database),
        Some(Database::Postgres("postgres://127.0.0.1/test".to_owned()))
    );
    let lite = load(
        Some(("f", "[database]\nurl = \"sqlite:///tmp/x.db\"\n")),
        &[],
        &[],
    )
    .ok();
    assert_eq!(
        lite.map(|c| c.database),
        Some(Database::Sqlite(PathBuf::from("/tmp/x.db")))
    );
}

#[test]
fn a_named_pool_gets_working_fleet_defaults() {
    let text = "[[pools]]\nname = \"code_generator\"\n";
    let config = load(Some(("f", text)), &[], &[]).map_err(|e| e.to_string());
    let pool = config.map(|c| c.pools[0].clone());
    let pool = pool.as_ref();
    assert_eq!(pool.map(|p| p.provisioner.name()), Ok("local"));
    assert_eq!(
        pool.map(|p| p.strategy.kind),
        Ok(crate::balance::StrategyKind::P2cEwma)
    );
    assert_eq!(
        pool.map(|p| (p.min_instances, p.max_instances, p.capacity)),
        Ok((1, 10, 4))
    );
    assert!(pool.is_ok_and(|p| p.autoscale.is_some() && p.outlier.is_some()));
    let implicit = Pool::implicit("other");
    assert_eq!(implicit.provisioner, Provisioner::Static);
}

#[test]
fn pool_settings_are_checked_with_their_path() {
    let cases = [
        ("strategy = \"random\"", "pools[0].strategy"),
        ("provisioner = \"docker\"", "pools[0].provisioner"),
        (
            "min_instances = 5\nmax_instances = 2",
            "pools[0].min_instances",
        ),
        ("provisioner = \"kubernetes\"", "pools[0].kubernetes.image"),
        (
            "provisioner = \"static\"\ncommand = [\"x\"]",
            "pools[0].command",
        ),
        (
            "[pools.autoscale]\ntarget_utilisation = 0.9",
            "pools[0].autoscale.target_utilisation",
        ),
        (
            "[pools.outlier]\nmax_ejected_share = 2.0",
            "pools[0].outlier.max_ejected_share",
        ),
    ];
    for (extra, key) in cases {
        let text = format!("[[pools]]\nname = \"p\"\n{extra}\n");
        let err = load(Some(("f", &text)), &[], &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn alert_rules_extend_the_classic_defaults_and_are_checked() {
    let text = "[[alerts]]\nname = \"backlog\"\nsignal = \"queue_length\"\nagent_type = \"code_generator\"\ncomparison = \">\"\nthreshold = 100\nfor = \"2m\"\nseverity = \"warning\"\nactions = [\"notify\", \"scale_up\"]\n\n[[alerting.webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nformat = \"slack\"\n";
    let config = load(Some(("f", text)), &[], &[]).map_err(|e| e.to_string());
    let alerting = config.map(|c| c.alerting);
    let names: Vec<String> = alerting
        .as_ref()
        .map(|a| a.rules.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        names,
        [
            "success_rate_low",
            "success_rate_critical",
            "response_time_high",
            "hourly_tokens_high",
            "backlog"
        ]
    );
    assert_eq!(
        alerting.as_ref().map(|a| a.rules[4].for_),
        Ok(Duration::from_secs(120))
    );
    let cases = [
        ("signal = \"vibes\"", "signal"),
        ("for = \"soon\"", "alerts[0].for"),
        ("comparison = \"~\"", "comparison"),
    ];
    for (bad, key) in cases {
        let base = "name = \"x\"\nsignal = \"queue_length\"\ncomparison = \">\"\nthreshold = 1\nfor = \"1m\"\nseverity = \"info\"\n";
        let field = bad.split(' ').next().unwrap_or_default();
        let body: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!("[[alerts]]\n{body}{bad}\n");
        let err = load(Some(("f", &text)), &[], &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn alert_rules_are_split_by_a_dimension_and_may_filter_one_value() {
    use crate::alert::{Dimension, Signal};
    let tenant = "0190f1a2-0000-7000-8000-000000000001";
    let rule = |name: &str, extra: &str| {
        format!(
            "[[alerts]]\nname = \"{name}\"\ncomparison = \">\"\nthreshold = 1\nfor = \"0s\"\nseverity = \"warning\"\n{extra}\n"
        )
    };
    let text = [
        rule("model_errors", "signal = \"error_rate\"\nby = \"model\""),
        rule("gpt_slow", "signal = \"p95_response_time\"\nmodel = \"gpt-4o\""),
        rule(
            "acme_tokens",
            &format!("signal = \"hourly_tokens\"\ntenant = \"{tenant}\"\nactions = [\"notify\", \"rate_limit\"]"),
        ),
        rule(
            "budget",
            "signal = \"budget_utilisation\"\nactions = [\"rate_limit\"]",
        ),
    ]
    .concat();
    let rules = load(Some(("f", &text)), &[], &[])
        .map(|c| c.alerting.rules)
        .map_err(|e| e.to_string());
    let scopes: Vec<_> = rules
        .iter()
        .flatten()
        .skip(4)
        .map(|r| (r.name.as_str(), r.signal, r.by, r.only.as_deref()))
        .collect();
    assert_eq!(
        scopes,
        [
            ("model_errors", Signal::ErrorRate, Dimension::Model, None),
            (
                "gpt_slow",
                Signal::P95ResponseTime,
                Dimension::Model,
                Some("gpt-4o")
            ),
            (
                "acme_tokens",
                Signal::HourlyTokens,
                Dimension::Tenant,
                Some(tenant)
            ),
            ("budget", Signal::BudgetUtilisation, Dimension::Tenant, None),
        ],
        "{rules:?}"
    );
    let cases = [
        (
            "signal = \"queue_length\"\nby = \"model\"",
            "alerts[0].by",
            "allowed: `agent_type`",
        ),
        (
            "signal = \"success_rate\"\nby = \"agent_type\"\nmodel = \"m\"",
            "alerts[0].by",
            "contradicts",
        ),
        (
            "signal = \"hourly_tokens\"\nmodel = \"m\"\nagent_type = \"t\"",
            "alerts[0].model",
            "one value only",
        ),
        (
            "signal = \"hourly_tokens\"\ntenant = \"acme\"",
            "alerts[0].tenant",
            "not a tenant id",
        ),
        (
            "signal = \"hourly_tokens\"\nby = \"model\"\nactions = [\"rate_limit\"]",
            "alerts[0].actions",
            "`rate_limit` limits the alert's tenant",
        ),
        (
            "signal = \"success_rate\"\nby = \"model\"\nactions = [\"scale_up\"]",
            "alerts[0].actions",
            "needs `by = \"agent_type\"`",
        ),
        (
            "signal = \"queue_length\"\nby = \"everything\"",
            "by",
            "unknown variant",
        ),
    ];
    for (extra, key, why) in cases {
        let err = load(Some(("f", &rule("x", extra))), &[], &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key) && err.contains(why), "{extra}: {err}");
        if key.starts_with("alerts[0]") {
            assert!(err.contains("rule `x`"), "{extra}: {err}");
        }
    }
}
