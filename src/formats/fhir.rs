//! FHIR R4 `Patient` resources for the `ndjson` export (SPEC 4.2, export options), so health
//! systems can take Haven's records without a custom mapping.
//!
//! FHIR forbids empty arrays, empty objects and `null`: every element below is added only
//! when it has a value.

use serde_json::{json, Map, Value};

use crate::domain::patient::Patient;
use crate::domain::rfc3339;

/// The identifier system of UNHCR registration numbers.
const UNHCR_SYSTEM: &str = "https://www.unhcr.org/refugee-id";
/// The code system of language tags (ISO 639-1 codes are valid BCP 47 tags).
const BCP47_SYSTEM: &str = "urn:ietf:bcp:47";

/// The present, non-blank value of an optional text field.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Inserts `items` under `key` unless the list is empty.
fn put_list(map: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    if !items.is_empty() {
        map.insert(key.to_string(), Value::Array(items));
    }
}

/// One patient as a FHIR R4 `Patient` resource: identity, names, gender, birth date,
/// contacts, camp address, languages, managing organization and emergency contact.
pub fn patient_resource(p: &Patient) -> Value {
    let f = &p.fields;
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("Patient"));
    r.insert("id".into(), json!(p.id.to_string()));
    r.insert(
        "meta".into(),
        json!({"versionId": p.version.to_string(), "lastUpdated": rfc3339(&p.updated_at)}),
    );
    if let Some(number) = present(&f.unhcr_number) {
        r.insert(
            "identifier".into(),
            json!([{"use": "official", "system": UNHCR_SYSTEM, "value": number}]),
        );
    }
    r.insert("active".into(), json!(p.deleted_at.is_none()));

    let mut name = Map::new();
    name.insert("use".into(), json!("official"));
    if !f.family_name.trim().is_empty() {
        name.insert("family".into(), json!(f.family_name));
    }
    let given: Vec<Value> = std::iter::once(f.given_name.as_str())
        .chain(
            present(&f.middle_names)
                .into_iter()
                .flat_map(str::split_whitespace),
        )
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| json!(g))
        .collect();
    put_list(&mut name, "given", given);
    if name.len() > 1 {
        r.insert("name".into(), json!([name]));
    }

    // Haven's gender codes are FHIR's administrative-gender codes.
    let gender = f.gender.trim().to_ascii_lowercase();
    if !gender.is_empty() {
        let code = match gender.as_str() {
            "male" | "female" | "other" | "unknown" => gender.as_str(),
            _ => "unknown",
        };
        r.insert("gender".into(), json!(code));
    }
    if let Some(date) = f.date_of_birth {
        r.insert(
            "birthDate".into(),
            json!(date.format("%Y-%m-%d").to_string()),
        );
    }

    let mut telecom = Vec::new();
    if let Some(phone) = present(&f.phone_number) {
        telecom.push(json!({"system": "phone", "value": phone, "use": "mobile"}));
    }
    if let Some(email) = present(&f.email) {
        telecom.push(json!({"system": "email", "value": email}));
    }
    put_list(&mut r, "telecom", telecom);

    // A camp is a temporary address; a section without a camp is still kept.
    let camp = present(&f.current_camp);
    let section = present(&f.camp_section);
    if camp.is_some() || section.is_some() {
        let mut address = Map::new();
        address.insert("use".into(), json!("temp"));
        let text: Vec<&str> = camp.into_iter().chain(section).collect();
        address.insert("text".into(), json!(text.join(", ")));
        if let Some(section) = section {
            address.insert("line".into(), json!([section]));
        }
        if let Some(camp) = camp {
            address.insert("district".into(), json!(camp));
        }
        r.insert("address".into(), json!([address]));
    }

    let language = |code: &str| json!({"coding": [{"system": BCP47_SYSTEM, "code": code}]});
    let mut communication = Vec::new();
    let primary = present(&f.primary_language);
    if let Some(code) = primary {
        communication.push(json!({"language": language(code), "preferred": true}));
    }
    let mut seen: Vec<&str> = primary.into_iter().collect();
    for code in f.languages_spoken.iter().map(|l| l.trim()) {
        if !code.is_empty() && !seen.contains(&code) {
            seen.push(code);
            communication.push(json!({"language": language(code)}));
        }
    }
    put_list(&mut r, "communication", communication);

    r.insert(
        "managingOrganization".into(),
        json!({"reference": format!("Organization/{}", p.organization_id)}),
    );

    let contact_name = present(&f.emergency_contact_name);
    let contact_phone = present(&f.emergency_contact_phone);
    if contact_name.is_some() || contact_phone.is_some() {
        let mut contact = Map::new();
        if let Some(text) = contact_name {
            contact.insert("name".into(), json!({"text": text}));
        }
        if let Some(phone) = contact_phone {
            contact.insert(
                "telecom".into(),
                json!([{"system": "phone", "value": phone}]),
            );
        }
        r.insert("contact".into(), json!([contact]));
    }
    Value::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::patient::PatientFields;
    use chrono::{NaiveDate, TimeZone, Utc};
    use uuid::Uuid;

    fn patient(fields: PatientFields) -> Patient {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 29, 8, 30, 0)
            .single()
            .expect("time");
        Patient {
            id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            organization_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00aa),
            fields,
            created_at: t,
            updated_at: t,
            version: 3,
            deleted_at: None,
            import_operation_id: None,
        }
    }

    #[test]
    fn full_record_becomes_a_complete_resource() {
        let p = patient(PatientFields {
            given_name: "Nyakuoth".into(),
            family_name: "Deng".into(),
            middle_names: Some("Mary  Ann".into()),
            gender: "female".into(),
            unhcr_number: Some("UGA-24-000003".into()),
            date_of_birth: NaiveDate::from_ymd_opt(2012, 7, 30),
            current_camp: Some("Bidibidi".into()),
            camp_section: Some("Zone 3".into()),
            phone_number: Some("+256700000003".into()),
            email: Some("n.deng@example.org".into()),
            primary_language: Some("en".into()),
            languages_spoken: vec!["en".into(), "ar".into()],
            emergency_contact_name: Some("Garang Deng".into()),
            emergency_contact_phone: Some("+256700000103".into()),
            ..PatientFields::new_draft()
        });
        let r = patient_resource(&p);
        assert_eq!(r["resourceType"], "Patient");
        assert_eq!(r["id"], p.id.to_string());
        assert_eq!(r["meta"]["versionId"], "3");
        assert_eq!(r["meta"]["lastUpdated"], "2026-11-29T08:30:00.000000Z");
        assert_eq!(r["identifier"][0]["value"], "UGA-24-000003");
        assert_eq!(r["identifier"][0]["system"], UNHCR_SYSTEM);
        assert_eq!(r["active"], true);
        assert_eq!(r["name"][0]["family"], "Deng");
        assert_eq!(r["name"][0]["given"], json!(["Nyakuoth", "Mary", "Ann"]));
        assert_eq!(r["gender"], "female");
        assert_eq!(r["birthDate"], "2012-07-30");
        assert_eq!(
            r["telecom"][0],
            json!({"system":"phone","value":"+256700000003","use":"mobile"})
        );
        assert_eq!(r["telecom"][1]["system"], "email");
        assert_eq!(r["address"][0]["text"], "Bidibidi, Zone 3");
        assert_eq!(r["address"][0]["district"], "Bidibidi");
        assert_eq!(r["address"][0]["line"], json!(["Zone 3"]));
        let comm = r["communication"].as_array().expect("communication");
        assert_eq!(comm.len(), 2, "primary language not repeated");
        assert_eq!(comm[0]["preferred"], true);
        assert_eq!(comm[1]["language"]["coding"][0]["code"], "ar");
        assert_eq!(
            r["managingOrganization"]["reference"],
            format!("Organization/{}", p.organization_id)
        );
        assert_eq!(r["contact"][0]["name"]["text"], "Garang Deng");
        assert_eq!(r["contact"][0]["telecom"][0]["value"], "+256700000103");
    }

    #[test]
    fn minimal_record_has_no_empty_arrays_or_nulls() {
        let mut p = patient(PatientFields {
            given_name: "Omar".into(),
            family_name: "Yusuf".into(),
            gender: "male".into(),
            ..PatientFields::new_draft()
        });
        p.deleted_at = Some(p.updated_at);
        let r = patient_resource(&p);
        let obj = r.as_object().expect("object");
        for key in [
            "identifier",
            "birthDate",
            "telecom",
            "address",
            "communication",
            "contact",
        ] {
            assert!(!obj.contains_key(key), "{key} should be absent");
        }
        assert_eq!(r["active"], false);
        fn no_empty(v: &Value) -> bool {
            match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty() && a.iter().all(no_empty),
                Value::Object(o) => !o.is_empty() && o.values().all(no_empty),
                _ => true,
            }
        }
        assert!(no_empty(&r));
    }
}
