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
