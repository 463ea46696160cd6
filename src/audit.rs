//! The hash-chained audit log (SPEC 7).
//!
//! Each organization has its own chain: entry `n` holds the hash of entry `n-1`, and its
//! own hash covers every column. Changing a column breaks that entry's hash; removing an
//! entry breaks the sequence or the link of the next one; removing the newest entries
//! no longer matches the chain head kept in `audit_heads`.
//!
//! The hash is an HMAC-SHA256 under a key derived from the master key (issue 8), which
//! the database does not hold: whoever can write the database file can still delete or
//! change rows, but cannot compute the hashes that would make a rewritten chain verify.
//! Removing the newest entries together with the head row is caught by comparing with a
//! head the operator recorded outside the database (`audit verify --expect-head`).
//! Entries written before the chain was keyed (no `key_id`) keep their plain SHA-256 and
//! are accepted only at the start of a chain.

use std::net::SocketAddr;
use std::sync::RwLock;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::Keyring;
use crate::domain::rfc3339;
use crate::store::{AuditEntry, NewAuditEntry, Store, StoreError, StoreResult};

/// The `prev_hash` of an organization's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The keys of the audit chain's HMAC, by key id; the first is the one new entries use.
#[derive(Clone)]
pub struct AuditKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("AuditKeys").field("key_ids", &ids).finish()
    }
}

impl AuditKeys {
    /// The audit keys derived from the master key and the previous master keys.
    pub fn from_keyring(keyring: &Keyring) -> AuditKeys {
        AuditKeys {
            keys: keyring.audit_keys(),
        }
    }

    fn active(&self) -> Option<&(String, [u8; 32])> {
        self.keys.first()
    }

    fn find(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

/// The audit keys of this process. The store appends entries from inside transactions
/// that the engine's code opens, where no handle to the keyring reaches; the process
/// binds its keys here once it has opened its database ([`crate::app::open_store`]).
static INSTALLED_KEYS: RwLock<Option<AuditKeys>> = RwLock::new(None);

/// Makes `keys` the keys new audit entries of this process are hashed with.
pub fn install_keys(keys: AuditKeys) {
    let mut slot = INSTALLED_KEYS.write().unwrap_or_else(|e| e.into_inner());
    *slot = Some(keys);
}

/// The keys installed by [`install_keys`].
pub fn installed_keys() -> StoreResult<AuditKeys> {
    INSTALLED_KEYS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| {
            StoreError::Corrupt(
                "the audit key is not loaded: open the store with open_store".into(),
            )
        })
}

/// The fields an entry's hash covers, each length-prefixed so that a newline inside a
/// field cannot shift the boundary. A keyed entry covers its key id too.
fn hash_input(entry: &AuditEntry) -> Vec<u8> {
    let opt_uuid = |u: &Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    let opt = |s: &Option<String>| s.clone().unwrap_or_default();
    let mut fields = vec![
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
    if let Some(key_id) = &entry.key_id {
        fields.push(key_id.clone());
    }
    let mut input = Vec::new();
    for field in fields {
        input.extend_from_slice(&(field.len() as u64).to_be_bytes());
        input.extend_from_slice(field.as_bytes());
    }
    input
}

/// The hash of an entry: HMAC-SHA256 under `key` for a keyed entry, plain SHA-256 for
/// one written before the chain was keyed (`key_id` empty, `key` ignored).
pub fn entry_hash(entry: &AuditEntry, key: Option<&[u8; 32]>) -> String {
    let input = hash_input(entry);
    match (&entry.key_id, key) {
        (Some(_), Some(key)) => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            mac.update(&input);
            hex::encode(mac.finalize().into_bytes())
        }
        _ => hex::encode(Sha256::digest(&input)),
    }
}

/// Builds the next entry of a chain whose head is `(seq, hash)`, keyed with the active
/// audit key.
pub fn chain_next(
    new: NewAuditEntry,
    prev_seq: i64,
    prev_hash: &str,
    keys: &AuditKeys,
) -> StoreResult<AuditEntry> {
    let (key_id, key) = keys
        .active()
        .ok_or_else(|| StoreError::Corrupt("no audit key".into()))?;
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
        key_id: Some(key_id.clone()),
    };
    entry.hash = entry_hash(&entry, Some(key));
    Ok(entry)
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

/// The newest link of a chain as `audit verify` reports it, for an operator to record
/// outside the database and give back as `--expect-head SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Head {
    type Err = String;

    fn from_str(text: &str) -> Result<Head, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or("write the head as SEQ:HASH, as `audit verify` prints it")?;
        let seq = seq
            .trim()
            .parse::<i64>()
            .map_err(|_| "SEQ must be a whole number")?;
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("HASH must be 64 hexadecimal digits".into());
        }
        Ok(Head { seq, hash })
    }
}

/// The outcome of verifying one organization's chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub organization_id: Uuid,
    pub entries_checked: i64,
    /// Entries at the start of the chain written before it was keyed (plain SHA-256).
    pub unkeyed_entries: i64,
    /// The last entry checked (seq 0 and the genesis hash for an empty chain).
    pub head: Head,
    pub broken: Option<Break>,
}

