//! The blob store: encrypted uploads and exports as files under one directory.
//! Every blob is encrypted with the master key; its name is bound in as associated
//! data, so a blob cannot be passed off as another.

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Files under a directory, named by operation.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlobStore { root: root.into() }
    }

    /// Creates the directories blobs go into, owner-only (0700), and narrows them to
    /// that when an earlier version created them open to others: the file names are
    /// operation ids, and nobody else has any business listing them.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for dir in [
            self.root.clone(),
            self.root.join("uploads"),
            self.root.join("exports"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The blob name of an operation's uploaded file.
    pub fn upload_name(operation_id: Uuid) -> String {
        format!("uploads/{operation_id}.csv.enc")
    }

    /// The blob name of an operation's export file.
    pub fn export_name(operation_id: Uuid, extension: &str) -> String {
        format!("exports/{operation_id}.{extension}.enc")
    }

    /// The path of a blob; names come from the two functions above, never from users.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A sibling path to write to before an atomic rename into place.
    pub fn partial_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.partial"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The associated data binding a blob's ciphertext to its name.
    pub fn aad(name: &str) -> Vec<u8> {
        format!("haven-blob:{name}").into_bytes()
    }

    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
        let _ = std::fs::remove_file(self.partial_path(name));
    }
}
