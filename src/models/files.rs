//! Which files a command's configuration uses, and what to tell a user when one is missing.
//!
//! Commands check their files before loading anything, so that a missing one is reported with
//! the hint that fits what is on disk rather than one fixed sentence:
//! - its directory does not exist, or holds no file of its kind: `tandem models pull` (when the
//!   file is one of the default set) or `--model-dir`;
//! - the directory holds other files of its kind: the flag that names this file
//!   (`--fast-model`, `--accurate-model`, `--labels`) and the files it could name.
//!
//! [`ensure`] is what `--pull-missing` adds: the missing files of the default set are
//! downloaded first ([`super::pull`]), and any other missing file is refused before anything is.

use std::path::{Path, PathBuf};

use super::pull::{DEFAULT_MODEL_FILES, OFFLINE_HINT, Puller};
use crate::engine::Tier;

/// How many candidate files a hint lists before it says "and N more".
const MAX_LISTED: usize = 12;

/// What a needed file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Model(Tier),
    /// The class-names file; its flag is `--labels` except in `tandem eval` (`--class-labels`).
    Labels {
        flag: &'static str,
    },
}

impl Role {
    fn what(self) -> &'static str {
        match self {
            Role::Model(Tier::Fast) => "fast-tier model file",
            Role::Model(Tier::Accurate) => "accurate-tier model file",
            Role::Labels { .. } => "labels file",
        }
    }

    /// The flag and environment variable that name the file.
    fn flag(self) -> (&'static str, &'static str) {
        match self {
            Role::Model(Tier::Fast) => ("--fast-model", "TANDEM_FAST_MODEL"),
            Role::Model(Tier::Accurate) => ("--accurate-model", "TANDEM_ACCURATE_MODEL"),
            Role::Labels { flag } => (flag, "TANDEM_LABELS"),
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Role::Model(_) => "onnx",
            Role::Labels { .. } => "txt",
        }
    }
}

/// One file a command needs, resolved against `--model-dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededFile {
    pub path: PathBuf,
    pub role: Role,
}

impl NeededFile {
    pub fn is_present(&self) -> bool {
        self.path.is_file()
    }

    /// Whether `tandem models pull` provides a file of this name.
    pub fn is_default(&self) -> bool {
        let name = self.path.file_name().and_then(|n| n.to_str());
        DEFAULT_MODEL_FILES.iter().any(|f| Some(f.file_name) == name)
    }

    /// The directory the file is looked for in.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }
}

/// The files a command uses: the labels (named by `labels_flag` in hints), then each tier's model.
pub fn needed(
    labels: PathBuf,
    labels_flag: &'static str,
    models: impl IntoIterator<Item = (Tier, PathBuf)>,
) -> Vec<NeededFile> {
    let mut files = vec![NeededFile { path: labels, role: Role::Labels { flag: labels_flag } }];
    files.extend(models.into_iter().map(|(tier, path)| NeededFile { path, role: Role::Model(tier) }));
    files
}

/// A needed file that is not there, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{what} {} not found ({hint})", path.display())]
pub struct MissingFile {
    what: &'static str,
    path: PathBuf,
    hint: String,
}

impl MissingFile {
    /// Looks at the file's directory to choose the hint.
    pub fn new(file: &NeededFile) -> Self {
        let dir = file.dir();
        let (flag, env) = file.role.flag();
        let ext = file.role.extension();
        let elsewhere = if file.is_default() {
            let pull = if dir == Path::new("models") {
                "tandem models pull".to_owned()
            } else {
                format!("tandem models pull --model-dir {}", dir.display())
            };
            format!(
                "run `{pull}` to download the default files, or point --model-dir (TANDEM_MODEL_DIR) at a directory that has them"
            )
        } else {
            format!("point --model-dir (TANDEM_MODEL_DIR) at the directory that has it, or pass {flag} with its path")
        };
        let hint = match candidates(dir, ext) {
            None => format!("{} does not exist: {elsewhere}", dir.display()),
            Some(found) if found.is_empty() => format!("{} has no .{ext} files: {elsewhere}", dir.display()),
            Some(found) => {
                let mut list = found.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join(", ");
                if found.len() > MAX_LISTED {
                    list.push_str(&format!(" and {} more", found.len() - MAX_LISTED));
                }
                format!("pass {flag} (or {env}) naming one of the .{ext} files in {}: {list}", dir.display())
            }
        };
        MissingFile { what: file.role.what(), path: file.path.clone(), hint }
    }
}

