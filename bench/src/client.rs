//! A simulated Bayeux long-polling client: its own TCP connection (bound to a chosen
//! 127.0.0.x source address), its own cookie jar, advice honored, every error counted.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpSocket;
use tokio::task::AbortHandle;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// URLs: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .map_err(|e| format!("need IP:PORT in {url}: {e}"))?;
        Ok(Target {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Error counters shared by every client of a run. Nothing is hidden: each failed
/// exchange lands in exactly one of these.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// TCP connect or I/O failures (connection refused, reset, closed mid-request).
    pub io_errors: AtomicU64,
    /// HTTP status other than 200.
    pub http_errors: AtomicU64,
    /// Bodies that were not a JSON array of messages.
    pub parse_errors: AtomicU64,
    /// Replies with `successful: false` other than 402.
    pub bayeux_errors: AtomicU64,
    /// `402::...` (session unknown): the client re-handshakes.
    pub unknown_session: AtomicU64,
    pub rehandshakes: AtomicU64,
    /// New TCP connections opened after the first one of a client.
    pub reconnects: AtomicU64,
}

impl Counters {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "requests": g(&self.requests),
            "io": g(&self.io_errors),
            "http": g(&self.http_errors),
            "parse": g(&self.parse_errors),
            "bayeux": g(&self.bayeux_errors),
            "402": g(&self.unknown_session),
            "rehandshakes": g(&self.rehandshakes),
            "reconnects": g(&self.reconnects),
        })
    }

    pub fn errors(&self) -> u64 {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        g(&self.io_errors)
            + g(&self.http_errors)
            + g(&self.parse_errors)
            + g(&self.bayeux_errors)
            + g(&self.unknown_session)
    }
}

/// The advice fields the client honors.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Advice {
    pub reconnect: Option<String>,
    pub interval: Option<f64>,
}

#[derive(Deserialize)]
struct Msg<'a> {
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

/// What the meta replies of one response said.
#[derive(Debug, Default)]
pub struct Summary {
    pub ok: bool,
    pub client_id: Option<String>,
    pub advice: Option<Advice>,
    pub unknown_session: bool,
    pub deliveries: usize,
}

#[derive(Debug)]
pub enum Failure {
    Io,
    Http,
}

pub struct Client {
    target: Arc<Target>,
    source: Ipv4Addr,
    pub counters: Arc<Counters>,
    conn: Option<(SendRequest<Full<Bytes>>, AbortHandle)>,
    opened: bool,
    cookies: Vec<(String, String)>,
    pub client_id: Option<String>,
    next_id: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

impl Client {
    pub fn new(target: Arc<Target>, source: Ipv4Addr, counters: Arc<Counters>) -> Client {
        Client {
            target,
            source,
            counters,
            conn: None,
            opened: false,
            cookies: Vec::new(),
            client_id: None,
            next_id: 0,
        }
    }

    /// A second client sharing this one's cookies and session (a browser's second
    /// connection), on its own TCP connection.
    pub fn sibling(&self) -> Client {
        Client {
            target: self.target.clone(),
            source: self.source,
            counters: self.counters.clone(),
            conn: None,
            opened: false,
            cookies: self.cookies.clone(),
            client_id: self.client_id.clone(),
            next_id: 1_000_000_000,
        }
    }