/// Walks an organization's chain page by page and reports the first break. `expected`
/// is a head recorded earlier outside the database: the chain must still hold that entry
/// with that hash, so removing the newest entries together with the head row is caught.
pub async fn verify(
    store: &dyn Store,
    org: Uuid,
    keys: &AuditKeys,
    expected: Option<&Head>,
) -> StoreResult<Verification> {
    const PAGE: i64 = 1_000;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut checked = 0;
    let mut unkeyed = 0;
    let mut seen_keyed = false;
    let mut expected_seen = expected.is_some_and(|h| h.seq == 0 && h.hash == GENESIS_HASH);
    let result = |broken: Option<Break>, checked, unkeyed, head: Head| Verification {
        organization_id: org,
        entries_checked: checked,
        unkeyed_entries: unkeyed,
        head,
        broken,
    };
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
            let key = entry.key_id.as_deref().map(|id| keys.find(id));
            let problem = if entry.seq != expected_seq {
                Some("entries before this one were removed (sequence gap)")
            } else if entry.prev_hash != prev_hash {
                Some(
                    "does not link to the previous entry (an earlier entry was removed or changed)",
                )
            } else if key.is_none() && seen_keyed {
                Some("has no keyed hash after keyed entries (the chain was rewritten)")
            } else if key == Some(None) {
                Some("is hashed with a key this process does not have (give the previous master key with --previous-master-key-file)")
            } else if entry_hash(&entry, key.flatten()) != entry.hash {
                Some("its content was changed after it was written (hash mismatch)")
            } else {
                None
            };
            if let Some(reason) = problem {
                let head = Head {
                    seq: expected_seq - 1,
                    hash: prev_hash,
                };
                return Ok(result(
                    Some(broken(Some(entry.id), entry.seq, reason)),
                    checked,
                    unkeyed,
                    head,
                ));
            }
            if key.is_none() {
                unkeyed += 1;
            } else {
                seen_keyed = true;
            }
            if expected.is_some_and(|h| h.seq == entry.seq) {
                expected_seen = expected.is_some_and(|h| h.hash == entry.hash);
            }
            checked += 1;
            expected_seq += 1;
            prev_hash = entry.hash;
        }
        if page_len < PAGE {
            break;
        }
    }
    let last_seq = expected_seq - 1;
    let head = Head {
        seq: last_seq,
        hash: prev_hash.clone(),
    };
    if let Some(wanted) = expected.filter(|_| !expected_seen) {
        let reason = if wanted.seq > last_seq {
            "the chain ends before the expected head: its newest entries were removed"
        } else {
            "the entry at the expected head has another hash: the chain was rewritten"
        };
        let b = broken(None, wanted.seq, reason);
        return Ok(result(Some(b), checked, unkeyed, head));
    }
    if unkeyed > 0 && !seen_keyed {
        // Every start of `serve` or `worker` seals an unkeyed chain with a keyed entry
        // (`seal_unkeyed_chains`): a chain that ends unkeyed was rewritten without the key.
        let b = broken(
            None,
            last_seq,
            "the chain has no keyed entry: it was rewritten by someone without the key",
        );
        return Ok(result(Some(b), checked, unkeyed, head));
    }
    let stored = store.audit_head(org).await?;
    let tail_missing = match &stored {
        Some(h) => h.seq != last_seq || h.hash != prev_hash,
        None => last_seq > 0,
    };
    let b = tail_missing.then(|| {
        broken(
            None,
            last_seq + 1,
            "the newest entries were removed (the chain head is ahead of the last entry)",
        )
    });
    Ok(result(b, checked, unkeyed, head))
}

/// Appends a keyed `audit.chain_keyed` entry to every chain whose newest entry was
/// written before the chain was keyed: its HMAC covers the link to the unkeyed entries,
/// so they can no longer be rewritten undetected, and a chain found ending unkeyed
/// afterwards is known to be forged. Run at the start of `serve` and `worker`.
pub async fn seal_unkeyed_chains(store: &dyn Store) -> StoreResult<usize> {
    let mut sealed = 0;
    for org in store.list_organization_ids().await? {
        let Some(head) = store.audit_head(org).await? else {
            continue;
        };
        if head.seq == 0 {
            continue;
        }
        let newest = store.audit_entries(org, head.seq - 1, 1).await?;
        if newest.first().is_some_and(|e| e.key_id.is_none()) {
            let entry = NewAuditEntry {
                organization_id: org,
                user_id: None,
                action: "audit.chain_keyed".into(),
                resource_type: "audit_chain".into(),
                resource_id: None,
                operation_id: None,
                client_addr: None,
                outcome: "success".into(),
                details: serde_json::json!({"unkeyed_entries": head.seq}).to_string(),
            };
            store.append_audit(entry).await?;
            sealed += 1;
        }
    }
    Ok(sealed)
}
