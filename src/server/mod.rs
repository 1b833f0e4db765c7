//! The HTTP server: the router over the broker, binding, and graceful shutdown.

#[doc(hidden)]
pub mod http1;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::admin::{self, History};
use crate::broker::Broker;
use crate::config::Config;
use crate::config::ConfigError;
use crate::metrics::{Metrics, Refusal};
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

/// The metrics and admin-page history of one served broker, shared by the router, the
/// accept loop, the `--metrics-listen` listener and the sampler. The metrics are the
/// broker's own, so tests running several brokers in one process stay apart.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The samples the admin page charts.
    pub history: Arc<History>,
}

impl Telemetry {
    /// The telemetry of `broker`: its metrics and a fresh history.
    pub fn of(broker: &Broker) -> Telemetry {
        Telemetry {
            metrics: broker.metrics().clone(),
            history: Arc::default(),
        }
    }
}

/// The whole HTTP application for `broker`: the Bayeux endpoint at the configured path,
/// everything below it, and nothing else; with fresh [`Telemetry`].
pub fn app(broker: Broker) -> Router {
    let telemetry = Telemetry::of(&broker);
    app_with(broker, &telemetry)
}

/// [`app`] reporting into `telemetry`.
pub fn app_with(broker: Broker, telemetry: &Telemetry) -> Router {
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
    if let Some(api) = api::routes(&broker, &telemetry.metrics, &telemetry.history) {
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
    let engine = engine::from_config(&config)?;
    let connection_types = transport::connection_types(&config);
    let broker = Broker::with_engine(config, &connection_types, engine);
    if let Some(policy) = policy {
        policy.install(&broker);
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
    serve_with(listener, None, broker, shutdown).await
}

/// [`serve`], plus `GET /metrics` without a key on `metrics_listener` when given.
pub async fn serve_with(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let config = broker.config().clone();
    if let Ok(local) = listener.local_addr() {
        broker.advertise(&advertised_url(&config, local));
    }
    let telemetry = Telemetry::of(&broker);
    let app = app_with(broker.clone(), &telemetry);
    let sweeper = broker.spawn_sweeper();
    let sampler = admin::spawn_sampler(
        &broker,
        telemetry.metrics.clone(),
        telemetry.history.clone(),
    );
    let scrapes = metrics_listener.map(|listener| {
        let routes = api::metrics_routes(&broker, &telemetry.metrics);
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, routes).await {
                tracing::error!(%error, "metrics listener failed");
            }
        })
    });
    let coalescing = broker.spawn_coalescing();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let header_timeout = Duration::from_millis(config.effective_header_timeout());
    let limits = Arc::new(http1::Limits {
        header_timeout,
        body_timeout: Duration::from_millis(config.body_timeout),
        write_timeout: Duration::from_millis(config.write_timeout),
        max_body: config.max_body_bytes,
        held_path: Arc::from(config.path.trim_end_matches('/')),
        max_streams: u32::try_from(config.max_connections).unwrap_or(u32::MAX),
    });
    // Tells every connection to finish; the tracker knows when they all have.
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
            telemetry.metrics.refused(Refusal::Connections);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    remote = %peer,
                    max = config.max_connections,
                    "connection limit reached: closing new connections"
                );
            }
            continue;
        };
        tracing::trace!(target: "halley::http", remote = %peer, "connection accepted");
        tune(&stream, Duration::from_millis(config.tcp_keepalive));
        let (app, limits, stopping) = (app.clone(), limits.clone(), stopping.clone());
        let sockets = tracker.clone();
        tracker.spawn(async move {
            // The header timeout covers the first bytes too: a client that never sends
            // one would otherwise hold its connection (and permit) forever.
            let opening = tokio::time::timeout(limits.header_timeout, http1::opening(&stream));
            match opening.await {
                Ok(http1::Opening::Http1(read)) => {
                    if let Some(handover) = http1::serve(stream, read, app, limits, stopping).await
                    {
                        // A task of its own, holding the permit: this one's HTTP state goes.
                        sockets.spawn(async move {
                            handover.run().await;
                            drop(permit);
                        });
                        return;
                    }
                }
                // Boxed: hyper's HTTP/2 connection state would otherwise double the size of
                // every connection task.
                Ok(http1::Opening::H2(read)) => {
                    Box::pin(serve_h2(Rewind::new(read, stream), app, &limits, stopping)).await
                }
                Ok(http1::Opening::Closed) | Err(_) => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: answering held connects, refusing handshakes");
    broker.shutdown();
    stopping.cancel();
    // Every connection is a tracked task: all of them done means every in-flight request
    // was answered.
    tracker.close();
    let deadline = Duration::from_millis(config.shutdown_timeout);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?deadline,
            "shutdown deadline passed with requests in flight; exiting"
        );
    }
    sweeper.abort();
    sampler.abort();
    if let Some(coalescing) = coalescing {
        coalescing.abort();
    }
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
    Ok(())
}