    /// Drops the TCP connection at once, whatever is in flight ("vanish").
    pub fn close(&mut self) {
        if let Some((_, task)) = self.conn.take() {
            task.abort();
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn open(&mut self) -> std::io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        bind_port_at_connect(&socket);
        socket.bind(SocketAddr::new(IpAddr::V4(self.source), 0))?;
        let stream = socket.connect(self.target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        if self.opened {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.opened = true;
        self.conn = Some((sender, task.abort_handle()));
        Ok(())
    }

    /// POSTs one JSON batch and returns the response body. Counts failures.
    pub async fn exchange(&mut self, body: String) -> Result<Bytes, Failure> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match self.try_exchange(body).await {
            Ok(bytes) => Ok(bytes),
            Err(failure) => {
                let counter = match failure {
                    Failure::Io => &self.counters.io_errors,
                    Failure::Http => &self.counters.http_errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Err(failure)
            }
        }
    }

    async fn try_exchange(&mut self, body: String) -> Result<Bytes, Failure> {
        if self.conn.as_ref().is_none_or(|(s, _)| s.is_closed()) {
            self.close();
            self.open().await.map_err(|_| Failure::Io)?;
        }
        let mut request = Request::post(&self.target.path)
            .header(HOST, &self.target.host)
            .header(CONTENT_TYPE, "application/json;charset=UTF-8");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header(COOKIE, jar.join("; "));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Failure::Io)?;
        let (sender, _) = self.conn.as_mut().expect("opened above");
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        let response = match sent.await {
            Ok(response) => response,
            Err(_) => {
                self.close();
                return Err(Failure::Io);
            }
        };
        for value in response.headers().get_all(SET_COOKIE) {
            if let Ok(text) = value.to_str() {
                let pair = text.split(';').next().unwrap_or("");
                if let Some((k, v)) = pair.split_once('=') {
                    let (k, v) = (k.trim().to_string(), v.trim().to_string());
                    self.cookies.retain(|(name, _)| *name != k);
                    self.cookies.push((k, v));
                }
            }
        }
        let status = response.status();
        let body = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                self.close();
                return Err(Failure::Io);
            }
        };
        if status != StatusCode::OK {
            if std::env::var_os("LOADGEN_DEBUG").is_some() {
                eprintln!("loadgen: HTTP {status}: {}", String::from_utf8_lossy(&body));
            }
            return Err(Failure::Http);
        }
        Ok(body)
    }

