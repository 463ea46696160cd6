//! The patient record and its validation rules (SPEC 3).
//!
//! Input arrives in three shapes: JSON bodies of the patients API, CSV cells of an import
//! and `changes` of a bulk update. All three are reduced to [`RawValue`] and pass through
//! the same per-field rules, so a value accepted by one path is accepted by all.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::codes;
use super::FieldError;

/// One patient as stored. List fields are kept in input order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Patient {
    pub id: Uuid,
    pub organization_id: Uuid,
    #[serde(flatten)]
    pub fields: PatientFields,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The bulk import that created this patient, if any (used by import rollback).
    #[serde(skip)]
    pub import_operation_id: Option<Uuid>,
}

/// The demographic and contact fields: everything a user may set or change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct PatientFields {
    pub given_name: String,
    pub family_name: String,
    pub gender: String,
    pub unhcr_number: Option<String>,
    pub middle_names: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    pub estimated_birth_year: Option<i64>,
    pub place_of_birth: Option<String>,
    pub refugee_status: Option<String>,
    pub origin_country: Option<String>,
    pub current_camp: Option<String>,
    pub camp_section: Option<String>,
    pub phone_number: Option<String>,
    pub email: Option<String>,
    pub primary_language: Option<String>,
    pub languages_spoken: Vec<String>,
    pub blood_type: Option<String>,
    pub allergies: Vec<String>,
    pub chronic_conditions: Vec<String>,
    pub emergency_contact_name: Option<String>,
    pub emergency_contact_phone: Option<String>,
    pub verification_status: String,
}

/// One field of [`PatientFields`], borrowed, in the shape it is stored in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Date(Option<NaiveDate>),
    Int(Option<i64>),
    List(&'a [String]),
}

impl FieldRef<'_> {
    pub fn to_json(self) -> Value {
        let text = |t: &str| Value::String(t.to_string());
        match self {
            FieldRef::Text(t) => text(t),
            FieldRef::OptText(t) => t.map(text).unwrap_or(Value::Null),
            FieldRef::Date(d) => d
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .unwrap_or(Value::Null),
            FieldRef::Int(n) => n.map(Value::from).unwrap_or(Value::Null),
            FieldRef::List(items) => Value::Array(items.iter().map(|i| text(i)).collect()),
        }
    }
}

/// Every field a user may write, in the canonical CSV column order.
pub const WRITABLE_FIELDS: [&str; 22] = [
    "unhcr_number",
    "given_name",
    "family_name",
    "middle_names",
    "gender",
    "date_of_birth",
    "estimated_birth_year",
    "place_of_birth",
    "refugee_status",
    "origin_country",
    "current_camp",
    "camp_section",
    "phone_number",
    "email",
    "primary_language",
    "languages_spoken",
    "blood_type",
    "allergies",
    "chronic_conditions",
    "emergency_contact_name",
    "emergency_contact_phone",
    "verification_status",
];

/// Fields kept by the system; readable (and exportable), never writable.
pub const SYSTEM_FIELDS: [&str; 6] = [
    "id",
    "organization_id",
    "created_at",
    "updated_at",
    "version",
    "deleted_at",
];

/// Fields whose value is a list (`;`-separated in CSV).
pub const LIST_FIELDS: [&str; 3] = ["languages_spoken", "allergies", "chronic_conditions"];

const GENDERS: [&str; 4] = ["male", "female", "other", "unknown"];
const REFUGEE_STATUSES: [&str; 6] = [
    "refugee",
    "asylum_seeker",
    "internally_displaced",
    "stateless",
    "returnee",
    "other",
];
const BLOOD_TYPES: [&str; 8] = ["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"];
const VERIFICATION_STATUSES: [&str; 5] =
    ["unverified", "pending", "verified", "expired", "revoked"];

/// How a date in the input is written. Never guessed (SPEC 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub enum DateFormat {
    #[default]
    #[serde(rename = "YYYY-MM-DD")]
    Iso,
    #[serde(rename = "DD/MM/YYYY")]
    DayFirst,
    #[serde(rename = "MM/DD/YYYY")]
    MonthFirst,
}

