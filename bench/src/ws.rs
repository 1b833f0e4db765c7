//! A simulated Bayeux client over WebSocket, as CometD's JavaScript client does it: one
//! socket at the Bayeux URL (bound to a chosen 127.0.0.x source address), one JSON array per
//! text frame, the handshake as the socket's first frame, `/meta/connect` held while
//! deliveries arrive as their own frames, publishes on the same socket. A lost socket is
//! reopened and its first frame is a `/meta/connect` for the same session; `402` or
//! `reconnect: handshake` starts a new session. Every failure is counted in [`Counters`].

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::client::{Advice, Counters, Failure, Target, bind_port_at_connect};

/// The longest a request waits for its reply (a held connect aside) before the socket
/// counts as dead.
const REPLY_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    successful: Option<bool>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
    error: Option<String>,
    advice: Option<Advice>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// A reply to one of this client's requests.
struct Reply {
    id: u64,
    ok: bool,
    client_id: Option<String>,
    connection_types: Option<Vec<String>>,
}

/// Publishes a client sends on its socket, and the counter of those acknowledged.
pub struct Publishes<'a> {
    /// `(channel, data JSON)` to publish, in order.
    pub queue: &'a mut mpsc::UnboundedReceiver<(String, String)>,
    /// Counts the publishes the server acknowledged.
    pub acked: &'a AtomicU64,
}

/// One simulated WebSocket client (one socket at a time).
pub struct WsClient {
    target: Arc<Target>,
    source: Ipv4Addr,
    /// The run's shared failure counters.
    pub counters: Arc<Counters>,
    ws: Option<WebSocketStream<TcpStream>>,
    opened: bool,
    /// The session, once handshaken.
    pub client_id: Option<String>,
    next_id: u64,
    /// The `/meta/connect` in flight, if any.
    connect: Option<u64>,
    /// Keep a connect in flight (after the first one), also while waiting for other replies.
    polling: bool,
    /// The server asked for a new session (`402`, or `reconnect: handshake`).
    rejoin: bool,
    /// The server said `reconnect: none`.
    ended: bool,
}