    /// Reads a response: meta replies are summarized (and their errors counted),
    /// deliveries go to `on_delivery(channel, data)`.
    pub fn read(
        &self,
        body: &[u8],
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
    ) -> Summary {
        let mut summary = Summary {
            ok: true,
            ..Summary::default()
        };
        let messages: Vec<Msg<'_>> = match serde_json::from_slice(body) {
            Ok(messages) => messages,
            Err(_) => {
                self.counters.parse_errors.fetch_add(1, Ordering::Relaxed);
                summary.ok = false;
                return summary;
            }
        };
        for message in messages {
            match message.successful {
                None => {
                    if let (Some(channel), Some(data)) = (message.channel.as_deref(), message.data)
                    {
                        summary.deliveries += 1;
                        on_delivery(channel, data);
                    }
                }
                Some(successful) => {
                    if message.client_id.is_some() {
                        summary.client_id = message.client_id;
                    }
                    if message.advice.is_some() {
                        summary.advice = message.advice;
                    }
                    if !successful {
                        summary.ok = false;
                        if message
                            .error
                            .as_deref()
                            .is_some_and(|e| e.starts_with("402"))
                        {
                            summary.unknown_session = true;
                            self.counters
                                .unknown_session
                                .fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.counters.bayeux_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        summary
    }

    /// Handshakes; on success the client has a clientId.
    pub async fn handshake(&mut self) -> bool {
        let id = self.id();
        let body = format!(
            r#"[{{"id":"{id}","channel":"/meta/handshake","version":"1.0","minimumVersion":"1.0","supportedConnectionTypes":["long-polling"]}}]"#
        );
        let Ok(bytes) = self.exchange(body).await else {
            return false;
        };
        let summary = self.read(&bytes, &mut |_, _| {});
        if summary.ok && summary.client_id.is_some() {
            self.client_id = summary.client_id;
            true
        } else {
            false
        }
    }

    fn cid(&self) -> &str {
        self.client_id.as_deref().unwrap_or("")
    }

    /// Subscribes to every channel in one batch.
    pub async fn subscribe(&mut self, channels: &[String]) -> bool {
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
        let Ok(bytes) = self.exchange(body).await else {
            return false;
        };
        self.read(&bytes, &mut |_, _| {}).ok
    }

    /// Sends one `/meta/connect` (`immediate`: with advice timeout 0, as CometD's first
    /// connect) and returns the raw body for [`Client::read`].
    pub async fn connect(&mut self, immediate: bool) -> Result<Bytes, Failure> {
        let id = self.id();
        let advice = if immediate {
            r#","advice":{"timeout":0}"#
        } else {
            ""
        };
        let body = format!(
            r#"[{{"id":"{id}","channel":"/meta/connect","clientId":"{}","connectionType":"long-polling"{advice}}}]"#,
            self.cid()
        );
        self.exchange(body).await
    }

    pub async fn disconnect(&mut self) -> bool {
        let id = self.id();
        let body = format!(
            r#"[{{"id":"{id}","channel":"/meta/disconnect","clientId":"{}"}}]"#,
            self.cid()
        );
        match self.exchange(body).await {
            Ok(bytes) => self.read(&bytes, &mut |_, _| {}).ok,
            Err(_) => false,
        }
    }

    /// Publishes `(channel, data JSON)` pairs in one batch; returns how many were acked
    /// successfully. Deliveries riding on the response go to `on_delivery`.
    pub async fn publish(
        &mut self,
        messages: &[(String, String)],
        on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
    ) -> usize {
        let first_id = self.next_id + 1;
        self.next_id += messages.len() as u64;
        let body = publish_batch(messages, self.cid(), first_id);
        let Ok(bytes) = self.exchange(body).await else {
            return 0;
        };
        let summary = self.read(&bytes, on_delivery);
        if summary.ok { messages.len() } else { 0 }
    }

    /// Handshakes and subscribes, retrying (with a pause) until it works or `tries` run out.
    pub async fn join(&mut self, channels: &[String], tries: usize) -> bool {
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.handshake().await && (channels.is_empty() || self.subscribe(channels).await) {
                return true;
            }
        }
        false
    }
}

/// Source address for client number `i`: 127.0.0.1 for the first `per_ip`, then
/// 127.0.0.2, … (each source address has its own ~28k ephemeral ports).
pub fn source_ip(i: usize, per_ip: usize) -> Ipv4Addr {
    let n = 1 + (i / per_ip.max(1)) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n)
}

/// Lets the kernel choose the source port at `connect` from the whole 4-tuple
/// (`IP_BIND_ADDRESS_NO_PORT`) instead of at `bind`. A port chosen at bind time must be
/// free of every socket, those in TIME_WAIT included, so right after a run of 10,000
/// clients the next run's connects stalled for seconds (slow set-up, and latency spikes
/// in whichever workload came next); at connect time loopback TIME_WAIT tuples are reused.
pub(crate) fn bind_port_at_connect(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket, a c_int option value and its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// A publish batch of `(channel, data JSON)` pairs for session `cid`, with ids counting
/// up from `first_id`: the same body over long-polling and over WebSocket.
pub fn publish_batch(messages: &[(String, String)], cid: &str, first_id: u64) -> String {
    let mut body = String::with_capacity(messages.len() * 120);
    body.push('[');
    for (i, (channel, data)) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let id = first_id + i as u64;
        body.push_str(&format!(
            r#"{{"id":"{id}","channel":"{channel}","clientId":"{cid}","data":{data}}}"#
        ));
    }
    body.push(']');
    body
}

/// Joins like a Faye client on eventsource (handshake and subscribe over HTTP), closes the
/// HTTP connection, and opens the session's EventSource stream on a connection of its
/// own: the stream, its head read, or `None` if any step failed.
pub async fn open_event_stream(
    client: &mut Client,
    channels: &[String],
) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !client.join(channels, 5).await {
        return None;
    }
    client.close();
    let cid = client.client_id.clone()?;
    let socket = TcpSocket::new_v4().ok()?;
    bind_port_at_connect(&socket);
    socket
        .bind(SocketAddr::new(IpAddr::V4(client.source), 0))
        .ok()?;
    let mut stream = socket.connect(client.target.addr).await.ok()?;
    let request = format!(
        "GET {}/{cid} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
        client.target.path.trim_end_matches('/'),
        client.target.host
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 4096 {
            client.counters.io_errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        client.counters.http_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(stream)
}

/// Reads (and drops) a stream's events until `stop`, or until the server closes it.
pub async fn hold_event_stream(
    mut stream: tokio::net::TcpStream,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
    }
}
