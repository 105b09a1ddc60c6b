//! Class labels: one per line, line `i` naming class index `i`.
//!
//! Accepts both plain lines (`tench, Tinca tinca`) and the synset form that the ONNX model
//! zoo ships (`n01440764 tench, Tinca tinca`), where the WordNet id is dropped.

use std::path::{Path, PathBuf};

/// The I/O cause is part of the message and not a `source()`: callers print errors with their
/// cause chain (`{:#}`), and a cause in both would be printed twice.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error(
        "labels file {} not found (run `tandem models pull`, or pass --model-dir / TANDEM_MODEL_DIR)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot read labels file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("labels file {} has no labels", path.display())]
    Empty { path: PathBuf },
}

/// Class names, and the file they came from (for messages such as a class-count mismatch).
#[derive(Debug, Clone)]
pub struct Labels {
    names: Vec<String>,
    path: Option<PathBuf>,
}

/// Two label sets are equal when they name the same classes, wherever they were read from.
impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Labels {
    pub fn load(path: &Path) -> Result<Self, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|cause| match cause.kind() {
            std::io::ErrorKind::NotFound => LabelsError::Missing { path: path.to_owned() },
            _ => LabelsError::Read { path: path.to_owned(), cause },
        })?;
        let mut labels = Self::parse(&text);
        if labels.is_empty() {
            return Err(LabelsError::Empty { path: path.to_owned() });
        }
        labels.path = Some(path.to_owned());
        Ok(labels)
    }

    /// The file these labels were loaded from (none for [`Labels::parse`]d text).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn parse(text: &str) -> Self {
        let names = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| strip_synset(line).to_owned())
            .collect();
        Self { names, path: None }
    }

    /// Every class's name, in class order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The label of `class_index`; an index past the end names itself rather than panicking.
    pub fn name(&self, class_index: usize) -> String {
        self.names.get(class_index).cloned().unwrap_or_else(|| format!("class {class_index}"))
    }
}

/// `n01440764 tench, Tinca tinca` → `tench, Tinca tinca`; any other line is returned as is.
fn strip_synset(line: &str) -> &str {
    match line.split_once(' ') {
        Some((wnid, rest))
            if wnid.len() == 9 && wnid.starts_with('n') && wnid[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            rest.trim_start()
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_synset_lines_give_the_same_labels() {
        let plain = Labels::parse("tench, Tinca tinca\ngoldfish, Carassius auratus\n");
        let synset = Labels::parse("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n");
        assert_eq!(plain, synset);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain.name(1), "goldfish, Carassius auratus");
    }

    #[test]
    fn a_label_that_merely_starts_with_n_is_kept_whole() {
        let labels = Labels::parse("nematode, nematode worm\n");
        assert_eq!(labels.name(0), "nematode, nematode worm");
    }

    /// The shared test data: `TANDEM_SHARED_DIR`, else `../shared` beside the repository (as in
    /// `tests/common`).
    fn shared_dir() -> PathBuf {
        std::env::var_os("TANDEM_SHARED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
    }

    #[test]
    fn shared_label_files_agree() {
        let dir = shared_dir().join("models");
        let (Ok(a), Ok(b)) =
            (Labels::load(&dir.join("imagenet_classes.txt")), Labels::load(&dir.join("imagenet_synsets.txt")))
        else {
            panic!("{}: label files are missing", dir.display());
        };
        assert_eq!(a.path(), Some(dir.join("imagenet_classes.txt").as_path()));
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
    }

    #[test]
    fn a_missing_file_is_one_line_with_a_hint_and_the_cause_once() {
        let Err(err) = Labels::load(Path::new("/nonexistent/labels.txt")) else { panic!("loaded a missing file") };
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("/nonexistent/labels.txt") && message.contains("tandem models pull"), "{message}");
        assert!(message.contains("--model-dir") && !message.contains('\n'), "{message}");

        // Another I/O error (a directory is not readable as text) names its cause exactly once.
        let Err(err) = Labels::load(Path::new("/")) else { panic!("read a directory as labels") };
        let message = format!("{:#}", anyhow::Error::from(err));
        let cause = std::fs::read_to_string("/").map(|_| ()).expect_err("a directory").to_string();
        assert_eq!(message.matches(&cause).count(), 1, "{message}");
    }
}
