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
    ),
    modifiers(&BearerAuth),
    tags((name = "tasks"), (name = "agents"), (name = "probes"))
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

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
