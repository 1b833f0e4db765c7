//! Halley: a Bayeux 1.0 (CometD) publish/subscribe broker.
//!
//! Existing CometD, dojox.cometd, Faye and aiocometd clients talk to it unchanged. The
//! crate is laid out in layers that only depend downwards:
//!
//! - [`protocol`]: the wire model — messages, replies, advice, channel names, error
//!   strings. Pure data, no I/O.
//! - [`broker`]: sessions, the subscription tree, per-session outboxes, held connects,
//!   expiry and routing. Knows nothing of HTTP.
//! - [`engine`]: carries publishes between the nodes of a cluster; in-memory (one
//!   process) by default.
//! - [`transport`]: one file per Bayeux transport (long-polling, callback-polling,
//!   websocket), adapting HTTP requests and WebSocket frames to broker batches and back.
//! - [`server`]: the axum router, the accept loop and its own lean HTTP/1.1 connection
//!   server (a parked connect holds no buffer), binding and graceful shutdown.
//! - [`api`]: the backend HTTP API (`/api/publish`, `/api/stats`, `/api/disconnect`,
//!   `/metrics`, `/api/admin/snapshot`).
//! - [`metrics`]: the Prometheus metrics, one cheap method per event.
//! - [`admin`]: the read-only admin page, its snapshot and the sampled history it charts.
//! - [`security`]: the configurable policy — handshake tokens, JWTs, channel rules.
//! - [`cli`]: the command line, including `halley publish`.
//! - [`config`]: every setting, from defaults, a TOML file, flags and environment.
//! - [`demo`]: the demo chat page and its server-side presence service.
//!
//! The `halley` binary is a thin wrapper over [`server::run`].

pub mod admin;
pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod protocol;
pub mod security;
pub mod server;
pub mod transport;

pub use broker::{Broker, RequestContext};
pub use config::Config;
