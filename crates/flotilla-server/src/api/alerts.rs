//! `/v1/alerts`: pending and firing alerts, and their history (every transition and failed
//! notification, from the fleet events).

use crate::alerts::AlertList;
use crate::api::error::ApiError;
use crate::api::extract::{JsonBody, QueryParams, parse_id};
use crate::api::routes::{Routes, permit};
use crate::app::AppState;
use crate::audit::AuditEvent;
use crate::auth::Caller;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_core::alert::Dimension;
use flotilla_core::auth::Permission;
use flotilla_core::event::EventKind;
use flotilla_core::wire::{ErrorBody, EventList, NewSilence, Silence, SilenceList};
use flotilla_store::EventFilter;
use serde::Deserialize;
use utoipa_axum::routes;

pub(super) fn routes() -> Routes {
    Routes::new()
        .routes(permit(Permission::ReadAlerts, "read alerts", routes!(list)))
        .routes(permit(
            Permission::ReadAlerts,
            "read alerts",
            routes!(history),
        ))
        .routes(permit(
            Permission::SilenceAlerts,
            "silence alerts",
            routes!(create_silence),
        ))
        .routes(permit(
            Permission::ReadAlerts,
            "read alerts",
            routes!(list_silences),
        ))
        .routes(permit(
            Permission::SilenceAlerts,
            "silence alerts",
            routes!(delete_silence),
        ))
}

/// Mutes an alert's actions (notifications, scale-up, emergency mode, rate limits) for a while;
/// its transitions are still recorded. A silence names the rule and, optionally, one value of
/// the rule's dimension (an agent type, a model or a tenant). Silences are stored: they hold
/// across restarts and on every control plane.
#[utoipa::path(post, path = "/v1/alerts/silences", tag = "alerts", request_body = NewSilence,
    responses((status = 201, body = Silence), (status = 400, body = ErrorBody),
        (status = 403, description = "A tenant may silence only its own alerts of rules by tenant that merely notify", body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_silence(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(mut body): JsonBody<NewSilence>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    if !(1..=30 * 24 * 3600).contains(&body.duration_s) {
        return Err(ApiError::invalid_field(
            "duration_s",
            "`duration_s` must be between 1 and 2592000 (30 days)",
        ));
    }
    if body.comment.len() > 1000 || body.comment.contains('\0') {
        return Err(ApiError::invalid_field(
            "comment",
            "`comment` must be at most 1000 characters, without U+0000",
        ));
    }
    let rules = &state.config.alerting.rules;
    let Some(rule) = rules.iter().find(|r| r.name == body.rule) else {
        let names: Vec<_> = rules.iter().map(|r| r.name.as_str()).collect();
        return Err(ApiError::Unprocessable {
            code: "unknown_rule",
            message: format!(
                "no alert rule `{}`; the rules are: {}",
                body.rule,
                names.join(", ")
            ),
            field: Some("rule".to_owned()),
        });
    };
    // A silence names at most one value, of the dimension the rule is evaluated by.
    let named: Vec<Dimension> = [
        (Dimension::AgentType, body.agent_type.is_some()),
        (Dimension::Model, body.model.is_some()),
        (Dimension::Tenant, body.tenant.is_some()),
    ]
    .into_iter()
    .filter_map(|(d, set)| set.then_some(d))
    .collect();
    if let Some(&first) = named.first()
        && (first != rule.by || named.len() > 1)
    {
        let what = match rule.by {
            Dimension::Total => "no value (leave out agent_type, model and tenant)".to_owned(),
            by => format!("only `{}`, or nothing for all its alerts", by.as_str()),
        };
        return Err(ApiError::Unprocessable {
            code: "silence_scope",
            message: format!(
                "rule `{}` is evaluated by {}: a silence of it may name {what}",
                rule.name,
                rule.by.as_str()
            ),
            field: Some(first.as_str().to_owned()),
        });
    }
    // A tenant's silence of a rule by tenant is of its own alerts unless it says otherwise.
    if !is_platform(&caller) && rule.by == Dimension::Tenant && body.tenant.is_none() {
        body.tenant = Some(caller.tenant_id);
    }
    may_silence(&caller, rule, body.tenant)?;
    let now = state.clock.now();
    let silence = Silence {
        id: uuid::Uuid::now_v7(),
        rule: body.rule,
        agent_type: body.agent_type,
        model: body.model,
        tenant: body.tenant,
        until: now + chrono::Duration::seconds(i64::try_from(body.duration_s).unwrap_or(0)),
        comment: body.comment,
        created_by: caller.key_id.clone(),
    };
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "alert.silence",
            format!("silence {} of {}", silence.id, silence.rule),
        ))
        .await?;
    let body = serde_json::to_string(&silence)
        .map_err(|e| ApiError::Internal(format!("cannot encode the silence: {e}")))?;
    state
        .store
        .put_silence(silence.id, silence.until, &body)
        .await?;
    state.alerts.silence(silence.clone());
    Ok((StatusCode::CREATED, Json(silence)))
}