impl DateFormat {
    fn pattern(self) -> &'static str {
        match self {
            DateFormat::Iso => "%Y-%m-%d",
            DateFormat::DayFirst => "%d/%m/%Y",
            DateFormat::MonthFirst => "%m/%d/%Y",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DateFormat::Iso => "YYYY-MM-DD",
            DateFormat::DayFirst => "DD/MM/YYYY",
            DateFormat::MonthFirst => "MM/DD/YYYY",
        }
    }
}

/// A value before validation, whatever shape it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// Explicitly empty: clears an optional field.
    Null,
    Text(String),
    Int(i64),
    List(Vec<String>),
}

impl RawValue {
    /// A CSV cell: empty means absent/cleared; list fields split on `;`.
    pub fn from_cell(field: &str, cell: &str) -> RawValue {
        let trimmed = cell.trim();
        if trimmed.is_empty() {
            RawValue::Null
        } else if LIST_FIELDS.contains(&field) {
            RawValue::List(split_list(trimmed))
        } else {
            RawValue::Text(trimmed.to_string())
        }
    }

    /// A JSON value; `Err` holds a message when the JSON type cannot fit any field.
    pub fn from_json(value: &Value) -> Result<RawValue, &'static str> {
        match value {
            Value::Null => Ok(RawValue::Null),
            Value::String(s) => Ok(RawValue::Text(s.clone())),
            Value::Number(n) => n
                .as_i64()
                .map(RawValue::Int)
                .ok_or("must be a whole number"),
            Value::Bool(_) => Err("must not be a boolean"),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err("list items must be strings"),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(RawValue::List),
            Value::Object(_) => Err("must not be an object"),
        }
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl PatientFields {
    /// An empty draft with the defaults a new patient starts from.
    pub fn new_draft() -> Self {
        PatientFields {
            verification_status: "unverified".to_string(),
            ..Default::default()
        }
    }

    /// Sets one field from a raw value, validating it on its own. Errors name the field.
    pub fn set(
        &mut self,
        field: &str,
        raw: RawValue,
        date_format: DateFormat,
        today: NaiveDate,
    ) -> Result<(), FieldError> {
        let err = |code: &str, message: &str| Err(FieldError::new(field, code, message));
        match field {
            "given_name" => self.given_name = required_name(field, raw)?,
            "family_name" => self.family_name = required_name(field, raw)?,
            "gender" => {
                let text = match text(field, raw)? {
                    Some(t) => t,
                    None => return err("required", "is required"),
                };
                self.gender = match text.to_ascii_lowercase().as_str() {
                    "m" => "male".to_string(),
                    "f" => "female".to_string(),
                    "u" => "unknown".to_string(),
                    other if GENDERS.contains(&other) => other.to_string(),
                    _ => {
                        return err(
                            "invalid_enum",
                            "must be one of male, female, other, unknown",
                        )
                    }
                };
            }
            "unhcr_number" => self.unhcr_number = bounded(field, raw, 50)?,
            "middle_names" => self.middle_names = bounded(field, raw, 100)?,
            "date_of_birth" => {
                self.date_of_birth = match text(field, raw)? {
                    None => None,
                    Some(t) => Some(parse_birth_date(field, &t, date_format, today)?),
                }
            }
            "estimated_birth_year" => {
                self.estimated_birth_year = match raw {
                    RawValue::Null => None,
                    RawValue::Int(y) => Some(birth_year(field, y, today)?),
                    RawValue::Text(t) if t.trim().is_empty() => None,
                    RawValue::Text(t) => match t.trim().parse::<i64>() {
                        Ok(y) => Some(birth_year(field, y, today)?),
                        Err(_) => return err("invalid_number", "must be a year such as 1990"),
                    },
                    RawValue::List(_) => return err("invalid_type", "must be a single value"),
                }
            }
            "place_of_birth" => self.place_of_birth = bounded(field, raw, 200)?,
            "refugee_status" => self.refugee_status = enum_value(field, raw, &REFUGEE_STATUSES)?,
            "origin_country" => {
                self.origin_country = match text(field, raw)? {
                    None => None,
                    Some(t) => {
                        let code = t.to_ascii_uppercase();
                        if !codes::is_country(&code) {
                            return err(
                                "invalid_country",
                                "must be an assigned ISO 3166-1 alpha-2 code",
                            );
                        }
                        Some(code)
                    }
                }
            }
            "current_camp" => self.current_camp = bounded(field, raw, 200)?,
            "camp_section" => self.camp_section = bounded(field, raw, 200)?,
            "phone_number" => self.phone_number = phone(field, raw)?,
            "emergency_contact_phone" => self.emergency_contact_phone = phone(field, raw)?,
            "email" => {
                self.email = match bounded(field, raw, MAX_EMAIL_CHARS)? {
                    None => None,
                    Some(t) if plausible_email(&t) => Some(t),
                    Some(_) => {
                        return err(
                            "invalid_email",
                            "must be an email address such as name@example.org",
                        )
                    }
                }
            }
            "primary_language" => {
                self.primary_language = match text(field, raw)? {
                    None => None,
                    Some(t) => Some(language(field, &t)?),
                }
            }
            "languages_spoken" => {
                self.languages_spoken = list(field, raw)?
                    .iter()
                    .map(|l| language(field, l))
                    .collect::<Result<_, _>>()?
            }
            "blood_type" => {
                self.blood_type = match text(field, raw)? {
                    None => None,
                    Some(t) => {
                        let upper = t.to_ascii_uppercase();
                        if !BLOOD_TYPES.contains(&upper.as_str()) {
                            return err("invalid_enum", "must be one of A+ A- B+ B- AB+ AB- O+ O-");
                        }
                        Some(upper)
                    }
                }
            }
            "allergies" => self.allergies = list(field, raw)?,
            "chronic_conditions" => self.chronic_conditions = list(field, raw)?,
            "emergency_contact_name" => self.emergency_contact_name = bounded(field, raw, 200)?,
            "verification_status" => {
                self.verification_status = enum_value(field, raw, &VERIFICATION_STATUSES)?
                    .unwrap_or_else(|| "unverified".to_string())
            }
            _ if SYSTEM_FIELDS.contains(&field) => {
                return err("read_only", "is a system field and cannot be changed")
            }
            _ => return err("unknown_field", "is not a patient field"),
        }
        Ok(())
    }

    /// Checks the rules that span the whole record (required fields present).
    pub fn check_complete(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (field, value) in [
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
            ("gender", &self.gender),
        ] {
            if value.is_empty() {
                errors.push(FieldError::new(field, "required", "is required"));
            }
        }
        errors
    }

    /// A field's value as stored, borrowed: for comparing two records field by field
    /// and for binding one field to SQL without copying it.
    pub fn field(&self, field: &str) -> Option<FieldRef<'_>> {
        use FieldRef::{Date, Int, List, OptText, Text};
        Some(match field {
            "given_name" => Text(&self.given_name),
            "family_name" => Text(&self.family_name),
            "gender" => Text(&self.gender),
            "unhcr_number" => OptText(self.unhcr_number.as_deref()),
            "middle_names" => OptText(self.middle_names.as_deref()),
            "date_of_birth" => Date(self.date_of_birth),
            "estimated_birth_year" => Int(self.estimated_birth_year),
            "place_of_birth" => OptText(self.place_of_birth.as_deref()),
            "refugee_status" => OptText(self.refugee_status.as_deref()),
            "origin_country" => OptText(self.origin_country.as_deref()),
            "current_camp" => OptText(self.current_camp.as_deref()),
            "camp_section" => OptText(self.camp_section.as_deref()),
            "phone_number" => OptText(self.phone_number.as_deref()),
            "email" => OptText(self.email.as_deref()),
            "primary_language" => OptText(self.primary_language.as_deref()),
            "languages_spoken" => List(&self.languages_spoken),
            "blood_type" => OptText(self.blood_type.as_deref()),
            "allergies" => List(&self.allergies),
            "chronic_conditions" => List(&self.chronic_conditions),
            "emergency_contact_name" => OptText(self.emergency_contact_name.as_deref()),
            "emergency_contact_phone" => OptText(self.emergency_contact_phone.as_deref()),
            "verification_status" => Text(&self.verification_status),
            _ => return None,
        })
    }

