//! Patient filters (SPEC 3), shared by the patients list, export and bulk targets.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::patient::{DateFormat, PatientFields, RawValue};
use super::FieldError;

/// Which patients a list, export, update or delete applies to. Every condition must
/// hold; no condition at all matches every (non-deleted) patient of the organization.
/// A list filter that is present matches only the patients it names: an empty list
/// matches nobody (and is refused with a 422 when it comes from a request), never
/// everybody.
/// `born_after` and `born_before` are inclusive: `born_after=2000-01-01` includes that day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PatientFilters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refugee_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_camp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camp_section: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub born_after: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub born_before: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhcr_numbers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_ids: Option<Vec<Uuid>>,
}

/// The most values a list filter may hold; larger selections use other filters.
pub const MAX_LIST_FILTER_ITEMS: usize = 10_000;

/// The longest value of a text filter or of one item of a list filter, in characters
/// (the longest patient text field is 200).
pub const MAX_FILTER_TEXT_CHARS: usize = 200;

/// The names accepted as filters.
pub const FILTER_NAMES: [&str; 11] = [
    "gender",
    "refugee_status",
    "origin_country",
    "current_camp",
    "camp_section",
    "verification_status",
    "born_after",
    "born_before",
    "updated_since",
    "unhcr_numbers",
    "patient_ids",
];

