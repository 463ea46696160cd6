//! Property tests (a CI-sized fuzz run) of the three parsers that read what an attacker
//! sends: the CSV import reader, the header planner and the filter parser. None may
//! panic, and what they accept must keep their promises (bounded headers, one column per
//! field, no empty list filter).

use std::collections::BTreeMap;

use haven::domain::filters::{PatientFilters, FILTER_NAMES};
use haven::domain::patient::WRITABLE_FIELDS;
use haven::formats::csv_import::{self, MAX_COLUMNS, MAX_COLUMN_NAME_CHARS};
use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like CSV often enough to get past the header: separators, quotes,
/// line ends, BOMs, NULs, field names and invalid UTF-8.
fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"given_name".to_vec()),
        Just(b"family_name".to_vec()),
        Just(b"languages_spoken".to_vec()),
        "[a-z=+@ ;-]{0,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|parts| parts.concat())
}

fn header_cell() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(WRITABLE_FIELDS.to_vec()).prop_map(str::to_string),
        proptest::sample::select(vec!["First Name", "dob", "sex", "refugeeId", "camp", ""])
            .prop_map(str::to_string),
        ".{0,20}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        "[0-9a-f-]{36}".prop_map(Value::String),
        Just(Value::String("2001-02-03".into())),
    ];
    leaf.prop_recursive(2, 16, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

fn filter_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(FILTER_NAMES.to_vec()).prop_map(str::to_string),
        "[a-z_]{1,12}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_import_reader_never_panics_and_bounds_the_header(bytes in csv_bytes()) {
        if let Ok(mut reader) = csv_import::open(&bytes[..]) {
            let header = reader.header().to_vec();
            prop_assert!(!header.is_empty() && header.len() <= MAX_COLUMNS);
            for name in &header {
                prop_assert!(name.chars().count() <= MAX_COLUMN_NAME_CHARS);
                prop_assert!(!name.contains('\0'));
            }
            let mut last_row = 1;
            while let Some(row) = reader.next_record() {
                match row {
                    Ok(row) => {
                        prop_assert!(row.row > last_row, "rows are numbered upwards");
                        last_row = row.row;
                    }
                    Err(e) => prop_assert!(!e.code().is_empty()),
                }
            }
        }
    }

    #[test]
    fn the_header_planner_maps_each_field_at_most_once(
        header in proptest::collection::vec(header_cell(), 0..30),
        mapping in proptest::option::of(proptest::collection::btree_map(header_cell(), header_cell(), 0..6)),
    ) {
        match csv_import::plan_columns(&header, mapping.as_ref()) {
            Ok(plan) => {
                prop_assert_eq!(plan.targets.len(), header.len());
                let mapped: Vec<&str> = plan.targets.iter().flatten().copied().collect();
                let mut unique = mapped.clone();
                unique.sort_unstable();
                unique.dedup();
                prop_assert_eq!(unique.len(), mapped.len(), "one column per field");
                prop_assert_eq!(mapped.len() + plan.ignored.len(), header.len());
                prop_assert!(mapped.contains(&"given_name") && mapped.contains(&"family_name"));
            }
            Err(errors) => prop_assert!(!errors.is_empty()),
        }
    }

    #[test]
    fn the_filter_parser_never_accepts_an_empty_list(
        object in proptest::collection::btree_map(filter_name(), json_value(), 0..6),
    ) {
        let value = Value::Object(object.into_iter().collect());
        if let Ok(filters) = PatientFilters::from_json(&value, "filters") {
            prop_assert!(filters.patient_ids.as_ref().is_none_or(|l| !l.is_empty()));
            prop_assert!(filters.unhcr_numbers.as_ref().is_none_or(|l| !l.is_empty()));
        }
    }

    #[test]
    fn the_query_filter_parser_never_accepts_an_empty_list(
        query in proptest::collection::btree_map(filter_name(), "[,a-zA-Z0-9 %-]{0,40}", 0..6),
    ) {
        let query: BTreeMap<String, String> = query;
        if let Ok(filters) = PatientFilters::from_query(&query) {
            prop_assert!(filters.patient_ids.as_ref().is_none_or(|l| !l.is_empty()));
            prop_assert!(filters.unhcr_numbers.as_ref().is_none_or(|l| !l.is_empty()));
            for list in filters.unhcr_numbers.iter().flatten() {
                prop_assert!(!list.trim().is_empty());
            }
        }
    }
}