    /// The value of a field as JSON, for exports, before-images and API answers: the
    /// same JSON as the field's part of the record's serde form.
    pub fn get_json(&self, field: &str) -> Option<Value> {
        self.field(field).map(FieldRef::to_json)
    }

    /// The writable fields whose values differ between `self` and `other`.
    pub fn differing_fields<'a>(
        &'a self,
        other: &'a PatientFields,
    ) -> impl Iterator<Item = &'static str> + 'a {
        WRITABLE_FIELDS
            .into_iter()
            .filter(move |f| self.field(f) != other.field(f))
    }

    /// Sets a field back to a value [`Self::get_json`] gave, without the input rules
    /// (it was stored already; a rule like "not in the future" may no longer hold).
    pub fn restore_json(&mut self, field: &str, value: Value) -> Result<(), String> {
        fn from<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
            serde_json::from_value(value).map_err(|e| e.to_string())
        }
        match field {
            "given_name" => self.given_name = from(value)?,
            "family_name" => self.family_name = from(value)?,
            "gender" => self.gender = from(value)?,
            "unhcr_number" => self.unhcr_number = from(value)?,
            "middle_names" => self.middle_names = from(value)?,
            "date_of_birth" => self.date_of_birth = from(value)?,
            "estimated_birth_year" => self.estimated_birth_year = from(value)?,
            "place_of_birth" => self.place_of_birth = from(value)?,
            "refugee_status" => self.refugee_status = from(value)?,
            "origin_country" => self.origin_country = from(value)?,
            "current_camp" => self.current_camp = from(value)?,
            "camp_section" => self.camp_section = from(value)?,
            "phone_number" => self.phone_number = from(value)?,
            "email" => self.email = from(value)?,
            "primary_language" => self.primary_language = from(value)?,
            "languages_spoken" => self.languages_spoken = from(value)?,
            "blood_type" => self.blood_type = from(value)?,
            "allergies" => self.allergies = from(value)?,
            "chronic_conditions" => self.chronic_conditions = from(value)?,
            "emergency_contact_name" => self.emergency_contact_name = from(value)?,
            "emergency_contact_phone" => self.emergency_contact_phone = from(value)?,
            "verification_status" => self.verification_status = from(value)?,
            other => return Err(format!("unknown field {other}")),
        }
        Ok(())
    }

    /// Applies a JSON object of changes (absent fields stay, `null` clears).
    /// Collects every field error instead of stopping at the first.
    pub fn apply_json(
        &mut self,
        changes: &serde_json::Map<String, Value>,
        today: NaiveDate,
    ) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (field, value) in changes {
            let result = RawValue::from_json(value)
                .map_err(|m| FieldError::new(field, "invalid_type", m))
                .and_then(|raw| self.set(field, raw, DateFormat::Iso, today));
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }
}

