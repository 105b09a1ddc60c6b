//! Locating and loading the ONNX Runtime shared library (once per process).
//!
//! `ort` is built with `load-dynamic`: nothing is linked at build time, so a missing library is
//! a run-time condition we turn into one clear sentence instead of a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The folder `scripts/fetch-onnxruntime.sh` unpacks the library into.
pub const BUNDLED_DIR: &str = ".onnxruntime";
const LIBRARY_NAME: &str = "libonnxruntime.so";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked for {LIBRARY_NAME} in ORT_DYLIB_PATH, ./{BUNDLED_DIR}/ and beside the tandem binary); \
         run scripts/fetch-onnxruntime.sh or set ORT_DYLIB_PATH"
    )]
    NotFound,
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Environment, RuntimeError> {
    let path = locate_library()?;
    let load_error = |reason: String| RuntimeError::Load { path: path.clone(), reason };
    let builder = ort::init_from(&path).map_err(|e| load_error(e.to_string()))?;
    builder.with_name("tandem").build().map_err(|e| load_error(e.to_string()))
}

/// `ORT_DYLIB_PATH`, else `./.onnxruntime/`, else `.onnxruntime/` in a folder above the binary
/// (so `target/release/tandem` finds the copy at the repository root from any directory).
pub fn locate_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(RuntimeError::NotFound) };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_owned));
    }
    roots
        .iter()
        .map(|root| root.join(BUNDLED_DIR).join(LIBRARY_NAME))
        .find(|candidate| candidate.is_file())
        .ok_or(RuntimeError::NotFound)
}
