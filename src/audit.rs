//! The hash-chained audit log (SPEC 7).
//!
//! Each organization has its own chain: entry `n` holds the hash of entry `n-1`, and its
//! own hash covers every column. Changing a column breaks that entry's hash; removing an
//! entry breaks the sequence or the link of the next one; removing the newest entries
//! no longer matches the chain head kept in `audit_heads`.

use std::net::SocketAddr;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::rfc3339;
use crate::store::{AuditEntry, NewAuditEntry, Store, StoreResult};

/// The `prev_hash` of an organization's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry: SHA-256 over its previous hash and every column, each on a
/// line of its own, so no two different entries can produce the same input.
pub fn entry_hash(entry: &AuditEntry) -> String {
    let opt_uuid = |u: &Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let fields = [
        entry.prev_hash.clone(),
        entry.id.to_string(),
        entry.organization_id.to_string(),
        entry.seq.to_string(),
        rfc3339(&entry.occurred_at),
        opt_uuid(&entry.user_id),
        entry.action.clone(),
        entry.resource_type.clone(),
        opt(&entry.resource_id),
        opt_uuid(&entry.operation_id),
        opt(&entry.client_addr),
        entry.outcome.clone(),
        entry.details.clone(),
    ];
    let mut hasher = Sha256::new();
    for field in fields {
        // Length-prefixed so that a newline inside a field cannot shift the boundary.
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Builds the next entry of a chain whose head is `(seq, hash)`.
pub fn chain_next(new: NewAuditEntry, prev_seq: i64, prev_hash: &str) -> AuditEntry {
    let mut entry = AuditEntry {
        id: crate::domain::new_id(),
        organization_id: new.organization_id,
        seq: prev_seq + 1,
        occurred_at: crate::domain::now(),
        user_id: new.user_id,
        action: new.action,
        resource_type: new.resource_type,
        resource_id: new.resource_id,
        operation_id: new.operation_id,
        client_addr: new.client_addr,
        outcome: new.outcome,
        details: new.details,
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
    };
    entry.hash = entry_hash(&entry);
    entry
}

/// Who did something and from where: the part of an audit entry the caller knows.
#[derive(Debug, Clone)]
pub struct Actor {
    pub organization_id: Uuid,
    pub user_id: Option<Uuid>,
    pub client_addr: Option<SocketAddr>,
}

impl Actor {
    /// An entry by this actor. `details` must never hold patient data.
    pub fn entry(
        &self,
        action: &str,
        resource_type: &str,
        resource_id: Option<String>,
        outcome: &str,
        details: Value,
    ) -> NewAuditEntry {
        NewAuditEntry {
            organization_id: self.organization_id,
            user_id: self.user_id,
            action: action.to_string(),
            resource_type: resource_type.to_string(),
            resource_id,
            operation_id: None,
            client_addr: self.client_addr.map(|a| a.ip().to_string()),
            outcome: outcome.to_string(),
            details: details.to_string(),
        }
    }
}

/// The first place where an organization's chain is broken.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Break {
    pub organization_id: Uuid,
    /// The entry found broken, or `None` when entries are missing at the end.
    pub entry_id: Option<Uuid>,
    pub seq: i64,
    pub reason: String,
}

/// The outcome of verifying one organization's chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub organization_id: Uuid,
    pub entries_checked: i64,
    pub broken: Option<Break>,
}

/// Walks an organization's chain page by page and reports the first break.
pub async fn verify(store: &dyn Store, org: Uuid) -> StoreResult<Verification> {
    const PAGE: i64 = 1_000;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut checked = 0;
    let broken = |entry_id, seq, reason: &str| Break {
        organization_id: org,
        entry_id,
        seq,
        reason: reason.to_string(),
    };
    loop {
        let entries = store.audit_entries(org, expected_seq - 1, PAGE).await?;
        let page_len = entries.len() as i64;
        for entry in entries {
            let problem = if entry.seq != expected_seq {
                Some("entries before this one were removed (sequence gap)")
            } else if entry.prev_hash != prev_hash {
                Some(
                    "does not link to the previous entry (an earlier entry was removed or changed)",
                )
            } else if entry_hash(&entry) != entry.hash {
                Some("its content was changed after it was written (hash mismatch)")
            } else {
                None
            };
            if let Some(reason) = problem {
                return Ok(Verification {
                    organization_id: org,
                    entries_checked: checked,
                    broken: Some(broken(Some(entry.id), entry.seq, reason)),
                });
            }
            checked += 1;
            expected_seq += 1;
            prev_hash = entry.hash;
        }
        if page_len < PAGE {
            break;
        }
    }
    let head = store.audit_head(org).await?;
    let last_seq = expected_seq - 1;
    let tail_missing = match &head {
        Some(head) => head.seq != last_seq || head.hash != prev_hash,
        None => last_seq > 0,
    };
    Ok(Verification {
        organization_id: org,
        entries_checked: checked,
        broken: tail_missing.then(|| {
            broken(
                None,
                last_seq + 1,
                "the newest entries were removed (the chain head is ahead of the last entry)",
            )
        }),
    })
}
