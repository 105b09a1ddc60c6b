//! The temporary file a download is written to: `.NAME.<uuid>.part` beside its final name,
//! renamed into place only once verified ([`TempFile::persist`]) and removed on drop otherwise,
//! so that a final name never holds a partial download, whatever goes wrong.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use super::error::PullError;

/// Makes the rename durable; best effort, as some filesystems refuse to fsync a directory.
pub(super) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A `.NAME.<uuid>.part` file next to the destination, removed on drop unless persisted.
pub(super) struct TempFile {
    pub path: PathBuf,
    pub file: Option<File>,
}

impl TempFile {
    pub fn create(dir: &Path, file_name: &str) -> Result<Self, PullError> {
        let path = dir.join(format!(".{file_name}.{}.part", uuid::Uuid::new_v4().simple()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(|source| PullError::Io {
            path: path.clone(),
            action: "create the temporary download file",
            source,
        })?;
        Ok(TempFile { path, file: Some(file) })
    }

    /// Closes the file and renames it to `dest`, replacing whatever is there.
    pub fn persist(mut self, dest: &Path) -> Result<(), PullError> {
        drop(self.file.take());
        fs::rename(&self.path, dest).map_err(|source| PullError::Io {
            path: dest.to_owned(),
            action: "rename the verified download into place",
            source,
        })?;
        // Renamed: nothing left to clean up.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
