//! Before-images: what one write of an operation changed, as it was before, sealed per
//! patient in `operation_backups` so the operation can be undone (SPEC 4.6).
//!
//! Since issue 13's third pass an image holds the old values of the changed fields
//! only (`changed`), a few dozen bytes where the whole record was several hundred: the
//! images of a 500,000-patient update were as large as the table. Images written
//! before hold the whole record (`fields`); both are read.
//!
//! An operation writes each patient once (an update pages by id, an import's file
//! cannot name a patient twice: the second row is a duplicate), so one image per
//! patient and operation, the first, is all an undo needs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::patient::{Patient, PatientFields, WRITABLE_FIELDS};
use crate::store::ops::WrittenColumns;

#[derive(Debug, Serialize, Deserialize)]
pub struct BeforeImage {
    /// The whole record (images written before issue 13's third pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fields: Option<PatientFields>,
    /// The old value of every field the write changed, by field name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changed: Option<Map<String, Value>>,
    deleted_at: Option<DateTime<Utc>>,
}

impl BeforeImage {
    /// The image of a write that turns `before` into `after` (fields; the deletion
    /// state is always kept, it is small).
    pub fn of_change(before: &Patient, after: &PatientFields) -> Self {
        let changed: Vec<&'static str> = before.fields.differing_fields(after).collect();
        Self::of_fields(before, &changed)
    }

    /// The image of a write that changes `changed` (from `differing_fields`) of `before`.
    pub fn of_fields(before: &Patient, changed: &[&'static str]) -> Self {
        let changed = changed
            .iter()
            .filter_map(|f| Some((f.to_string(), before.fields.get_json(f)?)))
            .collect();
        BeforeImage {
            fields: None,
            changed: Some(changed),
            deleted_at: before.deleted_at,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The state that undoes the write, applied to the patient as it is now: the
    /// changed fields get their old values, the others stay as they are (with a forced
    /// rollback, a later edit of another field survives). A whole-record image
    /// restores the whole record.
    pub fn restore(
        self,
        current: &Patient,
    ) -> Result<(PatientFields, Option<DateTime<Utc>>), String> {
        let fields = match (self.fields, self.changed) {
            (Some(fields), _) => fields,
            (None, Some(changed)) => {
                let mut fields = current.fields.clone();
                for (field, value) in changed {
                    fields.restore_json(&field, value)?;
                }
                fields
            }
            (None, None) => return Err("a before-image holds neither fields nor changes".into()),
        };
        Ok((fields, self.deleted_at))
    }
}

impl WrittenColumns {
    /// Adds what a write of `fields` and `deleted_at` over `before` changes.
    pub fn add_change(
        &mut self,
        before: &Patient,
        fields: &PatientFields,
        deleted_at: Option<DateTime<Utc>>,
    ) {
        let changed: Vec<&'static str> = before.fields.differing_fields(fields).collect();
        self.add(&changed, before.deleted_at != deleted_at);
    }

    /// Adds the fields a write changes, and whether it changes `deleted_at`.
    pub fn add(&mut self, changed: &[&'static str], deleted_at: bool) {
        let before = self.fields.len();
        for field in changed {
            if !self.fields.contains(field) {
                self.fields.push(field);
            }
        }
        if self.fields.len() != before {
            // In one order whatever the order of the changes: the statement's text,
            // and so PostgreSQL's prepared statement, is the same for every chunk.
            self.fields
                .sort_by_key(|f| WRITABLE_FIELDS.iter().position(|w| w == f));
        }
        self.deleted_at |= deleted_at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Patient {
        Patient {
            id: uuid::Uuid::nil(),
            organization_id: uuid::Uuid::nil(),
            fields: PatientFields {
                given_name: "Amina".into(),
                family_name: "Hassan".into(),
                gender: "female".into(),
                current_camp: Some("Kakuma".into()),
                allergies: vec!["penicillin".into()],
                date_of_birth: chrono::NaiveDate::from_ymd_opt(1990, 3, 1),
                verification_status: "unverified".into(),
                ..Default::default()
            },
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version: 3,
            deleted_at: None,
            import_operation_id: None,
        }
    }

    #[test]
    fn holds_only_the_changed_fields_and_restores_them_over_later_edits() {
        let before = patient();
        let mut after = before.fields.clone();
        after.current_camp = Some("Dadaab".into());
        after.allergies = vec![];
        let image = BeforeImage::of_change(&before, &after);
        let bytes = image.to_bytes();
        let stored: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            stored,
            json!({"changed": {"current_camp": "Kakuma", "allergies": ["penicillin"]}, "deleted_at": null})
        );

        // Someone changed the phone number since; a forced restore keeps it.
        let mut now = before.clone();
        now.fields = after;
        now.fields.phone_number = Some("+254700000000".into());
        let (restored, deleted_at) = BeforeImage::from_bytes(&bytes)
            .unwrap()
            .restore(&now)
            .unwrap();
        assert_eq!(restored.current_camp.as_deref(), Some("Kakuma"));
        assert_eq!(restored.allergies, vec!["penicillin".to_string()]);
        assert_eq!(restored.phone_number.as_deref(), Some("+254700000000"));
        assert_eq!(deleted_at, None);
    }

    #[test]
    fn a_whole_record_image_of_earlier_versions_restores_the_whole_record() {
        let before = patient();
        let old = json!({"fields": before.fields, "deleted_at": null}).to_string();
        let mut now = before.clone();
        now.fields.current_camp = Some("Dadaab".into());
        now.fields.phone_number = Some("+254700000000".into());
        let (restored, _) = BeforeImage::from_bytes(old.as_bytes())
            .unwrap()
            .restore(&now)
            .unwrap();
        assert_eq!(restored, before.fields);
    }

    #[test]
    fn written_columns_are_the_union_of_the_changes() {
        let before = patient();
        let mut columns = WrittenColumns::default();
        let mut a = before.fields.clone();
        a.current_camp = None;
        columns.add_change(&before, &a, None);
        let mut b = before.fields.clone();
        b.date_of_birth = None;
        b.current_camp = None;
        columns.add_change(&before, &b, Some(Utc::now()));
        assert_eq!(columns.fields, vec!["date_of_birth", "current_camp"]);
        assert!(columns.deleted_at);
    }
}
