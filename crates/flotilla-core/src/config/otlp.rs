//! `[telemetry.otlp]`: where the control plane sends its task traces (OpenTelemetry, OTLP over
//! HTTP). Absent: no exporter is installed and spans cost nothing. Only the shape of the endpoint
//! is checked here (the core does no I/O); the server builds the exporter at start-up.

use super::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[telemetry.otlp]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSection {
    /// Base URL of the OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318` (an OpenTelemetry
    /// collector, Jaeger or Tempo); spans are posted to `{endpoint}/v1/traces`. A URL that
    /// already ends in `/v1/traces` is used as it is.
    pub endpoint: String,
    /// `http/protobuf` (the default) or `http/json`.
    pub protocol: String,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// Extra HTTP headers on every export (e.g. a tenant id or an authorization header of the
    /// receiver). Their values are never logged.
    pub headers: BTreeMap<String, String>,
    /// Deadline of one export request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for OtlpSection {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: "http/protobuf".to_owned(),
            service_name: "flotilla".to_owned(),
            headers: BTreeMap::new(),
            timeout_ms: 10_000,
        }
    }
}

/// How spans are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `application/x-protobuf`.
    HttpProtobuf,
    /// `application/json` (OTLP's JSON mapping).
    HttpJson,
}

/// Validated `[telemetry.otlp]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub traces_url: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Otlp {
    /// Header values may be credentials of the receiver: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("traces_url", &self.traces_url)
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub(super) fn validate(raw: Option<&OtlpSection>) -> Result<Option<Otlp>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let endpoint = raw.endpoint.trim().trim_end_matches('/');
    let has_host = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !has_host {
        return Err(invalid(
            "telemetry.otlp.endpoint",
            format!("`{endpoint}` is not an http:// or https:// URL such as http://127.0.0.1:4318"),
        ));
    }
    let traces_url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    };
    let protocol = match raw.protocol.as_str() {
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        "http/json" => OtlpProtocol::HttpJson,
        "grpc" => {
            return Err(invalid(
                "telemetry.otlp.protocol",
                "`grpc` is not supported; use `http/protobuf` (collectors, Jaeger and Tempo \
                 accept it on port 4318)",
            ));
        }
        other => {
            return Err(invalid(
                "telemetry.otlp.protocol",
                format!("`{other}` is not `http/protobuf` or `http/json`"),
            ));
        }
    };
    if raw.service_name.trim().is_empty() {
        return Err(invalid("telemetry.otlp.service_name", "must not be empty"));
    }
    if let Some(name) = raw
        .headers
        .keys()
        .find(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(invalid(
            "telemetry.otlp.headers",
            format!("`{name}` is not a header name (letters, digits and `-`)"),
        ));
    }
    if raw.timeout_ms == 0 {
        return Err(invalid(
            "telemetry.otlp.timeout_ms",
            "must be greater than 0",
        ));
    }
    Ok(Some(Otlp {
        traces_url,
        protocol,
        service_name: raw.service_name.clone(),
        headers: raw.headers.clone(),
        timeout: Duration::from_millis(raw.timeout_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(endpoint: &str) -> OtlpSection {
        OtlpSection {
            endpoint: endpoint.to_owned(),
            ..OtlpSection::default()
        }
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        for endpoint in [
            "http://127.0.0.1:4318",
            "http://127.0.0.1:4318/",
            "http://127.0.0.1:4318/v1/traces",
        ] {
            let otlp = validate(Some(&section(endpoint))).ok().flatten();
            assert_eq!(
                otlp.map(|o| o.traces_url).as_deref(),
                Some("http://127.0.0.1:4318/v1/traces")
            );
        }
        assert_eq!(validate(None).ok(), Some(None));
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (raw, key) in [
            (section(""), "telemetry.otlp.endpoint"),
            (section("127.0.0.1:4318"), "telemetry.otlp.endpoint"),
            (
                OtlpSection {
                    protocol: "grpc".to_owned(),
                    ..section("http://x:4318")
                },
                "telemetry.otlp.protocol",
            ),
            (
                OtlpSection {
                    timeout_ms: 0,
                    ..section("http://x:4318")
                },
                "telemetry.otlp.timeout_ms",
            ),
        ] {
            let result = validate(Some(&raw));
            assert!(
                matches!(&result, Err(ConfigError::Invalid { key: k, .. }) if k == key),
                "{raw:?}: {result:?}"
            );
        }
    }

    #[test]
    fn header_values_stay_out_of_debug() {
        let mut raw = section("http://x:4318");
        raw.headers
            .insert("authorization".to_owned(), "Bearer s3cret".to_owned());
        let otlp = validate(Some(&raw)).ok().flatten();
        let shown = format!("{otlp:?}");
        assert!(shown.contains("authorization") && !shown.contains("s3cret"));
    }
}
