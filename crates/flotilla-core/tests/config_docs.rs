//! The configuration reference (docs/configuration.md) must name every setting the schema has,
//! so the two cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flotilla_core::config::{ConfigFile, ModelSection, PoolSection, ProviderSection};

fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            keys(v, &path, out);
            out.push(path);
        }
    }
}

#[test]
fn every_setting_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    let mut config = ConfigFile::default();
    config.pools.push(PoolSection {
        name: "x".into(),
        timeout_ms: Some(1),
        max_attempts: Some(1),
        ..PoolSection::default()
    });
    config
        .providers
        .insert("openai".into(), ProviderSection::default());
    config.models.push(ModelSection {
        name: "m".into(),
        upstream: Some("u".into()),
        fallback_on: Some(vec![500]),
        downgrade_to: Some("d".into()),
        default_max_output_tokens: Some(1),
        ..ModelSection::default()
    });
    let value = toml::Value::try_from(&config).unwrap();
    let mut all = Vec::new();
    keys(&value, "", &mut all);
    let pool = toml::Value::try_from(&config.pools[0]).unwrap();
    keys(&pool, "pools", &mut all);
    for key in all {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            doc.contains(&format!("{leaf} ="))
                || doc.contains(&format!("[{key}]"))
                || doc.contains(&format!("[[{leaf}]]")),
            "docs/configuration.md does not document `{key}`"
        );
    }
}
