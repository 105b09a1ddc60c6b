//! Tandem: time-lagged image inference.
//!
//! A fast model answers a request at once; the same image is queued for a slower, more
//! accurate model that refines the answer in the background. Data flows one way:
//!
//! `pipeline` (bytes → tensor) → `engine` (tensor → prediction, on dedicated threads)
//! → CLI commands (`cli`), and later the HTTP API and the worker.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod jobs;
pub mod labels;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod queue;
pub mod worker;
