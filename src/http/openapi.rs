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
        .merge(super::notifications::routes())
        .merge(super::webhooks::routes())
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

/// Request bodies as documentation (and as input shapes for schemathesis). The handlers
/// read bodies as JSON objects and check every field themselves, so that an unknown field
/// is a 422 naming it; these types are never deserialized.
#[allow(dead_code)]
pub mod bodies {
    use std::collections::HashMap;

    use serde_json::Value;
    use utoipa::ToSchema;

    /// The writable fields of a patient (SPEC 3); `version` only when changing one.
    #[derive(ToSchema)]
    pub struct PatientIn {
        given_name: Option<String>,
        family_name: Option<String>,
        gender: Option<String>,
        unhcr_number: Option<String>,
        middle_names: Option<String>,
        date_of_birth: Option<String>,
        estimated_birth_year: Option<i64>,
        place_of_birth: Option<String>,
        refugee_status: Option<String>,
        origin_country: Option<String>,
        current_camp: Option<String>,
        camp_section: Option<String>,
        phone_number: Option<String>,
        email: Option<String>,
        primary_language: Option<String>,
        languages_spoken: Option<Vec<String>>,
        blood_type: Option<String>,
        allergies: Option<Vec<String>>,
        chronic_conditions: Option<Vec<String>>,
        emergency_contact_name: Option<String>,
        emergency_contact_phone: Option<String>,
        verification_status: Option<String>,
        version: Option<i64>,
    }

    /// Notification preferences: channels per event type, and the phone number.
    #[derive(ToSchema)]
    pub struct PreferencesIn {
        preferences: Option<HashMap<String, Vec<String>>>,
        phone_number: Option<String>,
    }

    /// A recurring schedule: `operation` holds `type` (export, update or delete) and that
    /// type's options flat.
    #[derive(ToSchema)]
    pub struct ScheduleIn {
        name: String,
        cron: String,
        timezone: Option<String>,
        operation: HashMap<String, Value>,
        enabled: Option<bool>,
        missed: Option<String>,
    }

    /// A webhook: where to, and which events.
    #[derive(ToSchema)]
    pub struct WebhookIn {
        url: String,
        events: Vec<String>,
        description: Option<String>,
        enabled: Option<bool>,
    }

    /// The filters of SPEC 3.
    #[derive(ToSchema)]
    pub struct Filters {
        gender: Option<String>,
        refugee_status: Option<String>,
        origin_country: Option<String>,
        current_camp: Option<String>,
        camp_section: Option<String>,
        verification_status: Option<String>,
        born_after: Option<String>,
        born_before: Option<String>,
        updated_since: Option<String>,
        unhcr_numbers: Option<Vec<String>>,
        patient_ids: Option<Vec<String>>,
    }

    /// An export (SPEC 4.2) with the options every scheduling request has.
    #[derive(ToSchema)]
    pub struct ExportIn {
        format: Option<String>,
        fields: Option<Vec<String>>,
        filters: Option<Filters>,
        include_deleted: Option<bool>,
        scheduled_at: Option<String>,
        timezone: Option<String>,
        email_notification: Option<bool>,
        depends_on: Option<Vec<String>>,
        dry_run: Option<bool>,
    }

    /// An update (SPEC 4.2): `patient_ids` or `filters`, and `changes`.
    #[derive(ToSchema)]
    pub struct UpdateIn {
        patient_ids: Option<Vec<String>>,
        filters: Option<Filters>,
        changes: Option<HashMap<String, Value>>,
        field: Option<String>,
        value: Option<Value>,
        create_backup: Option<bool>,
        confirm: Option<bool>,
        scheduled_at: Option<String>,
        timezone: Option<String>,
        email_notification: Option<bool>,
        depends_on: Option<Vec<String>>,
        dry_run: Option<bool>,
    }

    /// A delete (SPEC 4.2): `patient_ids` or `filters`, and `confirm: true`.
    #[derive(ToSchema)]
    pub struct DeleteIn {
        patient_ids: Option<Vec<String>>,
        filters: Option<Filters>,
        confirm: Option<bool>,
        scheduled_at: Option<String>,
        timezone: Option<String>,
        email_notification: Option<bool>,
        depends_on: Option<Vec<String>>,
        dry_run: Option<bool>,
    }

    /// An import in its JSON form (the multipart form has the same options as text parts
    /// and the file as the part `file`).
    #[derive(ToSchema)]
    pub struct ImportIn {
        csv_data: Option<String>,
        file_name: Option<String>,
        field_mapping: Option<HashMap<String, String>>,
        mode: Option<String>,
        on_error: Option<String>,
        date_format: Option<String>,
        scheduled_at: Option<String>,
        timezone: Option<String>,
        email_notification: Option<bool>,
        depends_on: Option<Vec<String>>,
        dry_run: Option<bool>,
    }

    /// The options of a rollback.
    #[derive(ToSchema)]
    pub struct RollbackIn {
        force: Option<bool>,
    }
}
