//! halley-probe: the container's health check, a tiny std-only HTTP GET (no shell, curl or wget
//! is needed in the runtime image).
//!
//!   halley-probe [PATH] [ADDR:PORT]
//!
//! GETs PATH (default `/health`) from ADDR:PORT and exits 0 on an HTTP 200, 1 otherwise (2 for a
//! usage error). Without ADDR:PORT it reads `HALLEY_LISTEN` as the broker does (default
//! `0.0.0.0:8080`) and asks 127.0.0.1 when the broker listens on every address. The whole probe
//! is bounded by a 3 s timeout. Built with plain `rustc` (see docker/Dockerfile).
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(3);

fn target(explicit: Option<String>) -> Result<SocketAddr, String> {
    let listen = explicit
        .or_else(|| std::env::var("HALLEY_LISTEN").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "0.0.0.0:8080".to_string());
    let mut addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("bad address {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {listen:?} resolves to nothing"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

fn probe(path: &str, addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body)
    } else {
        Err(format!("{status} {body}"))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "/health".to_string());
    if !path.starts_with('/') {
        eprintln!("usage: halley-probe [PATH] [ADDR:PORT]");
        return ExitCode::from(2);
    }
    let result = target(args.next()).and_then(|addr| probe(&path, addr));
    match result {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("halley-probe {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
