//! Shared pieces: the poll loop, the server probe, clocks, percentiles, the fd limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::client::{Advice, Client, Target};

/// Microseconds since the process started: the clock of every timestamp a publisher
/// puts in a message and every subscriber reads (same process, same clock).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// The `{"s":seq,"t":micros}` payload, padded with `"p"` to `size` bytes when asked.
pub fn payload(seq: u64, t: u64, size: usize) -> String {
    let mut text = format!(r#"{{"s":{seq},"t":{t}"#);
    let base = text.len() + 8; // ,"p":"" + }
    if size > base {
        text.push_str(r#","p":""#);
        text.extend(std::iter::repeat_n('x', size - base));
        text.push('"');
    }
    text.push('}');
    text
}

#[derive(serde::Deserialize)]
pub struct Payload {
    pub s: u64,
    pub t: u64,
}

/// Reads a payload back. Every server here passes `data` through byte for byte or re-serializes it
/// in key order, so the two numbers are read straight off the front; anything else takes the
/// general path. (Parsing each delivery twice was a tenth of the load generator's CPU.)
pub fn parse_payload(data: &RawValue) -> Option<Payload> {
    fn number(text: &str, key: &str) -> Option<(u64, usize)> {
        let rest = text.strip_prefix(key)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        Some((rest[..digits].parse().ok()?, key.len() + digits))
    }
    let text = data.get();
    let quick = number(text, r#"{"s":"#).and_then(|(s, used)| {
        let (t, more) = number(&text[used..], r#","t":"#)?;
        matches!(text.as_bytes().get(used + more), Some(b',' | b'}')).then_some(Payload { s, t })
    });
    quick.or_else(|| serde_json::from_str(text).ok())
}

/// Polls `/meta/connect` until `stop`, honoring advice (`interval`, `reconnect:
/// handshake` re-joins with the same channels, `none` ends). Deliveries go to
/// `on_delivery`.
pub async fn poll(
    client: &mut Client,
    channels: &[String],
    stop: &mut watch::Receiver<bool>,
    on_delivery: &mut (dyn FnMut(&str, &RawValue) + Send),
) {
    let mut advice = Advice::default();
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let result = tokio::select! {
            r = client.connect(false) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(bytes) => {
                let summary = client.read(&bytes, on_delivery);
                if let Some(a) = summary.advice {
                    advice = a;
                }
                let reconnect = advice.reconnect.as_deref().unwrap_or("retry");
                if summary.unknown_session || (!summary.ok && reconnect == "handshake") {
                    client.counters.rehandshakes.fetch_add(1, Ordering::Relaxed);
                    let joined = tokio::select! {
                        j = client.join(channels, 20) => j,
                        _ = stop.changed() => return,
                    };
                    if !joined {
                        return;
                    }
                    continue;
                }
                if reconnect == "none" {
                    return;
                }
                let interval = advice.interval.unwrap_or(0.0);
                if interval > 0.0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(interval as u64)) => {},
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {},
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// Reads the server's RSS and session count.
#[derive(Clone)]
pub struct Probe {
    pub pid: Option<u32>,
    pub stats: Option<(Target, Option<String>)>,
}

impl Probe {
    /// Resident set size of the server process, bytes.
    pub fn rss(&self) -> Option<u64> {
        let pid = self.pid?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The server's live session count, from its stats endpoint.
    pub async fn sessions(&self) -> Option<u64> {
        let (target, key) = self.stats.as_ref()?;
        let fetch = async {
            let socket = TcpSocket::new_v4().ok()?;
            socket
                .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .ok()?;
            let stream = socket.connect(target.addr).await.ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            let task = tokio::spawn(conn);
            let mut request = Request::get(&target.path).header("host", &target.host);
            if let Some(key) = key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            let response = sender
                .send_request(request.body(Full::new(Bytes::new())).ok()?)
                .await
                .ok()?;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            task.abort();
            let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
            value.get("sessions")?.as_u64()
        };
        tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .ok()
            .flatten()
    }
}

/// p50/p99/max (and count) of latencies in microseconds, reported in milliseconds.
pub fn percentiles(mut samples: Vec<u32>) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::json!({"count": 0});
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i] as f64 / 1000.0
    };
    serde_json::json!({
        "count": samples.len(),
        "p50_ms": round3(at(0.50)),
        "p99_ms": round3(at(0.99)),
        "max_ms": round3(*samples.last().unwrap() as f64 / 1000.0),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit in force.
pub fn raise_nofile() -> u64 {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        // Try for more than the hard limit first (works with CAP_SYS_RESOURCE).
        let wanted = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: (1 << 20).max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return wanted.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

/// Small deterministic PRNG (xorshift64*), so runs are repeatable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Seen-set over sequence numbers.
#[derive(Default)]
pub struct Seen(Vec<u64>);

impl Seen {
    /// Marks `seq`; false when it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }
}

/// Waits until `counter` reaches `n` or `limit` passes; returns whether it did.
pub async fn wait_for(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

pub fn shared_target(url: &str) -> Arc<Target> {
    Arc::new(Target::parse(url).unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(2)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_by_either_path() {
        for size in [0, 50, 200] {
            let text = payload(12, 3456, size);
            let raw = RawValue::from_string(text).unwrap();
            let p = parse_payload(&raw).unwrap();
            assert_eq!((p.s, p.t), (12, 3456));
        }
        let reordered = RawValue::from_string(r#"{"t":5,"p":"x","s":7}"#.into()).unwrap();
        let p = parse_payload(&reordered).unwrap();
        assert_eq!((p.s, p.t), (7, 5));
        let spaced = RawValue::from_string(r#"{"s": 7, "t": 5}"#.into()).unwrap();
        assert_eq!(parse_payload(&spaced).map(|p| p.s), Some(7));
        assert!(parse_payload(&RawValue::from_string(r#"{"s":1}"#.into()).unwrap()).is_none());
    }
}