impl PatientFilters {
    /// Reads filters from a query string (lists comma-separated). Keys not in
    /// [`FILTER_NAMES`] are left for the caller (paging parameters live there too).
    pub fn from_query(query: &BTreeMap<String, String>) -> Result<Self, Vec<FieldError>> {
        let mut filters = PatientFilters::default();
        let mut errors = Vec::new();
        for (key, value) in query {
            if FILTER_NAMES.contains(&key.as_str()) {
                // List filters are comma-separated text, which `set` splits.
                let raw = Value::String(value.clone());
                if let Err(e) = filters.set(key, &raw) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(filters)
        } else {
            Err(errors)
        }
    }

    /// Reads filters from a JSON object (a bulk request's `filters`); unknown keys are
    /// errors, so a typo never widens an update or delete to every patient.
    pub fn from_json(value: &Value, field_prefix: &str) -> Result<Self, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::new(
                field_prefix,
                "invalid_type",
                "must be an object",
            )]);
        };
        let mut filters = PatientFilters::default();
        let mut errors = Vec::new();
        for (key, raw) in object {
            if !FILTER_NAMES.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    &format!("{field_prefix}.{key}"),
                    "unknown_filter",
                    &format!("is not a filter; filters are {}", FILTER_NAMES.join(", ")),
                ));
                continue;
            }
            if let Err(mut e) = filters.set(key, raw) {
                e.field = format!("{field_prefix}.{key}");
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(filters)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, key: &str, raw: &Value) -> Result<(), FieldError> {
        let checked = |s: &str| -> Result<String, FieldError> {
            let s = s.trim();
            if s.chars().count() > MAX_FILTER_TEXT_CHARS {
                return Err(FieldError::new(
                    key,
                    "too_long",
                    &format!("values must be at most {MAX_FILTER_TEXT_CHARS} characters"),
                ));
            }
            if s.contains('\0') {
                return Err(FieldError::new(
                    key,
                    "invalid_character",
                    "must not contain the NUL character",
                ));
            }
            Ok(s.to_string())
        };
        let text = || -> Result<String, FieldError> {
            raw.as_str()
                .ok_or_else(|| FieldError::new(key, "invalid_type", "must be a string"))
                .and_then(checked)
        };
        // Enumerated and coded filters are checked with the patient field's own rule,
        // so `gender=M` filters as `male` and `gender=robot` is refused.
        let as_field = |field: &str| -> Result<Option<String>, FieldError> {
            let mut probe = PatientFields::new_draft();
            let today = chrono::Utc::now().date_naive();
            let value = text()?;
            probe
                .set(field, RawValue::Text(value), DateFormat::Iso, today)
                .map_err(|mut e| {
                    e.field = key.to_string();
                    e
                })?;
            Ok(probe
                .get_json(field)
                .and_then(|v| v.as_str().map(str::to_string)))
        };
        let date = || -> Result<NaiveDate, FieldError> {
            NaiveDate::parse_from_str(&text()?, "%Y-%m-%d")
                .map_err(|_| FieldError::new(key, "invalid_date", "must be a date YYYY-MM-DD"))
        };
        // A list filter names the patients it selects: an empty one would select
        // nobody, and is refused so that it is never mistaken for "no filter".
        let list = || -> Result<Vec<String>, FieldError> {
            let items: Vec<&str> = match raw {
                Value::String(s) => s.split(',').collect(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str().ok_or_else(|| {
                            FieldError::new(key, "invalid_type", "must be a list of strings")
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(FieldError::new(key, "invalid_type", "must be a list")),
            };
            if items.len() > MAX_LIST_FILTER_ITEMS {
                return Err(FieldError::new(
                    key,
                    "too_many",
                    &format!("at most {MAX_LIST_FILTER_ITEMS} values"),
                ));
            }
            let values: Vec<String> = items
                .into_iter()
                .map(checked)
                .filter(|v| !matches!(v, Ok(s) if s.is_empty()))
                .collect::<Result<_, _>>()?;
            if values.is_empty() {
                return Err(FieldError::new(
                    key,
                    "empty_list",
                    "must name at least one value (an empty list would select no patient)",
                ));
            }
            Ok(values)
        };
        match key {
            "gender" => self.gender = as_field("gender")?,
            "refugee_status" => self.refugee_status = as_field("refugee_status")?,
            "origin_country" => self.origin_country = as_field("origin_country")?,
            "verification_status" => self.verification_status = as_field("verification_status")?,
            "current_camp" => self.current_camp = Some(text()?),
            "camp_section" => self.camp_section = Some(text()?),
            "born_after" => self.born_after = Some(date()?),
            "born_before" => self.born_before = Some(date()?),
            "updated_since" => {
                let t = DateTime::parse_from_rfc3339(&text()?).map_err(|_| {
                    FieldError::new(key, "invalid_timestamp", "must be RFC 3339 with an offset")
                })?;
                self.updated_since = Some(t.with_timezone(&Utc));
            }
            "unhcr_numbers" => self.unhcr_numbers = Some(list()?),
            "patient_ids" => {
                self.patient_ids = Some(
                    list()?
                        .iter()
                        .map(|s| Uuid::parse_str(s))
                        .collect::<Result<_, _>>()
                        .map_err(|_| {
                            FieldError::new(key, "invalid_id", "must be a list of patient ids")
                        })?,
                )
            }
            _ => return Err(FieldError::new(key, "unknown_filter", "is not a filter")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_filters_are_normalised_and_checked() {
        let mut q = BTreeMap::new();
        q.insert("gender".to_string(), "F".to_string());
        q.insert("unhcr_numbers".to_string(), "A, B".to_string());
        q.insert("limit".to_string(), "10".to_string());
        let f = PatientFilters::from_query(&q).expect("valid filters");
        assert_eq!(f.gender.as_deref(), Some("female"));
        assert_eq!(
            f.unhcr_numbers,
            Some(vec!["A".to_string(), "B".to_string()])
        );

        q.insert("born_after".to_string(), "2001-13-45".to_string());
        let errors = PatientFilters::from_query(&q).expect_err("bad date");
        assert_eq!(errors[0].field, "born_after");
    }

    #[test]
    fn unknown_json_filters_are_refused() {
        let errors = PatientFilters::from_json(&serde_json::json!({"camp": "Kakuma"}), "filters")
            .expect_err("typo must not match everyone");
        assert_eq!(errors[0].field, "filters.camp");
    }
}