/// Plain files of `dir` ending in `.ext`, sorted; `None` if `dir` is not a readable directory.
/// Hidden files (such as an interrupted download's `.NAME.part`) are left out.
fn candidates(dir: &Path, ext: &str) -> Option<Vec<String>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && Path::new(name).extension().is_some_and(|e| e == ext))
        .collect();
    names.sort();
    Some(names)
}

/// The first needed file that is missing, as an error with its hint.
pub fn check(files: &[NeededFile]) -> Result<(), MissingFile> {
    match files.iter().find(|file| !file.is_present()) {
        Some(file) => Err(MissingFile::new(file)),
        None => Ok(()),
    }
}

/// Checks that the `needed` files are there, before anything loads. With `pull_from` (a base
/// URL: `--pull-missing`), first downloads those of them that are missing and named as in the
/// default set, into the directory each is expected in. A missing file that pulling cannot
/// provide fails with its hint before anything is downloaded (see [`MissingFile`]).
pub fn ensure(needed: &[NeededFile], pull_from: Option<&str>) -> anyhow::Result<()> {
    let Some(base_url) = pull_from else {
        return Ok(check(needed)?);
    };
    let missing: Vec<&NeededFile> = needed.iter().filter(|file| !file.is_present()).collect();
    if let Some(other) = missing.iter().find(|file| !file.is_default()) {
        return Err(MissingFile::new(other).into());
    }
    for file in missing {
        let Some(name) = file.path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(entry) = DEFAULT_MODEL_FILES.iter().find(|f| f.file_name == name) else { continue };
        let puller = Puller::new(base_url, file.dir())?.with_progress(true);
        // Two tiers may name the same file: the second pull finds it present.
        match puller.pull_file(entry) {
            Ok(outcome) => tracing::info!(file = %file.path.display(), "--pull-missing: {}", outcome.describe()),
            Err(err) => {
                anyhow::bail!(
                    "--pull-missing: {}: {:#} ({OFFLINE_HINT})",
                    file.path.display(),
                    anyhow::Error::from(err)
                )
            }
        }
    }
    Ok(check(needed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tandem-files-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn message(path: PathBuf, role: Role) -> String {
        MissingFile::new(&NeededFile { path, role }).to_string()
    }

    #[test]
    fn a_missing_directory_suggests_pulling_or_model_dir() {
        let dir = std::env::temp_dir().join(format!("tandem-files-none-{}", uuid::Uuid::new_v4().simple()));
        let text = message(dir.join("resnet50.onnx"), Role::Model(Tier::Accurate));
        let dir = dir.display();
        assert_eq!(
            text,
            format!(
                "accurate-tier model file {dir}/resnet50.onnx not found ({dir} does not exist: run `tandem models \
                 pull --model-dir {dir}` to download the default files, or point --model-dir (TANDEM_MODEL_DIR) at a \
                 directory that has them)"
            )
        );
        let text = message(PathBuf::from("/nonexistent/mine.onnx"), Role::Model(Tier::Fast));
        assert!(text.contains("/nonexistent does not exist") && text.contains("--fast-model"), "{text}");
        assert!(!text.contains("models pull"), "pulling cannot provide mine.onnx: {text}");
    }

    #[test]
    fn a_directory_with_other_models_names_the_tier_flag_and_lists_them() {
        let dir = temp_dir("list");
        for name in ["b.onnx", "a.onnx", "notes.md", ".a.onnx.1234.part", "imagenet_classes.txt"] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let text = message(dir.join("resnet50.onnx"), Role::Model(Tier::Accurate));
        let labels = message(dir.join("labels.txt"), Role::Labels { flag: "--class-labels" });
        let empty = temp_dir("empty");
        let none = message(empty.join("resnet50.onnx"), Role::Model(Tier::Accurate));
        let _ = (std::fs::remove_dir_all(&dir), std::fs::remove_dir_all(&empty));

        assert!(
            text.ends_with(&format!(
                "(pass --accurate-model (or TANDEM_ACCURATE_MODEL) naming one of the .onnx files in {}: a.onnx, b.onnx)",
                dir.display()
            )),
            "{text}"
        );
        assert!(!text.contains("models pull") && !text.contains("--model-dir"), "{text}");
        assert!(
            labels.contains("pass --class-labels (or TANDEM_LABELS)") && labels.contains(": imagenet_classes.txt)")
        );
        assert!(none.contains("has no .onnx files: run `tandem models pull --model-dir"), "{none}");
    }
}
