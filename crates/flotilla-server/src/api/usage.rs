//! `/v1/usage`: the model gateway's usage ledger of a tenant, newest first, as JSON pages or as
//! CSV for spreadsheets and billing (docs/design.md §7). Records reach the ledger in batches
//! (`gateway.usage_flush_ms`), so a call shows up here within that long.

use crate::api::error::ApiError;
use crate::api::extract::QueryParams;
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use flotilla_core::Timestamp;
use flotilla_core::auth::Permission;
use flotilla_core::id::TaskId;
use flotilla_core::usage::{UsagePage, UsageRecord};
use flotilla_store::UsageFilter;
use serde::Deserialize;
use std::fmt::Write as _;
use utoipa_axum::routes;

/// Default page size.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
/// Largest page (and CSV export) of one request.
pub(crate) const MAX_LIMIT: u32 = 10_000;
/// The header carrying the next page's cursor of a CSV answer (JSON has it in the body).
pub(crate) const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// The columns of the CSV export, in order.
pub(crate) const CSV_HEADER: &str = "id,created_at,tenant_id,task_id,key_id,agent_type,model,\
requested_model,provider,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost,\
estimated,latency_ms,status";

pub(super) fn routes() -> Routes {
    Routes::new().routes(permit(Permission::ReadKeys, "read usage", routes!(list)))
}

/// Filters and page of `GET /v1/usage`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UsageQuery {
    /// Another tenant's usage (admin keys only).
    #[param(format = Uuid)]
    pub tenant: Option<String>,
    /// Only calls served by this model.
    pub model: Option<String>,
    /// Only calls made for tasks of this agent type.
    pub agent_type: Option<String>,
    /// Only calls made with this task's model-gateway token.
    #[param(format = Uuid)]
    pub task_id: Option<String>,
    /// Only calls at or after this time (RFC 3339, or a date: midnight UTC).
    #[param(schema_with = flotilla_core::wire::schema::time_or_date)]
    pub since: Option<String>,
    /// Only calls before this time (RFC 3339, or a date: midnight UTC).
    #[param(schema_with = flotilla_core::wire::schema::time_or_date)]
    pub until: Option<String>,
    /// The `next` cursor of the previous page: records older than it.
    #[param(format = Uuid)]
    pub before: Option<String>,
    /// At most this many records, 1-10000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// `json` (default) or `csv`.
    #[param(inline)]
    pub format: Option<UsageFormat>,
}

/// How `GET /v1/usage` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UsageFormat {
    /// A [`UsagePage`].
    #[default]
    Json,
    /// `text/csv` with a header row; amounts as exact decimal strings, the next page's cursor in
    /// the `x-next-cursor` header.
    Csv,
}

/// Usage records of the caller's tenant (or `?tenant=` for admin keys), newest first.
#[utoipa::path(get, path = "/v1/usage", tag = "cost", params(UsageQuery),
    responses((status = 200, description = "A page of usage records",
        content((UsagePage = "application/json"), (String = "text/csv")))),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller.scope(query.tenant.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let filter = UsageFilter {
        tenant_id: Some(tenant),
        task_id: query
            .task_id
            .as_deref()
            .map(|t| parse_uuid(t, "task_id").map(TaskId))
            .transpose()?,
        model: query.model,
        agent_type: query.agent_type,
        since: query
            .since
            .as_deref()
            .map(|t| parse_time(t, "since"))
            .transpose()?,
        until: query
            .until
            .as_deref()
            .map(|t| parse_time(t, "until"))
            .transpose()?,
        before: query
            .before
            .as_deref()
            .map(|t| parse_uuid(t, "before"))
            .transpose()?,
        // One more than the page, to know whether there is a next one.
        limit: limit + 1,
    };
    let mut records = state.store.list_usage(&filter).await?;
    let next = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(match query.format.unwrap_or_default() {
        UsageFormat::Json => Json(UsagePage { records, next }).into_response(),
        UsageFormat::Csv => {
            let mut response = (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                to_csv(&records),
            )
                .into_response();
            if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                response.headers_mut().insert(NEXT_CURSOR, next);
            }
            response
        }
    })
}

/// The records as CSV (RFC 4180: CRLF line ends, fields quoted where needed), header first.
/// Amounts are exact decimal strings; an unknown cost is an empty field.
pub(crate) fn to_csv(records: &[UsageRecord]) -> String {
    let mut out = String::with_capacity(64 + records.len() * 200);
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for r in records {
        let fields: [String; 17] = [
            r.id.to_string(),
            r.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            r.tenant_id.to_string(),
            r.task_id.map(|t| t.to_string()).unwrap_or_default(),
            r.key_id.clone(),
            r.agent_type.clone().unwrap_or_default(),
            r.model.clone(),
            r.requested_model.clone().unwrap_or_default(),
            r.provider.clone(),
            r.tokens.input_tokens.to_string(),
            r.tokens.cached_input_tokens.to_string(),
            r.tokens.output_tokens.to_string(),
            r.tokens.reasoning_tokens.to_string(),
            r.cost.map(|c| c.to_string()).unwrap_or_default(),
            r.estimated.to_string(),
            r.latency_ms.to_string(),
            r.status.as_str().to_owned(),
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_field(&mut out, field);
        }
        out.push_str("\r\n");
    }
    out
}

/// One CSV field, quoted when it holds a separator, a quote or a line break.
fn push_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        let _ = write!(out, "\"{}\"", field.replace('"', "\"\""));
    } else {
        out.push_str(field);
    }
}

fn parse_uuid(text: &str, field: &str) -> Result<uuid::Uuid, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid_field(field, format!("`{field}`: `{text}` is not a UUID")))
}

/// An RFC 3339 time, or a date meaning its midnight UTC.
fn parse_time(text: &str, field: &str) -> Result<Timestamp, ApiError> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(ApiError::invalid_field(
        field,
        format!(
            "`{field}`: `{text}` is not a time; use RFC 3339 (2025-03-01T12:00:00Z) or a date (2025-03-01)"
        ),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flotilla_core::id::TenantId;
    use flotilla_core::money::Money;
    use flotilla_core::usage::{TokenUsage, UsageStatus};

    #[test]
    fn csv_has_a_header_exact_amounts_and_quotes_where_needed() {
        let record = UsageRecord {
            id: uuid::Uuid::nil(),
            tenant_id: TenantId::DEFAULT,
            task_id: None,
            key_id: "k".into(),
            agent_type: Some("a,b".into()),
            model: "m\"x".into(),
            requested_model: None,
            provider: "simulated".into(),
            tokens: TokenUsage {
                input_tokens: 10,
                cached_input_tokens: 0,
                output_tokens: 5,
                reasoning_tokens: 0,
            },
            cost: Some(Money::from_pico(1_250_000)),
            estimated: false,
            latency_ms: 3,
            status: UsageStatus::Ok,
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        };
        let csv = to_csv(&[record]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(
            lines[1].contains(",\"a,b\",\"m\"\"x\",,simulated,10,0,5,0,0.00000125,false,3,ok"),
            "{}",
            lines[1]
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2025-03-01", "since").unwrap().to_rfc3339(),
            "2025-03-01T00:00:00+00:00"
        );
        assert!(parse_time("2025-03-01T01:00:00+01:00", "since").is_ok());
        assert!(parse_time("yesterday", "since").is_err());
    }
}