/// Where the other nodes of a cluster reach this one: `advertise_url`, or else the
/// address the server listens on; on all addresses, the one this machine's traffic goes
/// out from (found by routing a UDP socket, which sends nothing).
fn advertised_url(config: &Config, local: std::net::SocketAddr) -> String {
    if let Some(url) = &config.advertise_url {
        return url.clone();
    }
    let mut address = local;
    if local.ip().is_unspecified() {
        let outbound = std::net::UdpSocket::bind((local.ip(), 0))
            .and_then(|socket| {
                let probe: std::net::IpAddr = if local.is_ipv4() {
                    std::net::Ipv4Addr::new(192, 0, 2, 1).into()
                } else {
                    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into()
                };
                socket.connect((probe, 9))?;
                socket.local_addr()
            })
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_unspecified());
        address.set_ip(outbound.unwrap_or(if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }));
    }
    format!("http://{address}")
}

/// Serves an HTTP/2 connection (prior knowledge, as `curl --http2-prior-knowledge`;
/// browsers only speak HTTP/2 over TLS, i.e. through a proxy) with hyper's server.
async fn serve_h2(
    stream: Rewind,
    app: Router,
    limits: &http1::Limits,
    stopping: CancellationToken,
) {
    let app = tower::ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(app);
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Another node relays every request of its clients whose sessions are served
        // here over one connection, held connects included.
        .max_concurrent_streams(limits.max_streams)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = stopping.cancelled() => None,
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

/// A socket whose first bytes were already read (to tell HTTP/2 from HTTP/1.x): reads
/// return those first, then the socket's, so hyper sees the connection from its start.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl Rewind {
    fn new(read: Bytes, stream: TcpStream) -> Rewind {
        Rewind { read, stream }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            let local = listener.local_addr()?;
            println!("halley metrics on http://{local}/metrics");
            tracing::info!(%local, "serving /metrics without a key");
            Some(listener)
        }
        None => None,
    };
    tracing::info!(%local, path = %config.path, timeout = config.timeout, max_interval = config.max_interval, delivery_interval = config.delivery_interval, coalescing = ?config.coalescing, coalescing_ceiling = config.coalescing_ceiling, "halley started");
    let broker = broker(config)?;
    serve_with(listener, metrics_listener, broker, shutdown_signal()).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_advertises_its_listen_address_or_what_it_was_told() {
        let config = Config::default();
        let local: SocketAddr = "127.0.0.1:8081".parse().expect("an address");
        assert_eq!(advertised_url(&config, local), "http://127.0.0.1:8081");
        // On every address: one the other nodes can reach, never 0.0.0.0.
        let any: SocketAddr = "0.0.0.0:8081".parse().expect("an address");
        let url = advertised_url(&config, any);
        assert!(
            url.starts_with("http://") && url.ends_with(":8081"),
            "{url}"
        );
        assert!(!url.contains("0.0.0.0"), "{url}");
        let told = Config {
            advertise_url: Some("http://halley-1:8080".into()),
            ..Config::default()
        };
        assert_eq!(advertised_url(&told, any), "http://halley-1:8080");
    }
}
