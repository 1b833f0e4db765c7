//! `loadgen`: a Bayeux load generator. Each simulated client is a real long-polling client
//! with its own TCP connection and cookie jar, or (`--transport websocket`) a WebSocket
//! client with its own socket; every workload prints one JSON line of results on stdout.
//! See bench/README.md.

mod client;
mod common;
mod workloads;
mod ws;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Bayeux load generator (long-polling or WebSocket)"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

/// Options every workload takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The Bayeux endpoint, e.g. http://127.0.0.1:8080/cometd
    #[arg(long)]
    pub url: String,
    /// Server process id, for its RSS (/proc/PID/status)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// URL answering `{"sessions":N}` (Halley: http://HOST:PORT/api/stats)
    #[arg(long)]
    pub stats_url: Option<String>,
    /// Bearer key for --stats-url
    #[arg(long)]
    pub stats_key: Option<String>,
    /// Clients per source address (127.0.0.1, then 127.0.0.2, …)
    #[arg(long, default_value_t = 20_000)]
    pub per_ip: usize,
    /// A label copied into the JSON line (e.g. the server's name)
    #[arg(long, default_value = "")]
    pub label: String,
    /// How the clients talk to the server
    #[arg(long, value_enum, default_value_t = Transport::LongPolling)]
    pub transport: Transport,
}

/// The Bayeux connection type the simulated clients use.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// An HTTP POST per batch, `/meta/connect` held (fanout, rooms, idle, churn)
    LongPolling,
    /// One socket per client, deliveries pushed as frames (fanout, rooms, idle)
    Websocket,
    /// Faye's: a `text/event-stream` response per client, requests over HTTP (idle)
    Eventsource,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::LongPolling => "long-polling",
            Transport::Websocket => "websocket",
            Transport::Eventsource => "eventsource",
        }
    }
}

#[derive(Subcommand)]
enum Workload {
    /// S subscribers on one channel, one publisher.
    Fanout(workloads::FanoutArgs),
    /// CometD's benchmark: clients in rooms publishing to each other.
    Rooms(workloads::RoomsArgs),
    /// N clients parked in /meta/connect: server RSS per client.
    Idle(workloads::IdleArgs),
    /// Clients that come, poll and leave or vanish: do sessions and RSS come back?
    Churn(workloads::ChurnArgs),
}

fn main() {
    let cli = Cli::parse();
    let nofile = common::raise_nofile();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    common::now_us();
    let (name, opts) = match &cli.workload {
        Workload::Fanout(a) => ("fanout", a.common.clone()),
        Workload::Rooms(a) => ("rooms", a.common.clone()),
        Workload::Idle(a) => ("idle", a.common.clone()),
        Workload::Churn(a) => ("churn", a.common.clone()),
    };
    let transport = opts.transport;
    let result = runtime.block_on(async move {
        if opts.transport == Transport::Eventsource && name != "idle" {
            return serde_json::json!({
                "workload": name,
                "label": opts.label,
                "unavailable": "eventsource runs the idle workload only",
            });
        }
        if opts.transport == Transport::Websocket {
            // A server without WebSocket gets one clear line instead of N failed clients.
            let unavailable = if name == "churn" {
                Err("churn runs over long-polling only".to_string())
            } else {
                ws::probe(common::shared_target(&opts.url)).await
            };
            if let Err(reason) = unavailable {
                return serde_json::json!({
                    "workload": name,
                    "label": opts.label,
                    "unavailable": reason,
                });
            }
        }
        match cli.workload {
            Workload::Fanout(args) => workloads::fanout(args).await,
            Workload::Rooms(args) => workloads::rooms(args).await,
            Workload::Idle(args) => workloads::idle(args, nofile).await,
            Workload::Churn(args) => workloads::churn(args).await,
        }
    });
    let mut result = result;
    if let Some(fields) = result.as_object_mut() {
        fields.insert("transport".into(), transport.name().into());
    }
    println!("{result}");
    // Do not wait for lingering client tasks.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
}