impl Patient {
    /// The value of any readable field (system fields included) as JSON.
    pub fn get_json(&self, field: &str) -> Option<Value> {
        let ts = |t: &DateTime<Utc>| Value::String(crate::domain::rfc3339(t));
        match field {
            "id" => Some(Value::String(self.id.to_string())),
            "organization_id" => Some(Value::String(self.organization_id.to_string())),
            "created_at" => Some(ts(&self.created_at)),
            "updated_at" => Some(ts(&self.updated_at)),
            "version" => Some(Value::from(self.version)),
            "deleted_at" => Some(self.deleted_at.as_ref().map(ts).unwrap_or(Value::Null)),
            other => self.fields.get_json(other),
        }
    }

    /// The record as the API shows it: every field, system fields included.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for field in SYSTEM_FIELDS.iter().chain(WRITABLE_FIELDS.iter()) {
            if let Some(v) = self.get_json(field) {
                map.insert(field.to_string(), v);
            }
        }
        Value::Object(map)
    }
}

/// The most items a list field may hold, and the longest item in characters: a joined
/// list stays far below the 32,767 characters of a spreadsheet cell.
pub const MAX_LIST_ITEMS: usize = 100;
pub const MAX_LIST_ITEM_CHARS: usize = 200;

/// The longest email address (RFC 5321's limit on a path).
const MAX_EMAIL_CHARS: usize = 254;

