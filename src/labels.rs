//! Class labels: one per line, line `i` naming class index `i`.
//!
//! Accepts both plain lines (`tench, Tinca tinca`) and the synset form that the ONNX model
//! zoo ships (`n01440764 tench, Tinca tinca`), where the WordNet id is dropped.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("labels file {path} has no labels")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    pub fn load(path: &Path) -> Result<Self, LabelsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LabelsError::Read { path: path.to_owned(), source })?;
        let labels = Self::parse(&text);
        if labels.is_empty() {
            return Err(LabelsError::Empty { path: path.to_owned() });
        }
        Ok(labels)
    }

    pub fn parse(text: &str) -> Self {
        let names = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| strip_synset(line).to_owned())
            .collect();
        Self { names }
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

    #[test]
    fn shared_label_files_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
        let (Ok(a), Ok(b)) =
            (Labels::load(&dir.join("imagenet_classes.txt")), Labels::load(&dir.join("imagenet_synsets.txt")))
        else {
            panic!("../shared/models label files are missing");
        };
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
    }
}
