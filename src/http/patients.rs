//! `/api/v2/patients`: list, get, create, update (optimistic, with `version`), soft delete.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{AppError, AppResult};
use super::extract::{perm, JsonBody, PathId, Require};
use super::{page_from_query, AppState};
use crate::domain::filters::PatientFilters;
use crate::domain::patient::{Patient, PatientFields};
use crate::domain::{new_id, now, FieldError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

/// The query of the patients list: paging and the filters of SPEC 3 (lists
/// comma-separated). Documentation only: the handler reads the query as a map, so that
/// an unknown name is a 422.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct PatientListQuery {
    limit: Option<i64>,
    cursor: Option<uuid::Uuid>,
    gender: Option<String>,
    refugee_status: Option<String>,
    origin_country: Option<String>,
    current_camp: Option<String>,
    camp_section: Option<String>,
    verification_status: Option<String>,
    born_after: Option<chrono::NaiveDate>,
    born_before: Option<chrono::NaiveDate>,
    updated_since: Option<String>,
    unhcr_numbers: Option<String>,
    patient_ids: Option<String>,
}

/// Lists the organization's patients, filtered and paged.
#[utoipa::path(get, path = "/api/v2/patients", tag = "patients", params(PatientListQuery), security(("bearer" = ["patients.read"])), responses((status = 200, description = "OK"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn list(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::PatientsRead>,
    Query(query): Query<BTreeMap<String, String>>,
) -> AppResult<Json<Value>> {
    let known = |k: &str| {
        k == "limit" || k == "cursor" || crate::domain::filters::FILTER_NAMES.contains(&k)
    };
    if let Some(unknown) = query.keys().find(|k| !known(k)) {
        return Err(AppError::invalid_field(
            unknown,
            "unknown_filter",
            "is not a filter or paging parameter",
        ));
    }
    let filters = PatientFilters::from_query(&query).map_err(AppError::invalid)?;
    let page = page_from_query(&query)?;
    let patients = state
        .store
        .list_patients(caller.org(), &filters, &page)
        .await?;
    let next_cursor = (patients.len() as i64 == page.limit)
        .then(|| patients.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(json!({
        "patients": patients.iter().map(Patient::to_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

/// One patient.
#[utoipa::path(get, path = "/api/v2/patients/{id}", tag = "patients", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["patients.read"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn read(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::PatientsRead>,
    PathId(id): PathId,
) -> AppResult<Json<Value>> {
    let patient = state
        .store
        .get_patient(caller.org(), id)
        .await?
        .ok_or(AppError::NotFound("patient"))?;
    Ok(Json(patient.to_json()))
}

/// Rejects a UNHCR number another live patient of the organization already has.
async fn check_unhcr_unique(
    state: &AppState,
    org: uuid::Uuid,
    fields: &PatientFields,
    except: Option<uuid::Uuid>,
) -> AppResult<()> {
    if let Some(number) = &fields.unhcr_number {
        if state.store.unhcr_number_taken(org, number, except).await? {
            return Err(AppError::invalid_field(
                "unhcr_number",
                "duplicate",
                "is already used by another patient of your organization",
            ));
        }
    }
    Ok(())
}

fn changed_field_names(changes: &Map<String, Value>) -> Vec<&str> {
    changes
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "version")
        .collect()
}

/// Creates a patient.
#[utoipa::path(post, path = "/api/v2/patients", tag = "patients", request_body(content = crate::http::openapi::bodies::PatientIn, content_type = "application/json"), security(("bearer" = ["patients.write"])), responses((status = 201, description = "Created"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn create(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::PatientsWrite>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> AppResult<Response> {
    let today = chrono::Utc::now().date_naive();
    let mut fields = PatientFields::new_draft();
    let mut errors = fields.apply_json(&body, today);
    // A required field that was sent but invalid is already reported; add only the
    // ones that were not sent at all.
    let missing: Vec<FieldError> = fields
        .check_complete()
        .into_iter()
        .filter(|e| !errors.iter().any(|x| x.field == e.field))
        .collect();
    errors.extend(missing);
    if !errors.is_empty() {
        return Err(AppError::invalid(errors));
    }
    check_unhcr_unique(&state, caller.org(), &fields, None).await?;
    let at = now();
    let patient = Patient {
        id: new_id(),
        organization_id: caller.org(),
        fields,
        created_at: at,
        updated_at: at,
        version: 1,
        deleted_at: None,
        import_operation_id: None,
    };
    let audit = caller.actor().entry(
        "patient.create",
        "patient",
        Some(patient.id.to_string()),
        "success",
        json!({"fields": changed_field_names(&body)}),
    );
    state.store.insert_patient(&patient, audit).await?;
    let location = format!("/api/v2/patients/{}", patient.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(patient.to_json()),
    )
        .into_response())
}

/// Changes a patient; `version` is the version read.
#[utoipa::path(put, path = "/api/v2/patients/{id}", tag = "patients", params(("id" = Uuid, Path, description = "The id")), request_body(content = crate::http::openapi::bodies::PatientIn, content_type = "application/json"), security(("bearer" = ["patients.write"])), responses((status = 200, description = "OK"), (status = 404, description = "No such id in your organization"), (status = 409, description = "The version moved on"), (status = 422, description = "Invalid input"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn update(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::PatientsWrite>,
    PathId(id): PathId,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> AppResult<Json<Value>> {
    let version = match body.remove("version") {
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or_default(),
        Some(_) => return Err(AppError::invalid_field("version", "invalid_type", "must be a whole number")),
        None => {
            return Err(AppError::invalid_field(
                "version",
                "required",
                "is required: send the version you read, so that a concurrent change is not overwritten",
            ))
        }
    };
    let current = state
        .store
        .get_patient(caller.org(), id)
        .await?
        .ok_or(AppError::NotFound("patient"))?;
    if current.version != version {
        return Err(AppError::from(crate::store::StoreError::VersionConflict));
    }
    let mut fields = current.fields.clone();
    let errors = fields.apply_json(&body, chrono::Utc::now().date_naive());
    if !errors.is_empty() {
        return Err(AppError::invalid(errors));
    }
    check_unhcr_unique(&state, caller.org(), &fields, Some(id)).await?;
    let audit = caller.actor().entry(
        "patient.update",
        "patient",
        Some(id.to_string()),
        "success",
        json!({"fields": changed_field_names(&body), "from_version": version}),
    );
    let updated = state
        .store
        .update_patient(caller.org(), id, version, &fields, now(), audit)
        .await?;
    Ok(Json(updated.to_json()))
}

/// Deletes a patient (soft).
#[utoipa::path(delete, path = "/api/v2/patients/{id}", tag = "patients", params(("id" = Uuid, Path, description = "The id")), security(("bearer" = ["patients.write"])), responses((status = 204, description = "Deleted"), (status = 404, description = "No such id in your organization"), (status = 401, description = "No valid token"), (status = 403, description = "The role lacks the permission")))]
async fn remove(
    State(state): State<AppState>,
    Require(caller, ..): Require<perm::PatientsWrite>,
    PathId(id): PathId,
) -> AppResult<StatusCode> {
    let audit = caller.actor().entry(
        "patient.delete",
        "patient",
        Some(id.to_string()),
        "success",
        json!({"soft": true}),
    );
    state
        .store
        .soft_delete_patient(caller.org(), id, now(), audit)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => AppError::NotFound("patient"),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}
