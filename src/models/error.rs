//! What can go wrong while pulling a model file, each case with what a user needs to see:
//! the URL (and where it redirected), the expected and received size or hash, the path and what
//! could not be done to it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What can go wrong while pulling one file.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: &'static str },

    #[error("invalid file name {0:?} in the model table: it must be a plain file name")]
    InvalidFileName(String),

    #[error("{}: exists but is not a regular file", path.display())]
    NotAFile { path: PathBuf },

    #[error("GET {url} failed")]
    Request {
        url: String,
        #[source]
        source: ureq::Error,
    },

    #[error("GET {url} returned HTTP {status}{}", redirected_note(url, final_url))]
    HttpStatus { url: String, final_url: String, status: String },

    #[error("{file}: size mismatch for {url}: expected {expected} bytes, got {got}")]
    SizeMismatch { file: String, url: String, expected: u64, got: ReceivedSize },

    #[error("{file}: sha256 mismatch for {url}: expected {expected}, got {actual}")]
    ShaMismatch { file: String, url: String, expected: String, actual: String },

    #[error("{file}: reading the download from {url} failed")]
    Download {
        file: String,
        url: String,
        #[source]
        source: io::Error,
    },

    #[error("{}: cannot {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

fn redirected_note(url: &str, final_url: &str) -> String {
    if url == final_url { String::new() } else { format!(" (redirected to {final_url})") }
}

/// How many bytes the server sent (or announced) when that was not the expected size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivedSize {
    /// The `Content-Length` header announced this many; nothing was written.
    Announced(u64),
    /// The body ended after this many bytes.
    Received(u64),
    /// The body went on past this many bytes; the download was stopped there.
    MoreThan(u64),
}

impl fmt::Display for ReceivedSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceivedSize::Announced(n) => write!(f, "Content-Length {n}"),
            ReceivedSize::Received(n) => write!(f, "{n} bytes"),
            ReceivedSize::MoreThan(n) => write!(f, "more than {n} bytes"),
        }
    }
}
