//! Where a route is routed, it declares the permission it needs (docs/design.md §8).
//!
//! [`permit`] wraps the handlers of one `routes!(…)`: the permission is checked by a layer in
//! front of them (after [`crate::auth::require_key`] has named the caller), and it is written into
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
use utoipa::openapi::path::{Operation, PathItem};
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
        for operation in operations_mut(item) {
            operation.security = Some(vec![SecurityRequirement::new(
                BEARER,
                [permission.as_str()],
            )]);
        }
    }
    let check = move |caller: Caller, request: Request, next: Next| async move {
        match caller.require(permission, action) {
            Ok(()) => next.run(request).await,
            Err(refused) => E::from(refused).into_response(),
        }
    };
    let method_router = method_router.route_layer(middleware::from_fn(check));
    (schemas, paths, method_router)
}

/// The operations of one path, whatever their methods.
pub(crate) fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
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
