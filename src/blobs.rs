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

    /// Creates the directories blobs go into.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join("uploads"))?;
        std::fs::create_dir_all(self.root.join("exports"))
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
