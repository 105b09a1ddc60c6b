//! Model files: where they come from (`tandem models pull`) and whether a configuration's are
//! there (`files`).

pub mod files;
pub mod pull;
