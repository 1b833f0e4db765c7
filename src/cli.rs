//! The `halley` command line: serve (the default) or publish through a running broker.

use std::io::Read;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::Args;

/// `halley [FLAGS]` serves; `halley publish …` publishes through a broker's HTTP API.
#[derive(Debug, Parser)]
#[command(
    name = "halley",
    version,
    about = "A Bayeux (CometD) pub/sub broker",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub serve: Args,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish one message through a running broker's HTTP API (POST /api/publish).
    Publish(PublishArgs),
}

/// `halley publish` arguments.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Base URL of the broker (its /api is used).
    #[arg(long, env = "HALLEY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key with the publish right.
    #[arg(long, env = "HALLEY_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Channel to publish on, e.g. /stocks/ACME.
    #[arg(long)]
    pub channel: String,
    /// The message data as JSON; `-` reads it from standard input.
    #[arg(long)]
    pub data: String,
    /// An `ext` object as JSON, forwarded to subscribers.
    #[arg(long)]
    pub ext: Option<String>,
}

/// Why `halley publish` failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `--data` or `--ext` is not JSON.
    #[error("{what} is not valid JSON: {source}")]
    Json {
        /// Which argument.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Standard input could not be read.
    #[error("cannot read data from standard input: {0}")]
    Stdin(std::io::Error),
    /// The request failed, or the broker refused it.
    #[error("{0}")]
    Http(String),
}

/// Publishes as `args` says; returns the broker's JSON answer.
pub fn publish(args: &PublishArgs) -> Result<Value, PublishError> {
    let text = if args.data == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(PublishError::Stdin)?;
        text
    } else {
        args.data.clone()
    };
    let data: Value = serde_json::from_str(&text).map_err(|source| PublishError::Json {
        what: "--data",
        source,
    })?;
    let mut body = json!({"channel": args.channel, "data": data});
    if let Some(ext) = &args.ext {
        body["ext"] = serde_json::from_str(ext).map_err(|source| PublishError::Json {
            what: "--ext",
            source,
        })?;
    }
    let url = format!("{}/api/publish", args.url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {}", args.key))
        .send_json(&body)
        .map_err(|e| PublishError::Http(format!("POST {url}: {e}")))?;
    let status = response.status();
    let answer: Value = response.body_mut().read_json().map_err(|e| {
        PublishError::Http(format!("POST {url}: HTTP {status}, unreadable answer: {e}"))
    })?;
    if !status.is_success() {
        let reason = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(PublishError::Http(format!(
            "POST {url}: HTTP {status}: {reason}"
        )));
    }
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(PublishError::Http(format!("not published: {error}")));
    }
    if answer.get("queued").is_none() {
        return Err(PublishError::Http(format!(
            "unexpected answer from {url}: {answer} (is --url the broker's base URL, without the Bayeux path?)"
        )));
    }
    Ok(answer)
}
