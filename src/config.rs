//! Configuration: defaults, a TOML file, then command-line flags and their `HALLEY_*`
//! environment twins, in increasing precedence.
//!
//! All durations are milliseconds, as in Bayeux advice.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// What to do when a session's queue is full (BAYEUX.md 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// Drop the oldest queued delivery and tell the client how many were dropped
    /// (`ext.halley.dropped` on its next connect reply).
    DropOldest,
    /// Remove the session; its held connect is answered with `reconnect: handshake`.
    Disconnect,
}

/// A Bayeux transport the server can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// JSON over POST (and GET) requests, one held per session (BAYEUX.md 4.2).
    LongPolling,
    /// JSONP over GET requests, for pages that cannot POST cross-origin (BAYEUX.md 4.5).
    CallbackPolling,
    /// One JSON array per text frame over a WebSocket; deliveries are pushed.
    Websocket,
    /// Faye's: deliveries pushed as `data:` events of a `text/event-stream` response,
    /// everything else over long-polling requests.
    #[serde(rename = "eventsource")]
    #[value(name = "eventsource")]
    EventSource,
}

impl Transport {
    /// Every transport, the default set.
    pub const ALL: [Transport; 4] = [
        Transport::LongPolling,
        Transport::CallbackPolling,
        Transport::Websocket,
        Transport::EventSource,
    ];

    /// The name clients use for it in `supportedConnectionTypes` and `connectionType`.
    pub fn connection_type(self) -> &'static str {
        match self {
            Transport::LongPolling => "long-polling",
            Transport::CallbackPolling => "callback-polling",
            Transport::Websocket => "websocket",
            Transport::EventSource => "eventsource",
        }
    }
}

/// Whether busy long-polling sessions get fewer, fuller replies when the server is saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Coalescing {
    /// Under saturation (event-loop lag), a session receiving a fast stream has its
    /// connect replies spaced by up to `coalescing_ceiling`; otherwise every reply goes
    /// out at once.
    Adaptive,
    /// Every reply goes out at once (only `delivery_interval` spaces them).
    Off,
}

impl Coalescing {
    /// Whether the broker adapts the spacing of replies to its load.
    pub fn is_adaptive(self) -> bool {
        self == Coalescing::Adaptive
    }
}

/// The `SameSite` attribute of the `BAYEUX_BROWSER` cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// Sent on same-site requests and top-level navigations (pages on another port of the
    /// same host are same-site).
    Lax,
    /// Sent on same-site requests only.
    Strict,
    /// Sent on cross-site requests too; browsers require `Secure` with it.
    None,
}

/// Who a channel rule lets do something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Every session.
    #[default]
    Anyone,
    /// Sessions whose handshake carried valid credentials.
    Authenticated,
    /// No client session (the server itself still may).
    Nobody,
}

/// A channel rule: who may subscribe to and publish on channels matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRule {
    /// A channel name or Bayeux pattern (`/chat/*`, `/admin/**`).
    pub pattern: String,
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: Access,
    /// Who may publish.
    #[serde(default)]
    pub publish: Access,
}

/// Handshake credentials and channel rules (the `[security]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Accept handshakes without credentials, as anonymous sessions.
    pub anonymous: bool,
    /// Shared secrets accepted in a handshake's `ext.auth.token`.
    pub tokens: Vec<String>,
    /// Secret for JWTs signed with HS256.
    pub jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key for JWTs signed with RS256.
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// Required `iss` claim, if set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed when checking a JWT's `exp`, `nbf` and `iat`, ms.
    pub jwt_leeway: u64,
    /// End a JWT-authenticated session when its token expires (plus the leeway), unless
    /// the client presents a fresh one on `/service/halley/refresh`.
    pub jwt_expiry_ends_session: bool,
    /// Channel rules, checked in order.
    pub channels: Vec<ChannelRule>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            anonymous: true,
            tokens: Vec::new(),
            jwt_hs256_secret: None,
            jwt_rs256_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: 30_000,
            jwt_expiry_ends_session: false,
            channels: Vec::new(),
        }
    }
}

/// Something an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRight {
    /// `POST /api/publish`.
    Publish,
    /// `GET /api/stats`.
    Stats,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `GET /metrics` on the main listener (Prometheus).
    Metrics,
    /// The read-only admin page (`/admin`, `GET /api/admin/snapshot`).
    Admin,
}

