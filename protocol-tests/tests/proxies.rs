//! Request smuggling through real proxies: Debian's HAProxy and nginx (installed with apt-get when missing, as
//! `scripts/test` installs iptables) each run on a free 127.0.0.1 port in front of a Halley the test starts, and
//! raw probes go through them: CL.TE, TE.CL, TE.TE with obfuscated `Transfer-Encoding`, bare LF line endings,
//! duplicate `Content-Length`.
//!
//! Each proxy refuses `/cometd/forbidden` (403), as a proxy guarding an internal path would. Every probe hides,
//! where a looser parser would see a second request, a Bayeux publish to `/cometd/forbidden` on a channel a
//! subscriber session watches. If the proxy and Halley ever disagreed on where a request ends, that publish would
//! reach Halley without the proxy having seen it, and the subscriber would receive it. A control publish through
//! the allowed path must arrive, and a plain request after each probe must get its own answer.
//!
//! Without the packages (no root, no apt) the test says so on stderr and skips; with `CI` set it fails instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use halley_protocol_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The proxies' binaries, installing their packages when missing; `None` (after saying why) if impossible.
fn proxies_installed() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists())
    };
    if find("haproxy").is_none() || find("nginx").is_none() {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        if root {
            let apt = |args: &[&str]| {
                std::process::Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let _ = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "haproxy", "nginx"]);
        }
    }
    match (find("haproxy"), find("nginx")) {
        (Some(haproxy), Some(nginx)) => Some((haproxy, nginx)),
        _ => {
            let why = "proxies.rs: SKIPPED — haproxy and nginx are not installed and apt-get could not install them";
            eprintln!("\n!!!!!!!! {why} !!!!!!!!\n");
            assert!(std::env::var_os("CI").is_none(), "{why} (CI is set)");
            None
        }
    }
}

/// A free port on 127.0.0.1 (bound then released; the proxy binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A proxy process, killed (by its own handle) when dropped.
struct Proxy {
    name: &'static str,
    port: u16,
    _child: Child,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "halley-{name}-{}-{}",
        std::process::id(),
        next_id("")
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

async fn start_proxy(name: &'static str, bin: &Path, backend: u16) -> Proxy {
    let port = free_port();
    let dir = temp_dir(name);
    let d = dir.0.display();
    let (config, args): (String, Vec<String>) = match name {
        "haproxy" => (
            format!(
                "global\n  maxconn 200\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  \
                 timeout server 10s\nfrontend front\n  bind 127.0.0.1:{port}\n  \
                 http-request deny deny_status 403 if {{ path_beg /cometd/forbidden }}\n  default_backend halley\n\
                 backend halley\n  http-reuse always\n  server h 127.0.0.1:{backend}\n"
            ),
            vec!["-db".into(), "-f".into(), format!("{d}/proxy.cfg")],
        ),
        _ => (
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 upstream halley {{ server 127.0.0.1:{backend}; keepalive 8; }}\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location /cometd/forbidden {{ return 403; }}\n    \
                 location / {{ proxy_pass http://halley; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
            ),
            vec![
                "-p".into(),
                format!("{d}/"),
                "-e".into(),
                format!("{d}/error.log"),
                "-c".into(),
                format!("{d}/proxy.cfg"),
            ],
        ),
    };
    std::fs::write(dir.0.join("proxy.cfg"), config).expect("proxy config");
    let child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} did not listen on {port}"
        );
        sleep_ms(50).await;
    }
    Proxy {
        name,
        port,
        _child: child,
        _dir: dir,
    }
}

