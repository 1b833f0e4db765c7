//! The `halley` server binary.

use std::process::ExitCode;

use clap::Parser;
use halley::config::{Args, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load(Args::parse()) {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match halley::server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("halley: {error}");
            ExitCode::FAILURE
        }
    }
}
