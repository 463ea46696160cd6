//! Passwords, tokens and the slowing-down of repeated failed logins (SPEC 2, 10).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Failed logins per account within [`THROTTLE_WINDOW_SECS`] before 429.
pub const MAX_FAILURES_PER_ACCOUNT: i64 = 5;
/// Failed logins per client address within the window before 429.
pub const MAX_FAILURES_PER_ADDRESS: i64 = 20;
pub const THROTTLE_WINDOW_SECS: i64 = 15 * 60;
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Hashes a password with Argon2id (the crate's default parameters: 19 MiB, t=2).
/// CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
}

/// Checks a password against a stored Argon2 hash. CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    match PasswordHash::new(stored_hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the account does not exist, so that the answer
/// takes as long as for a wrong password and does not reveal which emails exist.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0c0/SaJbqj/f2wClw7tqcN0aPaI/4sRkvEbb1Iv2YNo"
}

/// A new random token (256 bits, URL-safe base64). Only its hash is stored.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a token: hex SHA-256. A fast hash is right here because the token
/// has 256 random bits; nobody can guess it, so nobody needs to be slowed down.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The key under which failed logins of one account are counted (hashed, so the
/// table holds no email addresses).
pub fn account_throttle_key(email: &str) -> String {
    format!("account:{}", token_hash(&email.trim().to_lowercase()))
}

/// The key under which failed logins from one client address are counted.
pub fn address_throttle_key(addr: &str) -> String {
    format!("address:{}", token_hash(addr))
}

/// A random password for the bootstrap admin: 20 characters from an unambiguous set.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Bounds the memory and CPU of password hashing: each Argon2 check takes 19 MiB and a
/// core for a while, so at most `slots` run at once (one per core) and at most `queue`
/// more requests wait for a slot; beyond that a login answers 503 with `Retry-After`
/// at once, before it costs anything.
#[derive(Debug, Clone)]
pub struct HashingGate {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    queue: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A request's place in the hashing queue (see [`HashingGate::enter`]).
pub struct QueuedHash {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl HashingGate {
    /// `slots` hashes at once, `queue` requests waiting beyond them.
    pub fn new(slots: usize, queue: usize) -> HashingGate {
        HashingGate {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(slots.max(1))),
            queue: std::sync::Arc::new(tokio::sync::Semaphore::new(slots.max(1) + queue)),
        }
    }

    /// One slot per core, and eight waiting requests per core.
    pub fn for_this_machine() -> HashingGate {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HashingGate::new(cores, cores * 8)
    }

    /// A place in the queue, or `ServiceUnavailable` when it is full.
    pub fn enter(&self) -> Result<QueuedHash, crate::http::error::AppError> {
        match self.queue.clone().try_acquire_owned() {
            Ok(place) => Ok(QueuedHash {
                slots: self.slots.clone(),
                _place: place,
            }),
            Err(_) => Err(crate::http::error::AppError::ServiceUnavailable {
                message: "too many logins are being checked at once: try again in a moment".into(),
                retry_after_secs: 1,
            }),
        }
    }
}

impl QueuedHash {
    /// Runs a hashing job on a blocking thread once a slot is free.
    pub async fn hash<T: Send + 'static>(
        self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::http::error::AppError> {
        let internal = |e: anyhow::Error| crate::http::error::AppError::Internal(e);
        let _slot = self.slots.acquire().await.map_err(|e| internal(e.into()))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| internal(e.into()))
    }
}

/// Passwords people pick first; refused whatever their length.
const COMMON_PASSWORDS: [&str; 24] = [
    "123456789012",
    "1234567890123",
    "password1234",
    "password12345",
    "passwordpassword",
    "qwertyuiop12",
    "qwertyuiopasdf",
    "iloveyou1234",
    "administrator",
    "adminadmin123",
    "welcome12345",
    "letmein12345",
    "changeme1234",
    "aaaaaaaaaaaa",
    "111111111111",
    "000000000000",
    "abcdefghijkl",
    "abc123abc123",
    "football1234",
    "monkey123456",
    "sunshine1234",
    "princess1234",
    "trustno1trustno1",
    "passw0rd1234",
];

/// Checks the password policy; the error is a message for the user.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password needs at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lowered.as_str())
        || lowered.chars().all(|c| lowered.starts_with(c))
    {
        return Err("the password is too common; choose another".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("anything", dummy_hash()));
    }

    #[test]
    fn tokens_are_long_random_and_stored_hashed() {
        let a = new_token();
        assert_ne!(a, new_token());
        assert!(a.len() >= 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }

    #[tokio::test]
    async fn the_hashing_gate_turns_away_requests_beyond_its_queue() {
        let gate = HashingGate::new(1, 1);
        let first = gate.enter().expect("a slot");
        let second = gate.enter().expect("a place in the queue");
        let refused = gate.enter().err().expect("the queue is full");
        assert_eq!(refused.status().as_u16(), 503);
        drop(first);
        assert!(gate.enter().is_ok(), "a place is free again");
        assert_eq!(second.hash(|| 7).await.expect("hashed"), 7);
    }

    #[test]
    fn the_password_policy_refuses_short_and_common_passwords() {
        assert!(check_password_policy("short").is_err());
        assert!(check_password_policy("Password1234").is_err());
        assert!(check_password_policy("zzzzzzzzzzzzzz").is_err());
        assert!(check_password_policy("tea-kettle-orbit-42").is_ok());
    }
}