/// Sends `bytes` to the proxy on a fresh connection and reads whatever comes back for a moment.
async fn send(proxy: &Proxy, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect to the proxy");
    let _ = stream.write_all(bytes).await;
    let (got, _) =
        read_until_closed(&mut stream, Instant::now(), Duration::from_millis(1000)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The request a looser parser would find inside a probe: a publish of `tag` through the forbidden path.
fn inner_publish(publisher: &str, tag: &str) -> String {
    let body = json!([{"channel": "/smuggled", "clientId": publisher, "data": tag}]).to_string();
    format!(
        "POST /cometd/forbidden HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The probes: (name, raw bytes sent to the proxy).
fn probes(publisher: &str) -> Vec<(String, Vec<u8>)> {
    let mut probes = Vec::new();
    // `Connection: close` so that the proxy answers and closes promptly; its backend connections are reused anyway.
    let outer = "POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n";
    // Ways to say (or half-say) Transfer-Encoding: chunked.
    let codings = [
        ("TE", "Transfer-Encoding: chunked\r\n"),
        ("TE xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("TE leading space", "Transfer-Encoding:  chunked\r\n"),
        ("TE tab", "Transfer-Encoding:\tchunked\r\n"),
        (
            "TE chunked, identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        (
            "TE identity, chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
        (
            "TE twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("TE obs-fold", "X-Pad: 1\r\n Transfer-Encoding: chunked\r\n"),
        ("TE space before colon", "Transfer-Encoding : chunked\r\n"),
        ("TE bare LF", "X-Pad: 1\nTransfer-Encoding: chunked\r\n"),
        ("TE upper case", "TRANSFER-ENCODING: CHUNKED\r\n"),
    ];
    for (n, (what, te)) in codings.iter().enumerate() {
        // CL.TE: the length covers the inner request, the chunked body ends before it.
        let tag = format!("CL.TE {what} #{n}");
        let body = format!("0\r\n\r\n{}", inner_publish(publisher, &tag));
        let probe = format!("{outer}Content-Length: {}\r\n{te}\r\n{body}", body.len());
        probes.push((tag, probe.into_bytes()));
        // TE.CL: the chunk holds the inner request, the length ends before it.
        let tag = format!("TE.CL {what} #{n}");
        let inner = inner_publish(publisher, &tag);
        let probe = format!(
            "{outer}Content-Length: 4\r\n{te}\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
            inner.len()
        );
        probes.push((tag, probe.into_bytes()));
        // TE alone, with the inner request after the terminating chunk.
        let tag = format!("TE alone {what} #{n}");
        let probe = format!("{outer}{te}\r\n0\r\n\r\n{}", inner_publish(publisher, &tag));
        probes.push((tag, probe.into_bytes()));
    }
    // Bare LF line endings throughout.
    let tag = "bare LF head".to_string();
    let body = inner_publish(publisher, &tag);
    let probe = format!(
        "POST /cometd HTTP/1.1\nHost: x\nConnection: close\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes();
    probes.push((tag, probe));
    // Duplicate Content-Length, either order.
    for (n, (first, second)) in [("0", "LEN"), ("LEN", "0")].iter().enumerate() {
        let tag = format!("duplicate CL #{n}");
        let body = inner_publish(publisher, &tag);
        let len = body.len().to_string();
        let probe = format!(
            "{outer}Content-Length: {}\r\nContent-Length: {}\r\n\r\n{body}",
            first.replace("LEN", &len),
            second.replace("LEN", &len)
        );
        probes.push((tag, probe.into_bytes()));
    }
    // A bare LF inside a chunk extension, hiding the inner request in what a lax parser takes for a chunk.
    let tag = "chunk extension bare LF".to_string();
    let inner = inner_publish(publisher, &tag);
    let probe = format!(
        "{outer}Transfer-Encoding: chunked\r\n\r\n{:x};x\n0\r\n\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    probes.push((tag, probe.into_bytes()));
    probes
}

async fn probe_through(proxy: &Proxy, b: &Broker) {
    let subscriber = b.session().await;
    b.subscribe(&subscriber, "/smuggled").await;
    let publisher = b.session().await;

    // The guard works: the forbidden path is refused by the proxy.
    let direct = inner_publish(&publisher, "direct");
    let answer = send(proxy, direct.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "{}: the forbidden path answered {answer:?}",
        proxy.name
    );

    let health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut refused = 0;
    for (tag, bytes) in probes(&publisher) {
        let answer = send(proxy, &bytes).await;
        if answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501") {
            refused += 1;
        }
        // The next request through the proxy (which may reuse the backend connection) gets its own answer.
        let after = send(proxy, health).await;
        assert!(
            after.starts_with("HTTP/1.1 200") && after.contains(r#"{"status":"ok"}"#),
            "{}: after probe {tag:?} a plain request got {after:?}",
            proxy.name
        );
    }

    // Control: a publish through the allowed path arrives, so the detector can see one.
    let control =
        json!([{"channel": "/smuggled", "clientId": publisher, "data": "control"}]).to_string();
    let request = format!(
        "POST /cometd HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{control}",
        control.len()
    );
    let answer = send(proxy, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}: control publish answered {answer:?}",
        proxy.name
    );
    let received = data_on(&b.connect_now(&subscriber).await, "/smuggled");
    assert_eq!(
        received,
        [json!("control")],
        "{}: smuggled publishes reached the subscriber (or the control did not)",
        proxy.name
    );
    eprintln!(
        "{}: {} probes, {refused} answered with an error status, none smuggled",
        proxy.name,
        probes(&publisher).len()
    );
}

#[tokio::test]
async fn smuggling_probes_through_haproxy_and_nginx_reach_no_session() {
    let Some((haproxy, nginx)) = proxies_installed() else {
        return;
    };
    // Sessions outlive the probes (each may wait a second for the proxy).
    let b = Broker::start(&["--timeout", "2000", "--max-interval", "300000"]).await;
    for (name, bin) in [("haproxy", &haproxy), ("nginx", &nginx)] {
        let proxy = start_proxy(name, bin, b.port).await;
        probe_through(&proxy, &b).await;
    }
}