/// A key for the backend HTTP API and what it grants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The bearer token.
    pub key: String,
    /// What it may do; every right when absent.
    #[serde(default = "ApiKey::all_rights")]
    pub rights: Vec<ApiRight>,
}

impl ApiKey {
    fn all_rights() -> Vec<ApiRight> {
        vec![
            ApiRight::Publish,
            ApiRight::Stats,
            ApiRight::Disconnect,
            ApiRight::Metrics,
            ApiRight::Admin,
        ]
    }

    /// A key with every right.
    pub fn with_all_rights(key: &str) -> ApiKey {
        ApiKey {
            key: key.to_string(),
            rights: Self::all_rights(),
        }
    }
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers (Loki, Elasticsearch, CloudWatch).
    Json,
}

/// Every setting of the broker and its HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTP server binds.
    pub listen: SocketAddr,
    /// URL path the Bayeux endpoint is mounted at.
    pub path: String,
    /// How long a `/meta/connect` is held, ms (advice `timeout`).
    pub timeout: u64,
    /// Pause clients make between connects, ms (advice `interval`).
    pub interval: u64,
    /// Least time between two connect replies of one session that carry deliveries, ms: a
    /// session receiving faster than that gets fewer, fuller replies (at most this much
    /// later), one receiving slower is answered at once. 0 never waits.
    pub delivery_interval: u64,
    /// Adaptive coalescing: under saturation, busy sessions' connect replies are spaced so
    /// they carry more messages each.
    pub coalescing: Coalescing,
    /// The most adaptive coalescing spaces a session's replies, ms (never beyond a
    /// connect's hold). 0 turns adaptive coalescing off.
    pub coalescing_ceiling: u64,
    /// How long a session lives without a connect, ms.
    pub max_interval: u64,
    /// How often expired sessions are swept, ms.
    pub sweep_interval: u64,
    /// Most deliveries queued per session.
    pub max_queue: usize,
    /// What happens when a queue is full.
    pub queue_overflow: OverflowPolicy,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Most bytes of deliveries one reply (or WebSocket frame) carries; what does not fit
    /// goes in the next. A single larger delivery still goes alone.
    pub max_response_bytes: usize,
    /// Held connects allowed per browser (`BAYEUX_BROWSER` cookie) on HTTP/1.1.
    pub max_sessions_per_browser: u32,
    /// Polling interval advised to a browser over its long-poll limit, ms; 0 or less
    /// tells that client to stop instead.
    pub multi_session_interval: i64,
    /// Deliveries ride only on `/meta/connect` replies (CometD's `metaConnectDeliverOnly`).
    pub connect_only_delivery: bool,
    /// A clientId is only found with the `BAYEUX_BROWSER` cookie it was created under.
    pub strict_cookie_binding: bool,
    /// A subscribed publisher receives its own publishes.
    pub broadcast_to_publisher: bool,
    /// Offer CometD's acknowledgement extension to clients that ask (`ext.ack` in the
    /// handshake).
    pub ack_extension: bool,
    /// Origins whose pages may call the Bayeux endpoint cross-origin (CORS); empty allows
    /// every origin.
    pub allowed_origins: Vec<String>,
    /// `SameSite` attribute of the `BAYEUX_BROWSER` cookie.
    pub cookie_same_site: SameSite,
    /// Mark the `BAYEUX_BROWSER` cookie `Secure` (HTTPS only, e.g. behind a TLS proxy).
    pub cookie_secure: bool,
    /// Serve the demo chat page at `/`.
    pub demo: bool,
    /// How long in-flight requests get to finish after SIGTERM, ms.
    pub shutdown_timeout: u64,
    /// Most TCP connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, ms (slow-loris defence).
    /// It also bounds an idle keep-alive connection's wait for its next request, so it
    /// defaults to `timeout` + 15 s (BAYEUX.md TR-HTTP-4).
    pub header_timeout: Option<u64>,
    /// How long a client may take to send a request's body, ms.
    pub body_timeout: u64,
    /// How long a client may take to read one answer, ms: one that stops reading (a zero
    /// TCP window) loses its connection then, instead of pinning it and the answer.
    pub write_timeout: u64,
    /// Idle time before TCP keepalive probes start, ms (whole seconds; at least 1 s);
    /// a peer that answers none of 3 probes is dropped, catching half-open sockets.
    pub tcp_keepalive: u64,
    /// Most sessions at once; more handshakes are refused until some end.
    pub max_sessions: usize,
    /// Most handshakes accepted per second (0: no limit).
    pub max_handshakes_per_second: u32,
    /// Interval advised with a handshake refused for load (session or rate limit), ms.
    pub busy_interval: u64,
    /// Keys for the backend HTTP API under `/api`; the API is off when there are none.
    pub api_keys: Vec<ApiKey>,
    /// Handshake credentials and channel rules.
    pub security: SecurityConfig,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// What carries publishes between nodes: `memory` (one process), or
    /// `redis://HOST:PORT[/DB]` (many nodes on one Redis).
    pub engine: String,
    /// This node's id in a cluster; random when unset.
    pub node_id: Option<String>,
    /// What every Redis key of the cluster starts with, so clusters can share a Redis.
    pub redis_prefix: String,
    /// Where the other nodes of a cluster reach this one (`http://HOST:PORT`): a request
    /// for a session served here that lands on another node is relayed to it. Unset: the
    /// listen address, or this machine's outbound address when listening on all of them.
    pub advertise_url: Option<String>,
    /// The transports offered to clients; requests of any other are refused.
    pub transports: Vec<Transport>,
    /// How often a WebSocket gets a ping frame and an EventSource stream a comment, ms (0:
    /// never); below the common 60 s idle timeouts of proxies, which would otherwise close a
    /// quiet socket.
    pub websocket_ping_interval: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// A second listener serving only `GET /metrics`, without a key, for scrapers on a
    /// private network; none when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Test only: a path that echoes every WebSocket message back, so that a conformance
    /// suite (Autobahn's fuzzing client) can exercise the same WebSocket settings and close
    /// codes as the Bayeux socket. Off unless set.
    pub websocket_echo_path: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/cometd".into(),
            timeout: 30_000,
            interval: 0,
            delivery_interval: 0,
            coalescing: Coalescing::Adaptive,
            coalescing_ceiling: 30,
            max_interval: 10_000,
            sweep_interval: 1_000,
            max_queue: 1_000,
            queue_overflow: OverflowPolicy::DropOldest,
            max_subscriptions: 1_000,
            max_body_bytes: 64 * 1024,
            max_response_bytes: 1024 * 1024,
            max_sessions_per_browser: 1,
            multi_session_interval: 2_000,
            connect_only_delivery: false,
            strict_cookie_binding: false,
            broadcast_to_publisher: true,
            ack_extension: true,
            allowed_origins: Vec::new(),
            cookie_same_site: SameSite::Lax,
            cookie_secure: false,
            demo: true,
            shutdown_timeout: 10_000,
            max_connections: 100_000,
            header_timeout: None,
            body_timeout: 10_000,
            write_timeout: 30_000,
            tcp_keepalive: 30_000,
            max_sessions: 100_000,
            max_handshakes_per_second: 0,
            busy_interval: 1_000,
            api_keys: Vec::new(),
            security: SecurityConfig::default(),
            log_level: "info".into(),
            engine: "memory".into(),
            node_id: None,
            redis_prefix: "halley:".into(),
            advertise_url: None,
            transports: Transport::ALL.to_vec(),
            websocket_ping_interval: 25_000,
            log_format: LogFormat::Text,
            metrics_listen: None,
            websocket_echo_path: None,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A value is out of its range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// The server's flags. Every flag overrides the config file; every flag has an
