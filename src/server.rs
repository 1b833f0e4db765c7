//! The HTTP server: the router over the broker, binding, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::any;
use std::time::Duration;
use tokio::net::TcpListener;

use axum::http::{HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::broker::Broker;
use crate::config::Config;
use crate::config::ConfigError;
use crate::security::ConfiguredPolicy;
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
        .layer(cors(config))
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

/// CORS for cross-origin long-polling (BAYEUX.md 4.9): the request's origin is echoed
/// (never `*`, since clients send credentials), preflights are answered with the
/// requested headers, and origins outside a configured allow-list get no CORS headers.
fn cors(config: &Config) -> CorsLayer {
    let origins = if config.allowed_origins.is_empty() {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(86_400))
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
/// In-flight requests get `shutdown_timeout` ms to finish after the signal; then the
/// server returns anyway, so a stuck client cannot keep the process alive.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let sweeper = broker.spawn_sweeper();
    let draining = broker.clone();
    let deadline = Duration::from_millis(broker.config().shutdown_timeout);
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(broker)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: answering held connects, refusing handshakes");
        draining.shutdown();
        let _ = signalled.send(());
    });
    let result = tokio::select! {
        result = server => result,
        () = async {
            if on_signal.await.is_ok() {
                tokio::time::sleep(deadline).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?deadline, "shutdown deadline passed with requests in flight; exiting");
            Ok(())
        }
    };
    sweeper.abort();
    Ok(result?)
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
