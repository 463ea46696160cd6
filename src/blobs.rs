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

    /// The blob name of the export file written by one attempt of an operation. Each
    /// attempt writes its own file, so a stale worker that resumes after a takeover
    /// can never overwrite the file another attempt completed; only the file named in
    /// the fenced completion (`output_blob`) is ever served.
    pub fn export_name(operation_id: Uuid, attempt: i64, extension: &str) -> String {
        format!("exports/{operation_id}.a{attempt}.{extension}.enc")
    }

    /// Removes the export files of an operation's attempts except `keep` (the
    /// published one): what crashed or stale attempts left.
    pub fn remove_exports_except(&self, operation_id: Uuid, keep: Option<&str>) {
        self.remove_exports_matching(&format!("{operation_id}.a"), keep);
    }

    /// Removes the export file of one attempt (it lost its lease or was cancelled).
    pub fn remove_export_attempt(&self, operation_id: Uuid, attempt: i64) {
        self.remove_exports_matching(&format!("{operation_id}.a{attempt}."), None);
    }

    fn remove_exports_matching(&self, prefix: &str, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(self.root.join("exports")) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let name = format!("exports/{file_name}");
            if file_name.starts_with(prefix) && keep != Some(name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The path of a blob; names come from the two functions above, never from users.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
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
    }
}
