// A real reverse proxy in front of the broker that refuses WebSocket: Debian's nginx (installed by run.sh when
// missing), started on a free 127.0.0.1 port with its own prefix directory and killed by PID on stop().
// It forwards every request to the broker over HTTP/1.1 but never forwards `Upgrade` or `Connection`, the way a
// proxy configured without WebSocket support does, so an upgrade reaches the broker as a plain GET and the
// browser's handshake never gets its 101.
import {spawn} from "node:child_process";
import {mkdtempSync, rmSync, writeFileSync, mkdirSync} from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const NGINX_BIN = process.env.NGINX_BIN || "/usr/sbin/nginx";

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
                if (Date.now() > deadline) reject(new Error(`nginx not listening on ${port} within ${ms} ms`));
                else setTimeout(attempt, 50);
            });
        };
        attempt();
    });
}

/** Starts nginx proxying to `brokerPort`; returns {port, origin, urlFor(brokerUrl), output(), stop()}. */
export async function startNginx(brokerPort) {
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
    server {
        listen 127.0.0.1:${port};
        location / {
            proxy_pass http://127.0.0.1:${brokerPort};
            proxy_http_version 1.1;
            # No WebSocket: neither hop-by-hop header of the upgrade is passed on.
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 30s;
        }
    }
}
`);
    const log = [];
    const child = spawn(NGINX_BIN, ["-p", dir, "-c", conf, "-g", "daemon off; master_process off;"],
        {stdio: ["ignore", "pipe", "pipe"]});
    child.stdout.setEncoding("utf8").on("data", d => log.push(d));
    child.stderr.setEncoding("utf8").on("data", d => log.push(d));
    const exited = new Promise(resolve => child.once("exit", resolve));
    try {
        await Promise.race([listening(port, 10000), exited.then(code => {
            throw new Error(`nginx exited (${code}) before listening: ${log.join("")}`);
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
