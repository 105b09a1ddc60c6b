//! How `serve -h` and `worker -h` are laid out: their options under headings, Essentials first.
//!
//! Those two commands have too many options for one flat list. [`SERVE_HEADINGS`] names each
//! option (by clap id, which a renamed flag keeps) under its heading; [`with_headings`] applies
//! it. The tests here also hold every subcommand's help to the rule that measured figures stay
//! out of it (they go in docs/PERFORMANCE.md, where they can be re-measured).

/// The `serve` and `worker` option headings and their options, in the order `-h` shows them. An
/// option not listed here is shown under "Options" (and fails a unit test: give it a heading).
pub const SERVE_HEADINGS: &[(&str, &[&str])] = &[
    ("Essentials", &["addr", "metrics_addr", "model_dir", "fast_model", "accurate_model", "redis_url"]),
    (
        "Models",
        &[
            "labels",
            "pull_missing",
            "models_base_url",
            "fast_resize",
            "fast_crop",
            "accurate_resize",
            "accurate_crop",
            "mean",
            "std",
        ],
    ),
    (
        "Queue",
        &[
            "redis_prefix",
            "redis_wait_replicas",
            "redis_wait_timeout",
            "max_queue",
            "max_queue_bytes",
            "result_ttl",
            "max_attempts",
            "reclaim_after",
        ],
    ),
    ("Cascade and cache", &["refine_below", "cache_ttl", "cache_entries"]),
    (
        "Limits",
        &[
            "max_inflight",
            "max_body",
            "request_timeout",
            "body_timeout",
            "header_timeout",
            "drain_timeout",
            "max_wait",
            "max_watchers",
            "max_uploads",
            "upload_memory",
            "max_pixels",
            "decode_memory",
        ],
    ),
    ("Access", &["api_keys", "protect_health", "protect_metrics", "cors_origins"]),
    ("Webhooks", &["webhook_allow", "webhook_secret", "webhook_attempts", "webhook_timeout", "webhook_concurrency"]),
    (
        "Tuning",
        &[
            "intra_threads",
            "fast_lanes",
            "fast_spin",
            "max_batch",
            "max_batch_delay_ms",
            "fast_nice",
            "concurrency",
            "accurate_max_batch",
            "accurate_max_batch_delay_ms",
            "accurate_priority",
        ],
    ),
];

/// Puts a command's options under [`SERVE_HEADINGS`], in its order. `mut_arg` moves an option to
/// the end, so visiting them in the table's order orders the headings (clap shows them in order
/// of first use); `display_order` orders the options within each.
pub fn with_headings(mut cmd: clap::Command) -> clap::Command {
    let ids = SERVE_HEADINGS.iter().flat_map(|&(heading, ids)| ids.iter().map(move |&id| (heading, id)));
    for (order, (heading, id)) in ids.enumerate() {
        if cmd.get_arguments().any(|arg| arg.get_id() == id) {
            cmd = cmd.mut_arg(id, |arg| arg.help_heading(heading).display_order(order));
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::cli::Cli;

    /// `serve -h` and `worker -h` group every option under a heading, Essentials first.
    #[test]
    fn serve_and_worker_options_are_grouped_essentials_first() {
        let mut cmd = Cli::command();
        cmd.build();
        for name in ["serve", "worker"] {
            let Some(sub) = cmd.find_subcommand(name) else { panic!("no {name} subcommand") };
            let unlisted: Vec<_> = sub
                .get_arguments()
                .filter(|a| !a.is_positional() && a.get_id() != "help" && a.get_help_heading().is_none())
                .map(|a| a.get_id().to_string())
                .collect();
            assert!(unlisted.is_empty(), "{name}: add these to SERVE_HEADINGS: {unlisted:?}");
            let short = sub.clone().render_help().to_string();
            let essentials = short.find("Essentials:").unwrap_or(usize::MAX);
            let models = short.find("Models:").unwrap_or(0);
            assert!(essentials < models, "{name} -h:\n{short}");
            assert!(short.find("--model-dir").is_some_and(|at| at > essentials && at < models), "{short}");
        }
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").map(|c| c.render_help().to_string()).unwrap_or_default();
        assert!(serve.lines().count() < 130, "serve -h is {} lines:\n{serve}", serve.lines().count());
    }

    /// Measured figures belong in docs/PERFORMANCE.md, not in help texts: every command's
    /// `--help`, the top level's and each subcommand's, down to `models pull`.
    #[test]
    fn no_help_text_holds_a_measured_figure() {
        fn walk(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
            let long = cmd.clone().render_long_help().to_string();
            let lower = long.to_lowercase();
            for figure in ["%", " ms ", " ms)", "measured"] {
                if lower.contains(figure) {
                    found.push(format!("{path} --help has a figure ({figure:?}):\n{long}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|sub| sub.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut found = Vec::new();
        walk(&cmd, "tandem", &mut found);
        assert!(found.is_empty(), "{}", found.join("\n"));
        let names: Vec<_> = cmd.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
        for name in ["serve", "worker", "classify", "eval", "bench", "models"] {
            assert!(names.iter().any(|n| n == name), "{name} is not walked: {names:?}");
        }
    }
}
