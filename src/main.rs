use std::process::ExitCode;

use clap::Parser;
use tandem::config::{Cli, Command, LogFormat, ModelsCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let outcome = match &cli.command {
        Command::Serve(args) => tandem::cli::serve::serve(args).map(|()| true),
        Command::Worker(args) => tandem::cli::serve::worker(args).map(|()| true),
        Command::Classify(args) => tandem::cli::classify::run(args),
        Command::Eval(args) => tandem::cli::eval::run(args).map(|()| true),
        Command::Bench(args) => tandem::bench::run(args),
        Command::Models { command: ModelsCommand::Pull(args) } => tandem::models::pull::run(args).map(|()| true),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            // One line, the whole cause chain: no panic, no backtrace.
            eprintln!("tandem: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // One JSON object a line, fields at the top level, for log collectors.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => {
            // Colours only for a person at a terminal, not in log files and collectors.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).init();
        }
    }
}
