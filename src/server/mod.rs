//! The HTTP server: the router over the broker, binding, and graceful shutdown.

mod http1;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::broker::Broker;
use crate::config::Config;
use crate::config::ConfigError;
use crate::security::ConfiguredPolicy;
use crate::transport;
use crate::{api, demo, engine};

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
    let mut router = router.with_state(broker.clone());
    if config.demo && !path.is_empty() {
        router = router.merge(demo::routes(path));
    }
    if let Some(echo) = &config.websocket_echo_path {
        let echo = Router::new()
            .route(echo, any(transport::websocket::echo_endpoint))
            .with_state(broker.clone());
        router = router.merge(echo);
    }
    router = router.merge(api::health_routes(&broker));
    if let Some(api) = api::routes(&broker) {
        router = router.merge(api.layer(DefaultBodyLimit::max(config.max_body_bytes)));
    }
    router
}

/// A broker built from `config` with the transports this build serves, the configured
/// security policy and, when the demo is on, its presence service. [`app`] expects a
/// broker made here.
pub fn broker(config: Config) -> Result<Broker, ConfigError> {
    let policy = ConfiguredPolicy::is_active(&config.security)
        .then(|| ConfiguredPolicy::new(&config.security))
        .transpose()?;
    let demo = config.demo;
    let engine = engine::from_config(&config.engine)?;
    let connection_types = transport::connection_types(&config);
    let broker = Broker::with_engine(config, &connection_types, engine);
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
/// The accept loop is the mini-redis one: a semaphore caps open connections and each
/// connection is its own task, served by `http1.rs` (which enforces the header and body
/// timeouts and holds no buffer while a request is parked) or, for HTTP/2 prior
/// knowledge, by hyper. In-flight requests get `shutdown_timeout` ms after the signal;
/// then the server returns anyway, so a stuck client cannot keep the process alive.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = broker.config().clone();
    let app = app(broker.clone());
    let sweeper = broker.spawn_sweeper();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let header_timeout = Duration::from_millis(config.effective_header_timeout());
    let limits = http1::Limits {
        header_timeout,
        body_timeout: Duration::from_millis(config.body_timeout),
        max_body: config.max_body_bytes,
    };
    let (stop, stopping) = watch::channel(false);
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
        let (app, limits, stopping) = (app.clone(), limits.clone(), stopping.clone());
        tokio::spawn(async move {
            // The header timeout covers the first bytes too: a client that never sends
            // one would otherwise hold its connection (and permit) forever.
            let h2 =
                tokio::time::timeout(limits.header_timeout, http1::opens_with_h2_preface(&stream));
            match h2.await {
                Ok(Ok(Some(false))) => http1::serve(stream, app, limits, stopping).await,
                // Boxed: hyper's HTTP/2 connection state would otherwise double the size of
                // every connection task.
                Ok(Ok(Some(true))) => Box::pin(serve_h2(stream, app, &limits, stopping)).await,
                _ => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: answering held connects, refusing handshakes");
    broker.shutdown();
    let _ = stop.send(true);
    // Every connection holds a permit until it ends: having them all back means every
    // in-flight request was answered.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let deadline = Duration::from_millis(config.shutdown_timeout);
    if tokio::time::timeout(deadline, connections.acquire_many(all))
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

/// Serves an HTTP/2 connection (prior knowledge, as `curl --http2-prior-knowledge`;
/// browsers only speak HTTP/2 over TLS, i.e. through a proxy) with hyper's server.
async fn serve_h2(
    stream: TcpStream,
    app: Router,
    limits: &http1::Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let app = tower::ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(app);
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = stopping.wait_for(|stop| *stop) => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
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
    tracing::info!(%local, path = %config.path, timeout = config.timeout, max_interval = config.max_interval, delivery_interval = config.delivery_interval, "halley started");
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