/// environment twin.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// TOML config file; its keys are the flag names in snake_case.
    #[arg(long, env = "HALLEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on [default: 0.0.0.0:8080].
    #[arg(long, env = "HALLEY_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// URL path of the Bayeux endpoint [default: /cometd].
    #[arg(long, env = "HALLEY_PATH")]
    pub path: Option<String>,
    /// How long a /meta/connect is held waiting for messages, ms [default: 30000].
    #[arg(long, env = "HALLEY_TIMEOUT", value_name = "MS")]
    pub timeout: Option<u64>,
    /// Pause advised between connects, ms [default: 0].
    #[arg(long, env = "HALLEY_INTERVAL", value_name = "MS")]
    pub interval: Option<u64>,
    /// Least time between two delivery-carrying connect replies of one session, ms: faster
    /// streams go out in fewer, fuller replies, slower ones at once [default: 0].
    #[arg(long, env = "HALLEY_DELIVERY_INTERVAL", value_name = "MS")]
    pub delivery_interval: Option<u64>,
    /// Under saturation, space busy sessions' connect replies so they carry more messages
    /// each (`adaptive`), or send every reply at once (`off`) [default: adaptive].
    #[arg(long, env = "HALLEY_COALESCING", value_enum)]
    pub coalescing: Option<Coalescing>,
    /// The most adaptive coalescing delays a busy session's reply, ms; 0 turns it off
    /// [default: 30].
    #[arg(long, env = "HALLEY_COALESCING_CEILING", value_name = "MS")]
    pub coalescing_ceiling: Option<u64>,
    /// How long a session survives without a connect before it expires, ms [default: 10000].
    #[arg(long, env = "HALLEY_MAX_INTERVAL", value_name = "MS")]
    pub max_interval: Option<u64>,
    /// How often expired sessions are swept, ms [default: 1000].
    #[arg(long, env = "HALLEY_SWEEP_INTERVAL", value_name = "MS")]
    pub sweep_interval: Option<u64>,
    /// Most messages queued per session before the overflow policy applies [default: 1000].
    #[arg(long, env = "HALLEY_MAX_QUEUE", value_name = "N")]
    pub max_queue: Option<usize>,
    /// What to do when a session's queue is full [default: drop-oldest].
    #[arg(long, env = "HALLEY_QUEUE_OVERFLOW", value_enum)]
    pub queue_overflow: Option<OverflowPolicy>,
    /// Most subscriptions one session may hold [default: 1000].
    #[arg(long, env = "HALLEY_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Largest request body accepted, bytes; larger ones get HTTP 413 [default: 65536].
    #[arg(long, env = "HALLEY_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most bytes of deliveries in one reply or WebSocket frame; the rest goes in the next
    /// [default: 1048576].
    #[arg(long, env = "HALLEY_MAX_RESPONSE_BYTES", value_name = "BYTES")]
    pub max_response_bytes: Option<usize>,
    /// Long polls held at once per browser on HTTP/1.1 [default: 1].
    #[arg(long, env = "HALLEY_MAX_SESSIONS_PER_BROWSER", value_name = "N")]
    pub max_sessions_per_browser: Option<u32>,
    /// Polling interval advised to a browser over its long-poll limit, ms; <= 0 tells it
    /// to stop [default: 2000].
    #[arg(
        long,
        env = "HALLEY_MULTI_SESSION_INTERVAL",
        value_name = "MS",
        allow_negative_numbers = true
    )]
    pub multi_session_interval: Option<i64>,
    /// Deliver messages only on /meta/connect replies, never piggybacked on other replies.
    #[arg(long, env = "HALLEY_CONNECT_ONLY_DELIVERY", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub connect_only_delivery: Option<bool>,
    /// Find a session only with the BAYEUX_BROWSER cookie it was created under.
    #[arg(long, env = "HALLEY_STRICT_COOKIE_BINDING", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub strict_cookie_binding: Option<bool>,
    /// Deliver a subscribed publisher's own messages back to it [default: true].
    #[arg(long, env = "HALLEY_BROADCAST_TO_PUBLISHER", value_name = "BOOL")]
    pub broadcast_to_publisher: Option<bool>,
    /// Offer the ack extension (reliable, ordered delivery) to clients that ask [default: true].
    #[arg(long, env = "HALLEY_ACK_EXTENSION", value_name = "BOOL")]
    pub ack_extension: Option<bool>,
    /// Origin allowed to call the endpoint cross-origin; repeat or comma-separate for
    /// several [default: any origin].
    #[arg(
        long = "allowed-origin",
        env = "HALLEY_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// SameSite attribute of the BAYEUX_BROWSER cookie; `none` needs --cookie-secure [default: lax].
    #[arg(long, env = "HALLEY_COOKIE_SAME_SITE", value_enum)]
    pub cookie_same_site: Option<SameSite>,
    /// Mark the BAYEUX_BROWSER cookie Secure (when served over HTTPS).
    #[arg(long, env = "HALLEY_COOKIE_SECURE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cookie_secure: Option<bool>,
    /// Serve the demo chat page at / [default: true].
    #[arg(long, env = "HALLEY_DEMO", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub demo: Option<bool>,
    /// After SIGTERM, how long in-flight requests get before the process exits, ms [default: 10000].
    #[arg(long, env = "HALLEY_SHUTDOWN_TIMEOUT", value_name = "MS")]
    pub shutdown_timeout: Option<u64>,
    /// Most TCP connections served at once [default: 100000].
    #[arg(long, env = "HALLEY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time a client gets to send request headers, idle keep-alive time included, ms
    /// [default: timeout + 15000].
    #[arg(long, env = "HALLEY_HEADER_TIMEOUT", value_name = "MS")]
    pub header_timeout: Option<u64>,
    /// Time a client gets to send a request body, ms [default: 10000].
    #[arg(long, env = "HALLEY_BODY_TIMEOUT", value_name = "MS")]
    pub body_timeout: Option<u64>,
    /// Time a client gets to read one answer before its connection is closed, ms [default: 30000].
    #[arg(long, env = "HALLEY_WRITE_TIMEOUT", value_name = "MS")]
    pub write_timeout: Option<u64>,
    /// Idle time before TCP keepalive probes catch a vanished peer, ms [default: 30000].
    #[arg(long, env = "HALLEY_TCP_KEEPALIVE", value_name = "MS")]
    pub tcp_keepalive: Option<u64>,
    /// Most sessions at once; further handshakes are refused with a retry interval [default: 100000].
    #[arg(long, env = "HALLEY_MAX_SESSIONS", value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Most handshakes accepted per second; 0 for no limit [default: 0].
    #[arg(long, env = "HALLEY_MAX_HANDSHAKES_PER_SECOND", value_name = "N")]
    pub max_handshakes_per_second: Option<u32>,
    /// Interval advised with a handshake refused for load, ms [default: 1000].
    #[arg(long, env = "HALLEY_BUSY_INTERVAL", value_name = "MS")]
    pub busy_interval: Option<u64>,
    /// Key for the backend HTTP API (/api), with every right; repeat or comma-separate
    /// for several. Per-right keys go in the config file [default: API off].
    #[arg(
        long = "api-key",
        env = "HALLEY_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// Shared secret accepted as a handshake's ext.auth.token; repeat or comma-separate.
    #[arg(
        long = "auth-token",
        env = "HALLEY_AUTH_TOKENS",
        value_name = "TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Option<Vec<String>>,
    /// Secret for handshake JWTs signed with HS256.
    #[arg(
        long,
        env = "HALLEY_JWT_HS256_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_hs256_secret: Option<String>,
    /// PEM file with the RSA public key for handshake JWTs signed with RS256.
    #[arg(long, env = "HALLEY_JWT_RS256_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// Clock skew allowed when checking a handshake JWT's exp, nbf and iat, ms [default: 30000].
    #[arg(long, env = "HALLEY_JWT_LEEWAY", value_name = "MS")]
    pub jwt_leeway: Option<u64>,
    /// End a JWT-authenticated session when its token expires, unless the client presents
    /// a fresh token on /service/halley/refresh [default: false].
    #[arg(long, env = "HALLEY_JWT_EXPIRY_ENDS_SESSION", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub jwt_expiry_ends_session: Option<bool>,
    /// Accept handshakes without credentials [default: true].
    #[arg(long, env = "HALLEY_ANONYMOUS", value_name = "BOOL")]
    pub anonymous: Option<bool>,
    /// Log level or tracing filter directive [default: info].
    #[arg(long, env = "HALLEY_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// What carries publishes between nodes: `memory` (one process) or
    /// `redis://HOST:PORT[/DB]` (many nodes on one Redis) [default: memory].
    #[arg(long, env = "HALLEY_ENGINE", value_name = "ENGINE")]
    pub engine: Option<String>,
    /// This node's id in a cluster: letters, digits, `-`, `_`, `.` [default: random].
    #[arg(long, env = "HALLEY_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Prefix of every Redis key the cluster uses [default: halley:].
    #[arg(long, env = "HALLEY_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Where the other nodes of a cluster reach this one, `http://HOST:PORT` [default: the
    /// listen address; with 0.0.0.0, this machine's outbound address].
    #[arg(long, env = "HALLEY_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Transports offered to clients, comma-separated [default: long-polling,callback-polling,websocket,eventsource].
    #[arg(
        long,
        env = "HALLEY_TRANSPORTS",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub transports: Option<Vec<Transport>>,
    /// How often a WebSocket gets a ping frame and an EventSource stream a comment, ms; 0
    /// never [default: 25000].
    #[arg(long, env = "HALLEY_WEBSOCKET_PING_INTERVAL", value_name = "MS")]
    pub websocket_ping_interval: Option<u64>,
    /// Log line format: text, or one JSON object per line [default: text].
    #[arg(long, env = "HALLEY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Also serve GET /metrics, without a key, on this address (e.g. 127.0.0.1:9090)
    /// [default: off].
    #[arg(long, env = "HALLEY_METRICS_LISTEN", value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Test only: serve a WebSocket echo at this path (for conformance suites) [default: off].
    #[arg(long, env = "HALLEY_WEBSOCKET_ECHO_PATH", value_name = "PATH")]
    pub websocket_echo_path: Option<String>,
}

