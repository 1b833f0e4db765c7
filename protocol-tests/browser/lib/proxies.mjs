// Real reverse proxies in front of the broker, from Debian's packages (installed by run.sh when missing), each
// started on a free 127.0.0.1 port with its own directory and killed by PID on stop().
//
// startNginx: nginx.
// By default it refuses WebSocket: it forwards every request over HTTP/1.1 but never forwards `Upgrade` or
// `Connection`, the way a proxy configured without WebSocket support does, so an upgrade reaches the broker as
// a plain GET and the browser's handshake never gets its 101. With {websocket: true} it is configured as the
// README tells (Upgrade and Connection passed on), and the socket goes through.
import {spawn} from "node:child_process";
import {mkdtempSync, rmSync, writeFileSync, mkdirSync} from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";
export const HAPROXY_BIN = process.env.HAPROXY_BIN || "/usr/sbin/haproxy";

function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const {port} = server.address();
            server.close(() => resolve(port));
        });
    });
}

function listening(port, ms) {
    const deadline = Date.now() + ms;
    return new Promise((resolve, reject) => {
        const attempt = () => {
            const socket = net.connect({host: "127.0.0.1", port}, () => {
                socket.destroy();
                resolve();
            });
            socket.once("error", () => {
                socket.destroy();
                if (Date.now() > deadline) reject(new Error(`proxy not listening on ${port} within ${ms} ms`));
                else setTimeout(attempt, 50);
            });
        };
        attempt();
    });
}

/**
 * Starts nginx proxying to `brokerPort`; returns {port, origin, urlFor(brokerUrl), output(), stop()}. With
 * `pagesPort`, /pages/ and /faye-js/ go to that page server instead, so that pages share the Bayeux URL's origin.
 */
export async function startNginx(brokerPort, {websocket = false, pagesPort = null} = {}) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "halley-nginx-"));
    mkdirSync(path.join(dir, "tmp"));
    const port = await freePort();
    const conf = path.join(dir, "nginx.conf");
    writeFileSync(conf, `
worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${dir}/tmp/body;
    proxy_temp_path ${dir}/tmp/proxy;
    fastcgi_temp_path ${dir}/tmp/fastcgi;
    uwsgi_temp_path ${dir}/tmp/uwsgi;
    scgi_temp_path ${dir}/tmp/scgi;
    map $http_upgrade $connection_upgrade {
        default upgrade;
        "" "";
    }
    server {
        listen 127.0.0.1:${port};
${pagesPort ? `        location /pages/ { proxy_pass http://127.0.0.1:${pagesPort}; }
        location /faye-js/ { proxy_pass http://127.0.0.1:${pagesPort}; }` : ""}
        location / {
            proxy_pass http://127.0.0.1:${brokerPort};
            proxy_http_version 1.1;
${websocket ? `            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;` : `            # No WebSocket: neither hop-by-hop header of the upgrade is passed on.
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";`}
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 30s;
        }
    }
}
`);
    return run(NGINX_BIN, ["-p", dir, "-c", conf, "-g", "daemon off; master_process off;"], dir, port);
}

/** Runs a proxy in the foreground until it listens on `port`; stop() kills it by PID and removes `dir`. */
async function run(bin, args, dir, port) {
    const log = [];
    const child = spawn(bin, args, {stdio: ["ignore", "pipe", "pipe"]});
    child.stdout.setEncoding("utf8").on("data", d => log.push(d));
    child.stderr.setEncoding("utf8").on("data", d => log.push(d));
    const exited = new Promise(resolve => child.once("exit", resolve));
    try {
        await Promise.race([listening(port, 10000), exited.then(code => {
            throw new Error(`${bin} exited (${code}) before listening: ${log.join("")}`);
        })]);
    } catch (err) {
        child.kill("SIGKILL");
        throw err;
    }
    return {
        port,
        origin: `http://127.0.0.1:${port}`,
        urlFor(brokerUrl) {
            const u = new URL(brokerUrl);
            u.port = String(port);
            return u.href;
        },
        output: () => log.join(""),
        async stop() {
            if (child.exitCode === null && child.signalCode === null) {
                child.kill("SIGTERM");
                const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
                await exited;
                clearTimeout(timer);
            }
            rmSync(dir, {recursive: true, force: true});
        },
    };
}

/**
 * startHaproxy: HAProxy in HTTP mode as the README configures it for WebSocket (it passes upgrades on by itself;
 * `timeout tunnel` keeps an idle socket open past the client/server timeouts).
 */
export async function startHaproxy(brokerPort, {pagesPort = null} = {}) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "halley-haproxy-"));
    const port = await freePort();
    const conf = path.join(dir, "haproxy.cfg");
    writeFileSync(conf, `
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend bayeux
    bind 127.0.0.1:${port}
${pagesPort ? `    acl pages path_beg /pages/ /faye-js/
    use_backend pages if pages
` : ""}    default_backend halley
backend halley
    server halley1 127.0.0.1:${brokerPort}
${pagesPort ? `backend pages
    server pages1 127.0.0.1:${pagesPort}
` : ""}`);
    return run(HAPROXY_BIN, ["-db", "-f", conf], dir, port);
}
