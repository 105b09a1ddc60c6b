//! What makes two answers the same answer: the image's bytes and the model that read them.
//!
//! The result cache and the in-flight dedupe key on these, never on a request or a job: a
//! [`ContentHash`] names the bytes (SHA-256: computed on the request's path, so it must be
//! cheap, and collision-free, so two different images never share an answer), and a
//! [`ModelIdentity`] names everything an answer depends on besides them: the model file's
//! bytes, its preprocessing, its labels and how many classes it keeps. A model file changed on
//! disk, or a flag changed, gives a new identity at the next start, so no earlier answer is
//! ever served for it.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The SHA-256 of an image's encoded bytes, as they came in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, as it appears in cache keys.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.hex())
    }
}

/// A model as it answers: a short hash of its file and of the settings its answers depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelIdentity(String);

impl ModelIdentity {
    /// Hashes the model file (read in chunks: a large model is not held twice in memory) and
    /// `settings`, which the caller makes from everything else the output depends on. Their text
    /// need only be stable within one build: a different text gives only a cache miss.
    pub fn of_file(path: &Path, settings: &str) -> std::io::Result<Self> {
        let mut hasher = Sha256::new();
        let mut file = std::fs::File::open(path)?;
        let mut chunk = vec![0; 1 << 20];
        loop {
            let read = file.read(&mut chunk)?;
            if read == 0 {
                break;
            }
            hasher.update(&chunk[..read]);
        }
        hasher.update(b"\0");
        hasher.update(settings.as_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        // 128 bits: no two models a deployment sees collide, and keys stay short.
        Ok(Self(hex(&digest[..16])))
    }

    /// An identity read back from where it was stored (Redis).
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_is_sha256() {
        // The SHA-256 of "abc" (FIPS 180-2's first example).
        assert_eq!(ContentHash::of(b"abc").hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_identity_changes_with_the_file_and_with_the_settings() {
        let dir = std::env::temp_dir().join(format!("tandem-fingerprint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("model.onnx");
        std::fs::write(&path, b"weights").expect("write");
        let first = ModelIdentity::of_file(&path, "resize 256").expect("hash");
        assert_eq!(first, ModelIdentity::of_file(&path, "resize 256").expect("hash"));
        assert_ne!(first, ModelIdentity::of_file(&path, "resize 320").expect("hash"));
        std::fs::write(&path, b"weights, retrained").expect("write");
        assert_ne!(first, ModelIdentity::of_file(&path, "resize 256").expect("hash"));
        assert_eq!(first.as_str().len(), 32);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
