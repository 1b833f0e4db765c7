//! The `halley` binary: serves the broker, or publishes through one (`halley publish`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use halley::cli::{Cli, Command};
use halley::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish(args)) => match halley::cli::publish(&args) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("halley publish: {error}");
                ExitCode::FAILURE
            }
        },
        None => serve(Config::load(cli.serve)),
    }
}

#[tokio::main]
async fn serve(config: Result<Config, halley::config::ConfigError>) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            eprintln!("halley: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("halley: invalid log level {:?}: {error}", config.log_level);
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        // Flattened: an event's fields (client_id, channel, outcome…) sit beside
        // `message` at the top level, where log shippers index them.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match halley::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("halley: {error}");
            ExitCode::FAILURE
        }
    }
}
