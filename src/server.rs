//! The HTTP server: the router over the broker, binding, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

use tower_http::trace::TraceLayer;

use crate::broker::Broker;
use crate::config::Config;
use crate::config::ConfigError;
use crate::security::ConfiguredPolicy;
use crate::transport::cors::{self, CorsPolicy};
use crate::transport::{self, CONNECTION_TYPES};
use crate::{api, demo};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[from] io::Error),
    /// The configuration cannot be put into effect.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The whole HTTP application for `broker`: the Bayeux endpoint at the configured path,
/// everything below it, and nothing else.
pub fn app(broker: Broker) -> Router {
    let config = broker.config();
    let path = config.path.trim_end_matches('/');
    let limit = DefaultBodyLimit::max(config.max_body_bytes);
    let endpoint = any(transport::endpoint);
    let router = if path.is_empty() {
        Router::new()
            .route("/", endpoint.clone())
            .route("/{*rest}", endpoint)
    } else {
        Router::new()
            .route(path, endpoint.clone())
            .route(&format!("{path}/"), endpoint.clone())
            .route(&format!("{path}/{{*rest}}"), endpoint)
    };
    let mut router = router
        .layer(limit)
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
            config.body_timeout,
        )))
        .layer(axum::middleware::from_fn_with_state(
            CorsPolicy::new(&config.allowed_origins),
            cors::cors,
        ))
        .with_state(broker.clone());
    if config.demo && !path.is_empty() {
        router = router.merge(demo::routes(path));
    }
    router = router.merge(api::health_routes(&broker));
    if let Some(api) = api::routes(&broker) {
        router = router.merge(api.layer(DefaultBodyLimit::max(config.max_body_bytes)));
    }
    router.layer(TraceLayer::new_for_http())
}

/// A broker built from `config` with the transports this build serves, the configured
/// security policy and, when the demo is on, its presence service. [`app`] expects a
/// broker made here.
pub fn broker(config: Config) -> Result<Broker, ConfigError> {
    let policy = ConfiguredPolicy::is_active(&config.security)
        .then(|| ConfiguredPolicy::new(&config.security))
        .transpose()?;
    let demo = config.demo;
    let broker = Broker::new(config, CONNECTION_TYPES);
    if let Some(policy) = policy {
        broker.set_policy(policy);
    }
    if demo {
        demo::install(&broker);
    }
    Ok(broker)
}

/// Serves `broker` on `listener` until `shutdown` completes; then answers every held
/// connect and finishes in-flight requests.
///
/// The accept loop is the mini-redis one: a semaphore caps open connections, each
/// connection is its own task, and hyper enforces the header-read timeout. In-flight
/// requests get `shutdown_timeout` ms after the signal; then the server returns anyway,
/// so a stuck client cannot keep the process alive.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = broker.config().clone();
    let app = app(broker.clone());
    let sweeper = broker.spawn_sweeper();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(config.effective_header_timeout());
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = config.max_connections,
                    "connection limit reached: closing new connections"
                );
            }
            continue;
        };
        tune(&stream, Duration::from_millis(config.tcp_keepalive));
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header timeout starts once it knows the protocol; a client that
            // never sends a byte would otherwise hold its connection (and permit) forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => return,
            }
            let mut builder = Builder::new(TokioExecutor::new());
            // hyper's smallest read buffer: a parked long poll costs 8 KiB less than with
            // the adaptive default, and Bayeux request headers are small.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(8 * 1024);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: answering held connects, refusing handshakes");
    broker.shutdown();
    let deadline = Duration::from_millis(config.shutdown_timeout);
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "shutdown deadline passed with requests in flight; exiting"
        );
    }
    sweeper.abort();
    Ok(())
}

/// Per-connection socket settings: no Nagle delay for small replies, and TCP keepalive
/// so a peer that vanished without a FIN (a half-open socket under a held connect) is
/// noticed after `idle` plus three unanswered probes, and its connection closed.
fn tune(stream: &tokio::net::TcpStream, idle: Duration) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 3).max(Duration::from_secs(1)))
        .with_retries(3);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Binds the configured address, announces it on stdout, and serves until SIGINT or
/// SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let addr = config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port when listening on port 0.
    println!("halley listening on http://{local}{}", config.path);
    tracing::info!(%local, path = %config.path, timeout = config.timeout, max_interval = config.max_interval, "halley started");
    let broker = broker(config)?;
    serve(listener, broker, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
