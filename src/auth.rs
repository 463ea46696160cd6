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
/// core for a while, so the checks run on a fixed set of threads, one per core, and at
/// most `queue` more requests wait for one; beyond that a login answers 503 with
/// `Retry-After` at once, before it costs anything. Fixed threads also keep the memory
/// bounded after a burst: the allocator keeps an arena per thread that ever hashed, and
/// tokio's blocking pool would have grown a thread (and an arena of 19 MiB) per burst.
#[derive(Clone)]
pub struct HashingGate {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
    queue: std::sync::Arc<tokio::sync::Semaphore>,
}

type HashJob = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for HashingGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingGate")
            .field("places", &self.queue.available_permits())
            .finish()
    }
}

/// A request's place in the hashing queue (see [`HashingGate::enter`]).
pub struct QueuedHash {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl HashingGate {
    /// `threads` hashing threads, `queue` requests waiting beyond them. The threads end
    /// when the last clone of the gate and of its queued requests is gone.
    pub fn new(threads: usize, queue: usize) -> HashingGate {
        let threads = threads.max(1);
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<HashJob>(threads + queue);
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        for n in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("haven-hash-{n}"))
                .spawn(move || loop {
                    let next = match receiver.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match next {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        HashingGate {
            jobs,
            queue: std::sync::Arc::new(tokio::sync::Semaphore::new(threads + queue)),
        }
    }

    /// One thread per core, and eight waiting requests per core.
    pub fn for_this_machine() -> HashingGate {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HashingGate::new(cores, cores * 8)
    }

    /// A place in the queue, or `ServiceUnavailable` when it is full.
    pub fn enter(&self) -> Result<QueuedHash, crate::http::error::AppError> {
        match self.queue.clone().try_acquire_owned() {
            Ok(place) => Ok(QueuedHash {
                jobs: self.jobs.clone(),
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
    /// Runs a hashing job on one of the gate's threads and waits for its result.
    pub async fn hash<T: Send + 'static>(
        self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::http::error::AppError> {
        let internal =
            |what: &str| crate::http::error::AppError::Internal(anyhow::anyhow!("{what}"));
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _ = done.send(job());
        });
        // The channel holds as many jobs as the queue has places: never full here.
        self.jobs
            .try_send(job)
            .map_err(|_| internal("the password hashing threads are gone"))?;
        result
            .await
            .map_err(|_| internal("a password hashing job was dropped"))
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
