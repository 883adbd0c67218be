//! `/openapi.json`, generated from the handlers' annotations and the wire types.

use crate::app::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla API", description = "Control plane for AI agents: tasks, agents and the agent contract."),
    paths(
        super::probes::health,
        super::probes::ready,
        super::tasks::submit,
        super::tasks::get_task,
        super::tasks::list,
        super::tasks::cancel,
        super::agents::register,
        super::agents::heartbeat,
        super::agents::deregister,
        super::agents::list,
        super::agents::get_agent,
        super::pools::list,
        super::pools::get_pool,
        super::events::list,
        super::alerts::list,
        super::alerts::history,
        super::alerts::create_silence,
        super::alerts::list_silences,
        super::alerts::delete_silence,
        super::tenants::create,
        super::tenants::list,
        super::tenants::get_tenant,
        super::tenants::update,
        super::keys::create,
        super::keys::list,
        super::keys::get_key,
        super::keys::revoke,
        super::audit::list,
        super::secrets::list,
        super::secrets::read,
        super::secrets::write,
        super::secrets::rotate,
        super::secrets::remove,
        super::secrets::rewrap,
        super::system::system,
        super::budgets::list,
        super::budgets::set,
        super::budgets::remove,
        super::usage::list,
        super::cost::recommend_model,
        super::cost::analysis,
    ),
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "tasks"), (name = "agents"), (name = "fleet"), (name = "alerts"), (name = "access"), (name = "secrets"), (name = "cost"), (name = "probes"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds the error answers every operation can give (so clients and contract tests know them):
/// 400 and 413/415 where a request carries input, 401 on every `/v1` route, 503 everywhere.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder, path::HttpMethod};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description));
                };
                if path.starts_with("/v1") {
                    add(
                        "400",
                        "Malformed request: the body names the field at fault",
                    );
                    add("401", "Missing, invalid, expired or revoked API key");
                    add("403", "The key's role may not do this");
                    add(
                        "429",
                        "Rate limit of the key, its tenant or the source exceeded; see Retry-After",
                    );
                }
                if matches!(
                    method,
                    HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch
                ) {
                    add("413", "Request body over the configured limit");
                    add("415", "Request body is not JSON");
                }
                add(
                    "503",
                    "Unavailable: the store cannot be reached or the server is shutting down",
                );
            }
        }
        openapi
            .components
            .get_or_insert_with(Default::default)
            .schemas
            .entry("ErrorBody".to_owned())
            .or_insert_with(<flotilla_core::wire::ErrorBody as utoipa::PartialSchema>::schema);
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