/// Refuses the NUL character, which no patient field can hold (PostgreSQL text cannot
/// store it at all, so it is refused on both databases alike).
fn no_nul(field: &str, text: &str) -> Result<(), FieldError> {
    if text.contains('\0') {
        return Err(FieldError::new(
            field,
            "invalid_character",
            "must not contain the NUL character",
        ));
    }
    Ok(())
}

fn text(field: &str, raw: RawValue) -> Result<Option<String>, FieldError> {
    match raw {
        RawValue::Null => Ok(None),
        RawValue::Text(t) => {
            no_nul(field, &t)?;
            let t = t.trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
        RawValue::Int(i) => Ok(Some(i.to_string())),
        RawValue::List(_) => Err(FieldError::new(
            field,
            "invalid_type",
            "must be a single value",
        )),
    }
}

fn required_name(field: &str, raw: RawValue) -> Result<String, FieldError> {
    match bounded(field, raw, 100)? {
        Some(name) => Ok(name),
        None => Err(FieldError::new(field, "required", "is required")),
    }
}

fn bounded(field: &str, raw: RawValue, max_chars: usize) -> Result<Option<String>, FieldError> {
    let value = text(field, raw)?;
    if let Some(v) = &value {
        if v.chars().count() > max_chars {
            return Err(FieldError::new(
                field,
                "too_long",
                &format!("must be at most {max_chars} characters"),
            ));
        }
    }
    Ok(value)
}

fn enum_value(field: &str, raw: RawValue, allowed: &[&str]) -> Result<Option<String>, FieldError> {
    match text(field, raw)? {
        None => Ok(None),
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            if allowed.contains(&lower.as_str()) {
                Ok(Some(lower))
            } else {
                Err(FieldError::new(
                    field,
                    "invalid_enum",
                    &format!("must be one of {}", allowed.join(", ")),
                ))
            }
        }
    }
}

fn list(field: &str, raw: RawValue) -> Result<Vec<String>, FieldError> {
    let items = match raw {
        RawValue::Null => Vec::new(),
        RawValue::Text(t) => split_list(&t),
        RawValue::List(items) => items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        RawValue::Int(_) => return Err(FieldError::new(field, "invalid_type", "must be a list")),
    };
    if items.len() > MAX_LIST_ITEMS {
        return Err(FieldError::new(
            field,
            "too_many",
            &format!("must have at most {MAX_LIST_ITEMS} items"),
        ));
    }
    for item in &items {
        no_nul(field, item)?;
        if item.chars().count() > MAX_LIST_ITEM_CHARS {
            return Err(FieldError::new(
                field,
                "too_long",
                &format!("items must be at most {MAX_LIST_ITEM_CHARS} characters"),
            ));
        }
    }
    Ok(items)
}

fn parse_birth_date(
    field: &str,
    text: &str,
    format: DateFormat,
    today: NaiveDate,
) -> Result<NaiveDate, FieldError> {
    let date = NaiveDate::parse_from_str(text, format.pattern()).map_err(|_| {
        FieldError::new(
            field,
            "invalid_date",
            &format!("must be a real date written {}", format.as_str()),
        )
    })?;
    if date > today {
        return Err(FieldError::new(
            field,
            "date_in_future",
            "must not be in the future",
        ));
    }
    if date.year() < 1900 {
        return Err(FieldError::new(
            field,
            "date_too_early",
            "must not be before 1900",
        ));
    }
    Ok(date)
}

