//! Model files: where they come from (`tandem models pull`).

pub mod pull;
