//! `/openapi.json`, generated from the handlers' annotations and the wire types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's frame: its info, security scheme and tags. The paths come from the router
/// itself ([`super::router`]), so that every route is described.
#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla API", description = "Control plane for AI agents: tasks, agents and the agent contract."),
    modifiers(&BearerAuth, &CommonErrors),
    tags((name = "tasks"), (name = "agents"), (name = "fleet"), (name = "alerts"), (name = "access"), (name = "secrets"), (name = "cost"), (name = "models"), (name = "probes"))
)]
pub(crate) struct ApiDoc;

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
            for (method, operation) in super::routes::operations_mut(item) {
                // The model gateway documents its own errors, in OpenAI's shape.
                if operation
                    .tags
                    .as_ref()
                    .is_some_and(|t| t.iter().any(|t| t == "models"))
                {
                    continue;
                }
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

/// `spec` completed with the errors every operation can give and the names of the configured
/// alert rules (the only ones a silence may name); `GET /openapi.json` serves it.
pub(super) fn complete<'a>(
    mut spec: utoipa::openapi::OpenApi,
    rules: impl IntoIterator<Item = &'a str>,
) -> utoipa::openapi::OpenApi {
    BearerAuth.modify(&mut spec);
    CommonErrors.modify(&mut spec);
    name_rules(&mut spec, rules);
    spec
}

/// States the configured rule names as the enumeration of `NewSilence.rule`: they come from the
/// configuration, so the wire type cannot carry them.
fn name_rules<'a>(spec: &mut utoipa::openapi::OpenApi, rules: impl IntoIterator<Item = &'a str>) {
    use utoipa::openapi::{RefOr, schema::Schema};
    let Some(RefOr::T(Schema::Object(silence))) = spec
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("NewSilence"))
    else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(rule))) = silence.properties.get_mut("rule") {
        rule.enum_values = Some(rules.into_iter().map(serde_json::Value::from).collect());
    }
}