impl Config {
    /// Whether adaptive coalescing runs: `coalescing = "adaptive"` with a non-zero ceiling.
    pub fn coalesces_adaptively(&self) -> bool {
        self.coalescing.is_adaptive() && self.coalescing_ceiling > 0
    }

    /// The header-read timeout in force, ms: the configured one, else `timeout` + 15 s.
    pub fn effective_header_timeout(&self) -> u64 {
        self.header_timeout.unwrap_or(self.timeout + 15_000)
    }

    /// Builds the configuration from the config file named in `args` (if any) and the
    /// flags, then checks it.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => {$(
                if let Some(value) = args.$field { config.$field = value; }
            )*};
        }
        apply!(
            listen,
            path,
            timeout,
            interval,
            delivery_interval,
            coalescing,
            coalescing_ceiling,
            max_interval,
            sweep_interval,
            max_queue,
            queue_overflow,
            max_subscriptions,
            max_body_bytes,
            max_response_bytes,
            max_sessions_per_browser,
            multi_session_interval,
            connect_only_delivery,
            strict_cookie_binding,
            broadcast_to_publisher,
            ack_extension,
            allowed_origins,
            cookie_same_site,
            cookie_secure,
            demo,
            shutdown_timeout,
            max_connections,
            body_timeout,
            write_timeout,
            tcp_keepalive,
            max_sessions,
            max_handshakes_per_second,
            busy_interval,
            log_level,
            engine,
            redis_prefix,
            transports,
            websocket_ping_interval,
            log_format
        );
        if args.node_id.is_some() {
            config.node_id = args.node_id;
        }
        if args.advertise_url.is_some() {
            config.advertise_url = args.advertise_url;
        }
        if args.metrics_listen.is_some() {
            config.metrics_listen = args.metrics_listen;
        }
        if args.header_timeout.is_some() {
            config.header_timeout = args.header_timeout;
        }
        if args.websocket_echo_path.is_some() {
            config.websocket_echo_path = args.websocket_echo_path;
        }
        if let Some(keys) = args.api_keys {
            config.api_keys = keys.iter().map(|k| ApiKey::with_all_rights(k)).collect();
        }
        let security = &mut config.security;
        if let Some(tokens) = args.auth_tokens {
            security.tokens = tokens;
        }
        if args.jwt_hs256_secret.is_some() {
            security.jwt_hs256_secret = args.jwt_hs256_secret;
        }
        if args.jwt_rs256_public_key.is_some() {
            security.jwt_rs256_public_key = args.jwt_rs256_public_key;
        }
        if let Some(anonymous) = args.anonymous {
            security.anonymous = anonymous;
        }
        if let Some(leeway) = args.jwt_leeway {
            security.jwt_leeway = leeway;
        }
        if let Some(ends) = args.jwt_expiry_ends_session {
            security.jwt_expiry_ends_session = ends;
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &PathBuf) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(source),
        })
    }

    /// Rejects values that would make the broker misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !self.path.starts_with('/') || (self.path.len() > 1 && self.path.ends_with('/')) {
            return invalid("path must start with '/' and not end with '/'");
        }
        if self.sweep_interval == 0 || self.sweep_interval > 60_000 {
            return invalid("sweep_interval must be between 1 and 60000 ms");
        }
        if self.transports.is_empty() {
            return invalid("transports must name at least one transport");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return invalid("node_id must be 1-64 letters, digits, '-', '_' or '.'");
        }
        if self.redis_prefix.len() > 64 || self.redis_prefix.contains(['{', '}']) {
            return invalid("redis_prefix must be at most 64 bytes, without '{' or '}'");
        }
        if let Some(url) = &self.advertise_url
            && url
                .strip_prefix("http://")
                .is_none_or(|rest| rest.is_empty() || rest.contains(['/', '?', '#', ' ']))
        {
            return invalid("advertise_url must be http://HOST:PORT, without a path");
        }
        if self.transports.contains(&Transport::EventSource)
            && !self.transports.contains(&Transport::LongPolling)
        {
            // Faye sends every message of an eventsource session over long-polling requests.
            return invalid("the eventsource transport needs long-polling for its requests");
        }
        if let Some(echo) = &self.websocket_echo_path
            && (!echo.starts_with('/') || echo.starts_with(self.path.as_str()))
        {
            return invalid(
                "websocket_echo_path must start with '/' and lie outside the Bayeux path",
            );
        }
        if self.delivery_interval > 10_000 {
            return invalid("delivery_interval must be at most 10000 ms");
        }
        if self.coalescing_ceiling > 1_000 {
            return invalid("coalescing_ceiling must be at most 1000 ms");
        }
        if self.max_queue == 0 {
            return invalid("max_queue must be at least 1");
        }
        if self.max_body_bytes < 256 {
            return invalid("max_body_bytes must be at least 256");
        }
        if self.max_response_bytes < 4096 {
            return invalid("max_response_bytes must be at least 4096");
        }
        if self.max_connections == 0 || self.max_sessions == 0 {
            return invalid("max_connections and max_sessions must be at least 1");
        }
        if self.tcp_keepalive < 1_000 {
            return invalid("tcp_keepalive must be at least 1000 ms");
        }
        if self.header_timeout == Some(0) || self.body_timeout == 0 || self.write_timeout == 0 {
            return invalid("header_timeout, body_timeout and write_timeout must be at least 1 ms");
        }
        if self.cookie_same_site == SameSite::None && !self.cookie_secure {
            return invalid(
                "cookie_same_site = none needs cookie_secure (browsers drop the cookie otherwise)",
            );
        }
        if let Some(origin) = self
            .allowed_origins
            .iter()
            .find(|o| axum::http::HeaderValue::from_str(o).is_err() || !o.contains("://"))
        {
            return invalid(&format!(
                "allowed origin {origin:?} is not an origin like https://example.com"
            ));
        }
        if let Some(key) = self.api_keys.iter().find(|k| k.key.len() < 16) {
            return invalid(&format!(
                "API key {}… is shorter than 16 characters",
                key.key.chars().take(3).collect::<String>()
            ));
        }
        if self.security.jwt_leeway > 3_600_000 {
            return invalid("jwt_leeway must be at most 3600000 ms (one hour)");
        }
        if self.timeout > 24 * 3_600_000 || self.max_interval > 24 * 3_600_000 {
            return invalid("timeout and max_interval must be at most 24 hours");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags alone, as the binary parses them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: Args,
    }

    impl Args {
        fn try_parse_from<const N: usize>(argv: [&str; N]) -> Result<Args, clap::Error> {
            Flags::try_parse_from(argv).map(|f| f.args)
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("halley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("halley.toml");
        std::fs::write(
            &file,
            "timeout = 5000\nmax_queue = 7\nqueue_overflow = \"disconnect\"\n",
        )
        .expect("write");
        let args = Args::try_parse_from([
            "halley",
            "--config",
            file.to_str().expect("utf8"),
            "--max-queue",
            "9",
        ])
        .expect("args");
        let config = Config::load(args).expect("config");
        assert_eq!(config.timeout, 5000);
        assert_eq!(config.max_queue, 9);
        assert_eq!(config.queue_overflow, OverflowPolicy::Disconnect);
        assert_eq!(config.path, "/cometd");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<Config>("tiemout = 1").is_err());
        let args = Args::try_parse_from(["halley", "--path", "cometd"]).expect("args");
        assert!(matches!(Config::load(args), Err(ConfigError::Invalid(_))));
        let args = Args::try_parse_from(["halley", "--delivery-interval", "10001"]).expect("args");
        assert!(matches!(Config::load(args), Err(ConfigError::Invalid(_))));
        let args = Args::try_parse_from(["halley", "--delivery-interval", "50"]).expect("args");
        assert_eq!(Config::load(args).expect("config").delivery_interval, 50);
    }

    #[test]
    fn an_advertised_url_is_an_http_origin() {
        for (url, valid) in [
            ("http://10.0.0.5:8080", true),
            ("http://halley-1:8080", true),
            ("http://[::1]:8080", true),
            ("10.0.0.5:8080", false),
            ("https://a:1", false),
            ("http://", false),
            ("http://a:1/cometd", false),
            ("http://a b", false),
        ] {
            let config = Config {
                advertise_url: Some(url.into()),
                ..Config::default()
            };
            assert_eq!(config.validate().is_ok(), valid, "{url}");
        }
    }

    #[test]
    fn coalescing_is_adaptive_by_default_and_can_be_turned_off() {
        let config = Config::load(Args::try_parse_from(["halley"]).expect("args")).expect("config");
        assert_eq!(config.coalescing, Coalescing::Adaptive);
        assert_eq!(config.coalescing_ceiling, 30);
        let args = Args::try_parse_from(["halley", "--coalescing", "off"]).expect("args");
        assert_eq!(
            Config::load(args).expect("config").coalescing,
            Coalescing::Off
        );
        let config: Config =
            toml::from_str("coalescing = \"off\"\ncoalescing_ceiling = 20").expect("toml");
        assert_eq!(
            (config.coalescing, config.coalescing_ceiling),
            (Coalescing::Off, 20)
        );
        let args = Args::try_parse_from(["halley", "--coalescing-ceiling", "1001"]).expect("args");
        assert!(matches!(Config::load(args), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn eventsource_is_on_by_default_and_needs_long_polling() {
        assert!(
            Config::default()
                .transports
                .contains(&Transport::EventSource)
        );
        let config = toml::from_str::<Config>(r#"transports = ["long-polling", "eventsource"]"#)
            .expect("toml");
        assert_eq!(
            config.transports,
            [Transport::LongPolling, Transport::EventSource]
        );
        let alone = toml::from_str::<Config>(r#"transports = ["eventsource"]"#).expect("toml");
        assert!(alone.validate().is_err());
    }

    #[test]
    fn the_write_timeout_defaults_to_30_s_and_is_at_least_1_ms() {
        assert_eq!(Config::default().write_timeout, 30_000);
        assert_eq!(
            toml::from_str::<Config>("write_timeout = 5000")
                .expect("file")
                .write_timeout,
            5000
        );
        let args = Args::try_parse_from(["halley", "--write-timeout", "250"]).expect("args");
        assert_eq!(Config::load(args).expect("config").write_timeout, 250);
        let args = Args::try_parse_from(["halley", "--write-timeout", "0"]).expect("args");
        assert!(matches!(Config::load(args), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn security_and_api_keys_come_from_the_file_or_flags() {
        let config: Config = toml::from_str(
            r#"
            api_keys = [{ key = "0123456789abcdef", rights = ["stats"] }]
            [security]
            anonymous = false
            tokens = ["t"]
            [[security.channels]]
            pattern = "/admin/**"
            subscribe = "authenticated"
            publish = "nobody"
            "#,
        )
        .expect("valid toml");
        assert_eq!(config.api_keys[0].rights, vec![ApiRight::Stats]);
        assert!(!config.security.anonymous);
        assert_eq!(config.security.channels[0].publish, Access::Nobody);
        let args = Args::try_parse_from([
            "halley",
            "--api-key",
            "0123456789abcdef,fedcba9876543210",
            "--auth-token",
            "x",
            "--jwt-leeway",
            "5000",
            "--jwt-expiry-ends-session",
        ])
        .expect("args");
        let config = Config::load(args).expect("config");
        assert_eq!(config.security.jwt_leeway, 5_000);
        assert!(config.security.jwt_expiry_ends_session);
        assert_eq!(SecurityConfig::default().jwt_leeway, 30_000);
        assert!(!SecurityConfig::default().jwt_expiry_ends_session);
        assert_eq!(config.api_keys.len(), 2);
        assert_eq!(config.api_keys[1].rights.len(), 5);
        assert_eq!(config.security.tokens, vec!["x".to_string()]);
        let args = Args::try_parse_from(["halley", "--api-key", "short"]).expect("args");
        assert!(Config::load(args).is_err());
    }

    #[test]
    fn boolean_flags_work_bare_and_with_values() {
        let args = Args::try_parse_from([
            "halley",
            "--connect-only-delivery",
            "--strict-cookie-binding=false",
        ])
        .expect("args");
        let config = Config::load(args).expect("config");
        assert!(config.connect_only_delivery);
        assert!(!config.strict_cookie_binding);
    }
}
