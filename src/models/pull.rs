//! `tandem models pull`: downloads the default model set with sha256 checks.
//!
//! Each file is streamed to a temporary file in the target directory (`.NAME.<uuid>.part`) while
//! it is hashed, fsynced, checked against the expected size and sha256, and only then renamed to
//! its final name, so a final name never holds a partial or corrupted download. Whatever goes
//! wrong, the temporary file is removed.
//!
//! A file whose final name already exists with the expected size is skipped without being read
//! again; `--verify` re-hashes such files. A present file with the wrong size (or, under
//! `--verify`, the wrong sha256) is downloaded again and atomically replaced.
//!
//! `--pull-missing` of the commands that load models ([`super::files::ensure`]) uses the same
//! [`Puller`] for only the default files a configuration uses and lacks, so `scripts/run.sh`
//! need not guess. The command line of `tandem models pull` is `cli::models`.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::ResponseExt;
use ureq::http::Uri;

pub use super::error::{PullError, ReceivedSize};
use super::part_file::{TempFile, sync_dir};

/// Where the default model set is downloaded from; each [`ModelFile::url_path`] is appended to it.
pub const DEFAULT_BASE_URL: &str = "https://github.com/onnx/models/raw/main/validated/vision/classification/";

/// One file to download: where it lives under the base URL, what it is called locally, and what
/// it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFile {
    /// Path relative to the base URL.
    pub url_path: &'static str,
    /// Plain file name (no directories) inside the model directory.
    pub file_name: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: &'static str,
}

/// The default model set: the fast model, the accurate model and the ImageNet labels.
pub const DEFAULT_MODEL_FILES: &[ModelFile] = &[
    ModelFile {
        url_path: "mobilenet/model/mobilenetv2-12.onnx",
        file_name: "mobilenet_v2.onnx",
        size: 13_964_571,
        sha256: "c0c3f76d93fa3fd6580652a45618618a220fced18babf65774ed169de0432ad5",
    },
    ModelFile {
        url_path: "resnet/model/resnet50-v2-7.onnx",
        file_name: "resnet50.onnx",
        size: 102_442_452,
        sha256: "79102261eb6e5fd7af5d27f41316293e388c5cb691e5d25bfb035c4f64fefe31",
    },
    ModelFile {
        url_path: "synset.txt",
        file_name: "imagenet_classes.txt",
        size: 31_675,
        sha256: "acf75ef0abe89694b19056e0796401068b459c457baa30335f240c7692857355",
    },
];

/// What pulling one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file was already present with the expected size; it was not read.
    Present { size: u64 },
    /// The file was already present and its sha256 matched (`--verify`).
    Verified { size: u64 },
    /// The file was downloaded and verified; `replaced` says why a present file was replaced.
    Downloaded { size: u64, replaced: Option<Stale> },
}

/// Why a file already present was downloaded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// It had this many bytes.
    WrongSize(u64),
    /// It had the expected size but this sha256 (`--verify`).
    WrongSha256(String),
}

impl Outcome {
    /// One line for the user, without the file name.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Present { size } => {
                format!("already present ({size} bytes, size ok; sha256 not re-checked, see --verify), skipped")
            }
            Outcome::Verified { size } => format!("already present ({size} bytes, sha256 ok), skipped"),
            Outcome::Downloaded { size, replaced: None } => format!("downloaded {size} bytes, sha256 ok"),
            Outcome::Downloaded { size, replaced: Some(Stale::WrongSize(had)) } => {
                format!("replaced a present file of {had} bytes: downloaded {size} bytes, sha256 ok")
            }
            Outcome::Downloaded { size, replaced: Some(Stale::WrongSha256(had)) } => {
                format!("replaced a present file with sha256 {had}: downloaded {size} bytes, sha256 ok")
            }
        }
    }
}