/// Active silences.
#[utoipa::path(get, path = "/v1/alerts/silences", tag = "alerts", responses((status = 200, body = SilenceList)), security(("bearer" = [])))]
pub(crate) async fn list_silences(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SilenceList>, ApiError> {
    let mut silences = crate::alerts::stored_silences(&state.store, state.clock.now()).await?;
    silences.retain(|s| visible(&caller, s));
    Ok(Json(SilenceList { silences }))
}

/// Admins act for the platform: they may silence any alert.
fn is_platform(caller: &Caller) -> bool {
    caller.role == flotilla_core::auth::Role::Admin && caller.task.is_none()
}

/// Whether `caller` may silence `rule`'s alert for `tenant` (or end such a silence): the
/// platform any; a tenant per `flotilla_core::alert::tenant_may_silence`.
fn may_silence(
    caller: &Caller,
    rule: &flotilla_core::alert::AlertRule,
    tenant: Option<flotilla_core::id::TenantId>,
) -> Result<(), ApiError> {
    if is_platform(caller) {
        return Ok(());
    }
    flotilla_core::alert::tenant_may_silence(rule, tenant, caller.tenant_id)
        .map_err(ApiError::Forbidden)
}

/// A tenant sees the silences of its own alerts and those that name no tenant; the platform
/// sees all.
fn visible(caller: &Caller, silence: &Silence) -> bool {
    is_platform(caller) || silence.tenant.is_none_or(|t| t == caller.tenant_id)
}

/// Ends a silence.
#[utoipa::path(delete, path = "/v1/alerts/silences/{id}", tag = "alerts", params(("id" = uuid::Uuid, Path)),
    responses((status = 200, description = "The silence that ended", body = Silence),
        (status = 403, description = "A tenant may end only silences it may make", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn delete_silence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Silence>, ApiError> {
    let id: uuid::Uuid = parse_id(&id, "silence")?;
    let not_found = || ApiError::NotFound(format!("no silence {id}"));
    // A tenant ends only silences it could have made; another tenant's are not even named.
    let found = crate::alerts::stored_silences(&state.store, state.clock.now())
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(not_found)?;
    if !visible(&caller, &found) {
        return Err(not_found());
    }
    if let Some(rule) = state
        .config
        .alerting
        .rules
        .iter()
        .find(|r| r.name == found.rule)
    {
        may_silence(&caller, rule, found.tenant)?;
    } else if !is_platform(&caller) {
        return Err(ApiError::Forbidden(format!(
            "rule `{}` is no longer configured: only admins may end its silence",
            found.rule
        )));
    }
    let body = state
        .store
        .delete_silence(id)
        .await?
        .ok_or_else(not_found)?;
    state.alerts.unsilence(id);
    let ended: Silence = serde_json::from_str(&body)
        .map_err(|e| ApiError::Internal(format!("the stored silence is unreadable: {e}")))?;
    state
        .audit
        .record(AuditEvent::by(
            &caller,
            "alert.unsilence",
            format!("silence {id} of {}", ended.rule),
        ))
        .await?;
    Ok(Json(ended))
}

/// Pending and firing alerts, firing first, with their values and since when. A tenant's keys
/// see the fleet's alerts that name no tenant and their own tenant's; token figures summed
/// over tenants (by model or in total) are the platform's alone.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", responses((status = 200, body = AlertList)), security(("bearer" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AlertList>, ApiError> {
    // The engine runs on the leader; the others answer with what it last published.
    let mut alerts: Vec<flotilla_core::wire::ActiveAlert> = if state.leadership.is_leader() {
        state.alerts.active(&state.config.alerting.rules)
    } else {
        match state.store.get_board(crate::alerts::BOARD_ACTIVE).await? {
            Some((body, _)) => serde_json::from_str(&body).map_err(|e| {
                ApiError::Internal(format!("the published alerts are unreadable: {e}"))
            })?,
            None => Vec::new(),
        }
    };
    if let Some(reader) = caller.reader() {
        alerts.retain(|a| {
            let owner = flotilla_core::event::alert_owner(a.signal, a.by, a.tenant);
            flotilla_core::event::visible_to(owner, reader)
        });
    }
    Ok(Json(AlertList { alerts }))
}

/// Query of `GET /v1/alerts/history`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HistoryQuery {
    /// Entries recorded after this id, oldest first; without it, the latest `limit`.
    pub after: Option<i64>,
    /// At most this many, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Every alert transition (pending, firing, resolved, cleared) and failed notification, as
/// `GET /v1/alerts` scopes them; failed notifications are the platform's alone.
#[utoipa::path(get, path = "/v1/alerts/history", tag = "alerts", params(HistoryQuery),
    responses((status = 200, body = EventList)), security(("bearer" = [])))]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<EventList>, ApiError> {
    let filter = EventFilter {
        kind: Some(EventKind::Alert),
        readable_by: caller.reader(),
        after: query.after,
        ..EventFilter::default()
    };
    super::events::page(&state, filter, query.limit).await
}