impl WsClient {
    /// A client that connects from `source`; nothing is opened until it joins.
    pub fn new(target: Arc<Target>, source: Ipv4Addr, counters: Arc<Counters>) -> WsClient {
        WsClient {
            target,
            source,
            counters,
            ws: None,
            opened: false,
            client_id: None,
            next_id: 0,
            connect: None,
            polling: false,
            rejoin: false,
            ended: false,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn cid(&self) -> &str {
        self.client_id.as_deref().unwrap_or("")
    }

    /// Drops the socket at once; whatever was in flight is lost (a new connect will be sent).
    pub fn close(&mut self) {
        self.ws = None;
        self.connect = None;
    }

    async fn open(&mut self) -> Result<(), WsError> {
        let socket = TcpSocket::new_v4()?;
        bind_port_at_connect(&socket);
        socket.bind(SocketAddr::new(IpAddr::V4(self.source), 0))?;
        let stream = socket.connect(self.target.addr).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}{}", self.target.host, self.target.path);
        // Small buffers: 10,000 clients live in this process (tungstenite reads into 128 KiB by default).
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        if self.opened {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.opened = true;
        self.ws = Some(ws);
        Ok(())
    }

    /// Sends one frame, opening the socket first when there is none.
    async fn send(&mut self, body: String) -> Result<(), Failure> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.ws.is_none() && self.open().await.is_err() {
            self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            // Nothing is in flight on a socket that never opened.
            self.close();
            return Err(Failure::Io);
        }
        let Some(ws) = self.ws.as_mut() else {
            return Err(Failure::Io);
        };
        if ws.send(Message::text(body)).await.is_err() {
            self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            self.close();
            return Err(Failure::Io);
        }
        Ok(())
    }

    /// The next text frame. Cancel-safe (a `select!` branch).
    async fn recv(&mut self) -> Result<Utf8Bytes, Failure> {
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Err(Failure::Io);
            };
            match ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                // tungstenite queues the pong; flushing sends it now rather than with the next frame.
                Some(Ok(Message::Ping(_))) => {
                    let _ = ws.flush().await;
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    self.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                }
                end @ (Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("loadgen: websocket ended: {end:?}");
                    }
                    self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                    self.close();
                    return Err(Failure::Io);
                }
            }
        }
    }

    /// Reads one frame: deliveries go to `on_delivery` at once, replies to `replies`; the
    /// connect reply's advice is followed.
    fn process(
        &mut self,
        text: &str,
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
        replies: &mut Vec<Reply>,
    ) {
        let messages: Vec<Msg<'_>> = match serde_json::from_str(text) {
            Ok(messages) => messages,
            Err(_) => {
                self.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for message in messages {
            let Some(successful) = message.successful else {
                if let (Some(channel), Some(data)) = (message.channel.as_deref(), message.data) {
                    on_delivery(channel, data);
                }
                continue;
            };
            let unknown = message
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("402"));
            if !successful {
                let counter = if unknown {
                    &self.counters.unknown_session
                } else {
                    &self.counters.bayeux_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let Some(id) = message
                .id
                .and_then(|raw| raw.get().trim_matches('"').parse::<u64>().ok())
            else {
                continue;
            };
            if self.connect == Some(id) {
                self.connect = None;
                match message.advice.as_ref().and_then(|a| a.reconnect.as_deref()) {
                    Some("handshake") => self.rejoin = true,
                    Some("none") => self.ended = true,
                    _ => self.rejoin |= unknown,
                }
            } else if unknown {
                self.rejoin = true;
            }
            let connection_types = (message.channel.as_deref() == Some("/meta/handshake"))
                .then(|| connection_types(text))
                .flatten();
            replies.push(Reply {
                id,
                ok: successful,
                client_id: message.client_id,
                connection_types,
            });
        }
    }

    /// Sends one frame holding the requests `ids` and waits for all their replies, keeping a
    /// connect in flight meanwhile once polling.
    async fn call(
        &mut self,
        body: String,
        ids: std::ops::RangeInclusive<u64>,
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
    ) -> Result<Vec<Reply>, Failure> {
        self.send(body).await?;
        let mut answered = Vec::new();
        while answered.len() < ids.clone().count() {
            let text = match tokio::time::timeout(REPLY_WAIT, self.recv()).await {
                Ok(frame) => frame?,
                Err(_) => {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("loadgen: no reply within {REPLY_WAIT:?}: closing the socket");
                    }
                    self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                    self.close();
                    return Err(Failure::Io);
                }
            };
            let mut replies = Vec::new();
            self.process(&text, on_delivery, &mut replies);
            answered.extend(replies.into_iter().filter(|r| ids.contains(&r.id)));
            if self.polling && self.connect.is_none() && !self.rejoin && !self.ended {
                self.send_connect(false).await?;
            }
        }
        Ok(answered)
    }

    /// Handshakes over the socket; `Err` says why WebSocket is not usable with this server
    /// (upgrade refused, or `websocket` not offered), `Ok(false)` is any other failure.
    pub async fn handshake(&mut self) -> Result<bool, String> {
        self.polling = false;
        if self.ws.is_none() {
            match self.open().await {
                Ok(()) => {}
                Err(WsError::Http(response)) => {
                    return Err(format!("upgrade refused: HTTP {}", response.status()));
                }
                Err(_) => {
                    self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
                    return Ok(false);
                }
            }
        }
        let id = self.id();
        let body = format!(
            r#"[{{"id":"{id}","channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0","supportedConnectionTypes":["websocket","long-polling"]}}]"#
        );
        let Ok(replies) = self.call(body, id..=id, &mut |_, _| {}).await else {
            return Ok(false);
        };
        let Some(reply) = replies.into_iter().find(|r| r.ok && r.client_id.is_some()) else {
            return Ok(false);
        };
        if reply
            .connection_types
            .is_some_and(|types| !types.iter().any(|t| t == "websocket"))
        {
            return Err("the handshake reply does not offer websocket".into());
        }
        self.client_id = reply.client_id;
        self.rejoin = false;
        Ok(true)
    }

    async fn subscribe(&mut self, channels: &[String]) -> bool {
        let first = self.next_id + 1;
        let mut body = String::from("[");
        for (i, channel) in channels.iter().enumerate() {
            let id = self.id();
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"id":"{id}","channel":"/meta/subscribe","clientId":"{}","subscription":"{channel}"}}"#,
                self.cid()
            ));
        }
        body.push(']');
        match self.call(body, first..=self.next_id, &mut |_, _| {}).await {
            Ok(replies) => replies.iter().all(|r| r.ok),
            Err(_) => false,
        }
    }

    async fn send_connect(&mut self, immediate: bool) -> Result<(), Failure> {
        let id = self.id();
        let advice = if immediate {
            r#","advice":{"timeout":0}"#
        } else {
            ""
        };
        let body = format!(
            r#"[{{"id":"{id}","channel":"/meta/connect","clientId":"{}","connectionType":"websocket"{advice}}}]"#,
            self.cid()
        );
        self.connect = Some(id);
        self.send(body).await
    }

    /// Handshakes, subscribes and sends the first (immediate) connect, retrying (with a
    /// pause) until it works or `tries` run out. From then on a connect is kept in flight.
    pub async fn join(
        &mut self,
        channels: &[String],
        tries: usize,
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
    ) -> bool {
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.close();
            }
            if !matches!(self.handshake().await, Ok(true))
                || !(channels.is_empty() || self.subscribe(channels).await)
            {
                continue;
            }
            if self.send_connect(true).await.is_err() {
                continue;
            }
            let id = self.next_id;
            let mut ok = false;
            while self.connect == Some(id) {
                let Ok(Ok(text)) = tokio::time::timeout(REPLY_WAIT, self.recv()).await else {
                    break;
                };
                let mut replies = Vec::new();
                self.process(&text, on_delivery, &mut replies);
                ok = replies.iter().any(|r| r.id == id && r.ok);
            }
            if ok {
                self.polling = true;
                return true;
            }
        }
        false
    }

    /// Publishes `(channel, data JSON)` pairs in one frame; returns how many were acked.
    pub async fn publish(
        &mut self,
        messages: &[(String, String)],
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
    ) -> usize {
        let Some(body) = self.publish_body(messages) else {
            return 0;
        };
        let ids = self.next_id + 1 - messages.len() as u64..=self.next_id;
        match self.call(body, ids, on_delivery).await {
            Ok(replies) => replies.iter().filter(|r| r.ok).count(),
            Err(_) => 0,
        }
    }

    fn publish_body(&mut self, messages: &[(String, String)]) -> Option<String> {
        if messages.is_empty() {
            return None;
        }
        let first_id = self.next_id + 1;
        self.next_id += messages.len() as u64;
        Some(crate::client::publish_batch(messages, self.cid(), first_id))
    }

    /// Runs the session until `stop`: a connect always in flight, deliveries to
    /// `on_delivery` as their frames arrive, and (when given) queued publishes sent one
    /// frame at a time, batching whatever queued up while the previous one was in flight.
    pub async fn run(
        &mut self,
        channels: &[String],
        stop: &mut watch::Receiver<bool>,
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
        mut publishes: Option<Publishes<'_>>,
    ) {
        let mut in_flight: Option<std::ops::RangeInclusive<u64>> = None;
        loop {
            if *stop.borrow_and_update() || self.ended {
                return;
            }
            if self.rejoin {
                self.counters.rehandshakes.fetch_add(1, Ordering::Relaxed);
                self.close();
                in_flight = None;
                let joined = tokio::select! {
                    j = self.join(channels, 20, on_delivery) => j,
                    _ = stop.changed() => return,
                };
                if !joined {
                    return;
                }
                continue;
            }
            // No socket (it could not be reopened): wait before trying again, rather than spin.
            if (self.connect.is_none() && self.send_connect(false).await.is_err())
                || self.ws.is_none()
            {
                in_flight = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {},
                    _ = stop.changed() => return,
                }
                continue;
            }
            let can_publish = in_flight.is_none() && publishes.is_some();
            tokio::select! {
                _ = stop.changed() => return,
                frame = self.recv() => match frame {
                    Ok(text) => {
                        let mut replies = Vec::new();
                        self.process(&text, on_delivery, &mut replies);
                        if let (Some(ids), Some(p)) = (&in_flight, &publishes) {
                            let mine: Vec<&Reply> = replies.iter().filter(|r| ids.contains(&r.id)).collect();
                            let acked = mine.iter().filter(|r| r.ok).count() as u64;
                            p.acked.fetch_add(acked, Ordering::Relaxed);
                            if mine.iter().any(|r| r.id == *ids.end()) {
                                in_flight = None;
                            }
                        }
                    }
                    Err(_) => in_flight = None,
                },
                first = next_publish(&mut publishes), if can_publish => {
                    let Some(first) = first else {
                        publishes = None;
                        continue;
                    };
                    let mut batch = vec![first];
                    if let Some(p) = publishes.as_mut() {
                        while let Ok(more) = p.queue.try_recv() {
                            batch.push(more);
                        }
                    }
                    if let Some(body) = self.publish_body(&batch) {
                        let ids = self.next_id + 1 - batch.len() as u64..=self.next_id;
                        if self.send(body).await.is_ok() {
                            in_flight = Some(ids);
                        }
                    }
                }
            }
        }
    }
}

async fn next_publish(publishes: &mut Option<Publishes<'_>>) -> Option<(String, String)> {
    match publishes {
        Some(p) => p.queue.recv().await,
        None => std::future::pending().await,
    }
}

/// `supportedConnectionTypes` of the handshake reply in `frame`, if it has the field.
fn connection_types(frame: &str) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Handshake {
        channel: Option<String>,
        #[serde(rename = "supportedConnectionTypes")]
        types: Option<Vec<String>>,
    }
    let messages: Vec<Handshake> = serde_json::from_str(frame).ok()?;
    messages
        .into_iter()
        .find(|m| m.channel.as_deref() == Some("/meta/handshake"))?
        .types
}

/// Whether the server at `target` speaks Bayeux over WebSocket: `Err` with the reason when
/// it does not, so that a workload can report "unavailable" instead of failing every client.
pub async fn probe(target: Arc<Target>) -> Result<(), String> {
    let mut client = WsClient::new(target, Ipv4Addr::LOCALHOST, Arc::new(Counters::default()));
    match client.handshake().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("handshake over WebSocket failed".into()),
        Err(reason) => Err(reason),
    }
}
