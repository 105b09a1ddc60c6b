//! Model files: where they come from (`tandem models pull`) and whether a configuration's are
//! there (`files`).

mod error;
pub mod files;
mod part_file;
pub mod pull;