/// Downloads [`ModelFile`]s from one base URL into one directory.
#[derive(Debug)]
pub struct Puller {
    agent: ureq::Agent,
    base_url: String,
    model_dir: PathBuf,
    verify: bool,
    progress: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 256 * 1024;

impl Puller {
    /// A puller for `base_url` (http or https; a missing trailing `/` is added) into `model_dir`.
    /// Progress bars are off until [`Puller::with_progress`]; present files are not re-hashed
    /// until [`Puller::with_verify`].
    pub fn new(base_url: &str, model_dir: impl Into<PathBuf>) -> Result<Self, PullError> {
        let invalid = |reason| PullError::InvalidBaseUrl { url: base_url.to_owned(), reason };
        let uri: Uri = base_url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(invalid("it must start with http:// or https://")),
        }
        let host = uri.host().ok_or_else(|| invalid("it has no host"))?;
        if uri.query().is_some() {
            return Err(invalid("it must not have a query string"));
        }
        let mut base_url = base_url.to_owned();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }

        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(10)
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_send_request(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT));
        if is_loopback(host) {
            // A local mirror is never reached through an HTTP(S)_PROXY from the environment.
            config = config.proxy(None);
        }
        Ok(Puller {
            agent: config.build().new_agent(),
            base_url,
            model_dir: model_dir.into(),
            verify: false,
            progress: false,
        })
    }

    /// Re-hash files already present instead of trusting their size.
    pub fn with_verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Draw progress bars on stderr (they stay hidden when stderr is not a terminal).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The URL `file` is downloaded from.
    pub fn url_for(&self, file: &ModelFile) -> String {
        format!("{}{}", self.base_url, file.url_path.trim_start_matches('/'))
    }

    /// Pulls every file, carrying on past failures; one result per file, in order.
    pub fn pull_all<'a>(&self, files: &'a [ModelFile]) -> Vec<(&'a ModelFile, Result<Outcome, PullError>)> {
        files.iter().map(|file| (file, self.pull_file(file))).collect()
    }

    /// Makes sure `file` is in the model directory: skips it if present (see [`Outcome`]),
    /// otherwise downloads, verifies and renames it into place.
    pub fn pull_file(&self, file: &ModelFile) -> Result<Outcome, PullError> {
        if file.file_name.is_empty()
            || file.file_name.starts_with('.')
            || Path::new(file.file_name).file_name() != Some(file.file_name.as_ref())
        {
            return Err(PullError::InvalidFileName(file.file_name.to_owned()));
        }
        let dest = self.model_dir.join(file.file_name);

        let mut replaced = None;
        match fs::metadata(&dest) {
            Ok(meta) if !meta.is_file() => return Err(PullError::NotAFile { path: dest }),
            Ok(meta) if meta.len() != file.size => replaced = Some(Stale::WrongSize(meta.len())),
            Ok(meta) if !self.verify => return Ok(Outcome::Present { size: meta.len() }),
            Ok(meta) => {
                let actual = self.hash_file(&dest, file)?;
                if actual.eq_ignore_ascii_case(file.sha256) {
                    return Ok(Outcome::Verified { size: meta.len() });
                }
                replaced = Some(Stale::WrongSha256(actual));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PullError::Io { path: dest, action: "read its metadata", source }),
        }
        if let Some(stale) = &replaced {
            tracing::warn!(file = file.file_name, ?stale, "present file does not match; downloading it again");
        }

        fs::create_dir_all(&self.model_dir).map_err(|source| PullError::Io {
            path: self.model_dir.clone(),
            action: "create the model directory",
            source,
        })?;
        self.download(file, &dest)?;
        Ok(Outcome::Downloaded { size: file.size, replaced })
    }

    fn progress_bar(&self, file: &ModelFile, verb: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(file.size), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("{verb} {}", file.file_name));
        bar
    }

    /// sha256 of a present file, as lowercase hex.
    fn hash_file(&self, path: &Path, file: &ModelFile) -> Result<String, PullError> {
        let io_err = |action, source| PullError::Io { path: path.to_owned(), action, source };
        let mut input = File::open(path).map_err(|e| io_err("open it to verify it", e))?;
        let bar = self.progress_bar(file, "verifying");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(io_err("read it to verify it", err)),
            };
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        Ok(hex(&hasher.finalize()))
    }

    fn download(&self, file: &ModelFile, dest: &Path) -> Result<(), PullError> {
        let url = self.url_for(file);
        let response = self.agent.get(&url).call().map_err(|source| PullError::Request { url: url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            return Err(PullError::HttpStatus {
                final_url: response.get_uri().to_string(),
                url,
                status: match status.canonical_reason() {
                    Some(reason) => format!("{} {reason}", status.as_u16()),
                    None => status.as_u16().to_string(),
                },
            });
        }
        let size_mismatch = |got| PullError::SizeMismatch {
            file: file.file_name.to_owned(),
            url: url.clone(),
            expected: file.size,
            got,
        };
        let body = response.into_body();
        if let Some(announced) = body.content_length()
            && announced != file.size
        {
            return Err(size_mismatch(ReceivedSize::Announced(announced)));
        }

        let temp = TempFile::create(&self.model_dir, file.file_name)?;
        let io_err = |action, source| PullError::Io { path: temp.path.clone(), action, source };
        let mut out = temp.file.as_ref().ok_or_else(|| io_err("write it", io::Error::other("already closed")))?;

        let bar = self.progress_bar(file, "downloading");
        let mut reader = body.into_reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut received: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    bar.abandon();
                    return Err(PullError::Download { file: file.file_name.to_owned(), url, source });
                }
            };
            received += n as u64;
            if received > file.size {
                bar.abandon();
                return Err(size_mismatch(ReceivedSize::MoreThan(file.size)));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| io_err("write it", e))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        if received != file.size {
            return Err(size_mismatch(ReceivedSize::Received(received)));
        }
        out.sync_all().map_err(|e| io_err("fsync it", e))?;
        let actual = hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(file.sha256) {
            return Err(PullError::ShaMismatch {
                file: file.file_name.to_owned(),
                url,
                expected: file.sha256.to_ascii_lowercase(),
                actual,
            });
        }
        temp.persist(dest)?;
        sync_dir(&self.model_dir);
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// What to do when a download fails: the network may be out of reach from here, while the files
/// may well be on disk already.
pub(super) const OFFLINE_HINT: &str = "check the network, or HTTPS_PROXY behind a proxy; to use model files you already \
have instead, point --model-dir / TANDEM_MODEL_DIR at their directory, with --fast-model, --accurate-model and \
--labels naming the files in it";

/// `tandem models pull`: pulls [`DEFAULT_MODEL_FILES`] from `base_url` into `model_dir`, one
/// status line per file on stderr; `verify` re-hashes the files already present.
pub fn pull_defaults(base_url: &str, model_dir: &Path, verify: bool) -> anyhow::Result<()> {
    let puller = Puller::new(base_url, model_dir)?.with_verify(verify).with_progress(true);
    let mut failed = Vec::new();
    for file in DEFAULT_MODEL_FILES {
        let dest = puller.model_dir().join(file.file_name);
        match puller.pull_file(file) {
            Ok(outcome) => eprintln!("{}: {}", dest.display(), outcome.describe()),
            Err(err) => {
                eprintln!("tandem: {}: FAILED: {:#}", dest.display(), anyhow::Error::from(err));
                failed.push(file.file_name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} model files failed: {} (tried from {}; {OFFLINE_HINT})",
            failed.len(),
            DEFAULT_MODEL_FILES.len(),
            failed.join(", "),
            puller.base_url,
        )
    }
}