fn birth_year(field: &str, year: i64, today: NaiveDate) -> Result<i64, FieldError> {
    if year < 1900 || year > i64::from(today.year()) {
        return Err(FieldError::new(
            field,
            "invalid_number",
            "must be a year between 1900 and this year",
        ));
    }
    Ok(year)
}

fn phone(field: &str, raw: RawValue) -> Result<Option<String>, FieldError> {
    match text(field, raw)? {
        None => Ok(None),
        Some(t) => {
            let digits = t.strip_prefix('+').unwrap_or("");
            let valid =
                (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
            if valid {
                Ok(Some(t))
            } else {
                Err(FieldError::new(
                    field,
                    "invalid_phone",
                    "must be in E.164 form: + and 7 to 15 digits",
                ))
            }
        }
    }
}

fn plausible_email(text: &str) -> bool {
    let mut parts = text.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && !text.chars().any(char::is_whitespace)
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        _ => false,
    }
}

fn language(field: &str, text: &str) -> Result<String, FieldError> {
    let code = text.trim().to_ascii_lowercase();
    if codes::is_language(&code) {
        Ok(code)
    } else {
        Err(FieldError::new(
            field,
            "invalid_language",
            "must be an ISO 639-1 language code such as en",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 29).expect("valid date")
    }

    fn set(field: &str, value: &str) -> Result<PatientFields, FieldError> {
        let mut p = PatientFields::new_draft();
        p.set(
            field,
            RawValue::from_cell(field, value),
            DateFormat::Iso,
            today(),
        )?;
        Ok(p)
    }

    #[test]
    fn each_bad_value_names_its_field_and_rule() {
        let cases = [
            ("given_name", "  ", "required"),
            ("gender", "robot", "invalid_enum"),
            ("date_of_birth", "2001-13-45", "invalid_date"),
            ("date_of_birth", "2099-01-01", "date_in_future"),
            ("date_of_birth", "1899-12-31", "date_too_early"),
            ("blood_type", "Q+", "invalid_enum"),
            ("phone_number", "12ab", "invalid_phone"),
            ("origin_country", "XX", "invalid_country"),
            ("email", "not-an-email", "invalid_email"),
            ("id", "x", "read_only"),
            ("favourite_colour", "x", "unknown_field"),
        ];
        for (field, value, code) in cases {
            let e = set(field, value).expect_err(field);
            assert_eq!((e.field.as_str(), e.code.as_str()), (field, code));
        }
    }

    #[test]
    fn gender_accepts_letters_and_any_case() {
        assert_eq!(
            set("gender", "M").map(|p| p.gender).ok().as_deref(),
            Some("male")
        );
        assert_eq!(
            set("gender", "Female").map(|p| p.gender).ok().as_deref(),
            Some("female")
        );
        assert_eq!(
            set("gender", "u").map(|p| p.gender).ok().as_deref(),
            Some("unknown")
        );
    }

    #[test]
    fn day_first_dates_are_read_only_when_asked_for() {
        let mut p = PatientFields::new_draft();
        p.set(
            "date_of_birth",
            RawValue::Text("03/04/1990".into()),
            DateFormat::DayFirst,
            today(),
        )
        .expect("day-first date");
        assert_eq!(p.date_of_birth, NaiveDate::from_ymd_opt(1990, 4, 3));
        let e = p
            .set(
                "date_of_birth",
                RawValue::Text("03/04/1990".into()),
                DateFormat::Iso,
                today(),
            )
            .expect_err("not guessed");
        assert_eq!(e.code, "invalid_date");
    }

    #[test]
    fn leap_day_and_lists_are_accepted() {
        let p = set("date_of_birth", "1988-02-29").expect("leap day");
        assert_eq!(p.date_of_birth, NaiveDate::from_ymd_opt(1988, 2, 29));
        let p = set("languages_spoken", "fr; RW;sw").expect("languages");
        assert_eq!(p.languages_spoken, vec!["fr", "rw", "sw"]);
    }
}
