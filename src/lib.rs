//! Tandem: time-lagged image inference.
//!
//! A fast model answers a request at once; the same image is queued for a slower, more
//! accurate model that refines the answer in the background, read back as a job.
//!
//! The modules form layers; each imports from its own layer or those below, and no import arrow
//! points back up (`tests/layers.rs` checks that there is no cycle):
//!
//! 1. `cli`: the command tree (`serve`, `worker`, `classify`, `eval`, `models pull`), the only
//!    place that knows clap. Each subcommand turns its flags into the plain config structs of
//!    the layers below; `cli::tiers` builds a tier's whole settings; `cli::bench` is
//!    `tandem bench`, a load generator that reads the API's own wire types.
//! 2. `api` (the HTTP service: routes, limits, errors and their one mapping to HTTP) and
//!    `worker` (jobs from the queue through the accurate tier); `shutdown` (Ctrl-C / SIGTERM),
//!    which `serve` and `worker` wait on to stop them.
//! 3. `queue`: where jobs wait, embedded in the process or in Redis Streams, over `jobs`: the
//!    job record they share; `models`: the model files (pulling them, checking they are there).
//! 4. `engine`: a tier's model on its own inference threads (batching, lanes, priority), fed
//!    through a small `Classifier` handle; `engine::Tier` names the two tiers.
//! 5. `pipeline` (untrusted image bytes → normalized tensor), `labels` (class names), `metrics`
//!    (series names and registration), `fingerprint` (what names an image and a model, for the
//!    result cache) and `cache` (a bounded in-memory cache of answers).

pub mod api;
pub mod cache;
pub mod cli;
pub mod engine;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzz;
pub mod jobs;
pub mod labels;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod queue;
pub mod shutdown;
pub mod webhooks;
pub mod worker;
