//! Where a route is routed, it declares the permission it needs (docs/design.md §8).
//!
//! [`permit`] wraps the handlers of one `routes!(…)`: the permission is checked by a layer in
//! front of them (after [`super::authn::require_key`] has named the caller), and it is written into
//! `/openapi.json` as the scope of the operation's `bearer` requirement. The router and the spec
//! come from the same [`utoipa_axum::router::OpenApiRouter`], so every route is in the spec, and
//! the access-matrix test (`tests/access.rs`) enumerates the routes and their permissions from it.

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::auth::Caller;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use flotilla_core::auth::Permission;
use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// A router whose routes are also described in the OpenAPI document it carries.
pub(crate) type Routes = OpenApiRouter<AppState>;

/// The name of the security scheme every `/v1` operation requires (a bearer API key).
pub(crate) const BEARER: &str = "bearer";

/// `handlers` (one `routes!(…)`), open only to callers whose role allows `permission`; others
/// get 403 naming `action` (e.g. "submit tasks"), in the [`ApiError`] shape.
pub(crate) fn permit(
    permission: Permission,
    action: &'static str,
    handlers: UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState> {
    permit_as::<ApiError>(permission, action, handlers)
}

/// [`permit`] with refusals in the shape of `E` (the model gateway answers in OpenAI's).
pub(crate) fn permit_as<E>(
    permission: Permission,
    action: &'static str,
    (schemas, mut paths, method_router): UtoipaMethodRouter<AppState>,
) -> UtoipaMethodRouter<AppState>
where
    E: From<ApiError> + IntoResponse + 'static,
{
    for item in paths.paths.values_mut() {
        for (_, operation) in operations_mut(item) {
            operation.security = Some(vec![SecurityRequirement::new(
                BEARER,
                [permission.as_str()],
            )]);
        }
    }
    // The caller is borrowed from the request (put there by `require_key`), not cloned.
    let check = move |request: Request, next: Next| async move {
        let verdict = match request.extensions().get::<Caller>() {
            Some(caller) => caller.require(permission, action).map_err(ApiError::from),
            None => Err(ApiError::Unauthenticated(
                "this route needs an API key".to_owned(),
            )),
        };
        match verdict {
            Ok(()) => next.run(request).await,
            Err(refused) => E::from(refused).into_response(),
        }
    };
    let method_router = method_router.route_layer(middleware::from_fn(check));
    (schemas, paths, method_router)
}

/// The operations of one path with their methods, whatever the methods.
pub(crate) fn operations_mut(
    item: &mut PathItem,
) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, item.get.as_mut()),
        (HttpMethod::Put, item.put.as_mut()),
        (HttpMethod::Post, item.post.as_mut()),
        (HttpMethod::Delete, item.delete.as_mut()),
        (HttpMethod::Options, item.options.as_mut()),
        (HttpMethod::Head, item.head.as_mut()),
        (HttpMethod::Patch, item.patch.as_mut()),
        (HttpMethod::Trace, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

/// Adds `handlers`' description to `routes`' OpenAPI document and hands back their method
/// router, for a route whose axum path differs from the documented one (a catch-all).
pub(crate) fn described(
    mut routes: Routes,
    (schemas, paths, method_router): UtoipaMethodRouter<AppState>,
) -> (Routes, axum::routing::MethodRouter<AppState>) {
    let spec = routes.get_openapi_mut();
    for (path, item) in paths.paths {
        match spec.paths.paths.get_mut(&path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                spec.paths.paths.insert(path, item);
            }
        }
    }
    spec.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    (routes, method_router)
}
