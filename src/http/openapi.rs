//! The OpenAPI document of the API, generated from the handlers' annotations: every
//! route of the API is registered through `utoipa_axum`, so a route cannot exist without
//! its entry in the document (and the permission it needs, as the bearer scheme's scope).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Haven API",
        version = "2",
        description = "Bulk operations on patient records. Every endpoint but the probes, the login and this document needs `Authorization: Bearer TOKEN`; the scope of its security requirement is the permission it needs (SPEC 2). Errors answer `{\"error\":{\"code\",\"message\",\"details\"}}`."
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route of the API with its documentation.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::health::routes())
        .merge(super::auth::routes())
        .merge(super::patients::routes())
        .merge(super::audit::routes())
        .merge(super::bulk::routes())
        .merge(super::operations::routes())
        .routes(routes!(openapi_json))
}

/// The document as `GET /api/v2/openapi.json` serves it (pretty JSON, stable order).
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        api_routes()
            .into_openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}

/// This document.
#[utoipa::path(get, path = "/api/v2/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document")))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
