// A tiny static file server (127.0.0.1, port 0) that serves the test pages from an origin other than
// the broker's, plus the browser libraries from node_modules:
//   /pages/*       protocol-tests/browser/pages
//   /cometd-js/*   node_modules/cometd (the CometD 9 ES modules)
//   /dojo/*        node_modules/dojo   (dojo 1.6 source loader: dojo/dojo.js)
//   /dojox/*       node_modules/dojox  (dojox 1.6, found by dojo's loader as ../dojox/)
//   /faye-js/*     node_modules/faye/client (Faye's browser bundle, faye-browser.js)
// With {proxyPrefix, proxyTarget}, requests whose path is proxyPrefix or starts with proxyPrefix + "/"
// are forwarded verbatim to proxyTarget (an origin), as a reverse proxy in front of the broker would
// do, so that a page and the Bayeux URL share this server's origin. With {keepUpstreamOnAbort: true} a
// request the browser aborts stays open at the broker (as behind an intermediary that does not
// propagate client aborts); its eventual status is still recorded in `proxied`.
import http from "node:http";
import {readFile} from "node:fs/promises";
import path from "node:path";
import {fileURLToPath} from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const MOUNTS = {
    "/pages/": path.join(ROOT, "pages"),
    "/cometd-js/": path.join(ROOT, "node_modules", "cometd"),
    "/dojo/": path.join(ROOT, "node_modules", "dojo"),
    "/dojox/": path.join(ROOT, "node_modules", "dojox"),
    "/faye-js/": path.join(ROOT, "node_modules", "faye", "client"),
};
const TYPES = {
    ".html": "text/html;charset=UTF-8",
    ".js": "text/javascript;charset=UTF-8",
    ".mjs": "text/javascript;charset=UTF-8",
    ".json": "application/json;charset=UTF-8",
    ".css": "text/css;charset=UTF-8",
};

export function startPageServer({proxyPrefix = null, proxyTarget = null, keepUpstreamOnAbort = false} = {}) {
    const proxied = []; // {method, url, contentType, body, status, responseHeaders}
    const sockets = new Set();
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, "http://127.0.0.1");
        if (proxyPrefix && (url.pathname === proxyPrefix || url.pathname.startsWith(proxyPrefix + "/"))) {
            proxy(req, res, proxyTarget, proxied, keepUpstreamOnAbort);
            return;
        }
        if (url.pathname === "/favicon.ico") {
            res.writeHead(204);
            res.end();
            return;
        }
        serveStatic(url.pathname, res).catch(err => {
            if (!res.headersSent) res.writeHead(500, {"content-type": "text/plain"});
            res.end(String(err));
        });
    });
    server.on("connection", socket => {
        sockets.add(socket);
        socket.on("close", () => sockets.delete(socket));
    });
    return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const {port} = server.address();
            resolve({
                origin: `http://127.0.0.1:${port}`,
                port,
                proxied,
                stop: () => new Promise(done => {
                    for (const s of sockets) s.destroy();
                    server.close(() => done());
                }),
            });
        });
    });
}

async function serveStatic(pathname, res) {
    for (const [prefix, dir] of Object.entries(MOUNTS)) {
        if (!pathname.startsWith(prefix)) continue;
        const rel = decodeURIComponent(pathname.slice(prefix.length));
        const file = path.resolve(dir, rel);
        if (!file.startsWith(dir + path.sep)) break;
        let body;
        try {
            body = await readFile(file);
        } catch {
            break;
        }
        res.writeHead(200, {
            "content-type": TYPES[path.extname(file)] || "application/octet-stream",
            "cache-control": "no-store",
        });
        res.end(body);
        return;
    }
    res.writeHead(404, {"content-type": "text/plain"});
    res.end("not found");
}

function proxy(req, res, target, log, keepUpstreamOnAbort) {
    const chunks = [];
    req.on("data", c => chunks.push(c));
    req.on("end", () => {
        const body = Buffer.concat(chunks);
        const entry = {
            method: req.method,
            url: req.url,
            contentType: req.headers["content-type"] || null,
            cookie: req.headers.cookie || null,
            body: body.toString("utf8"),
            status: null,
        };
        log.push(entry);
        const t = new URL(target);
        const headers = {...req.headers, host: t.host};
        const upstream = http.request({
            host: t.hostname,
            port: t.port,
            method: req.method,
            path: req.url,
            headers,
        }, up => {
            entry.status = up.statusCode;
            if (res.destroyed) {
                up.resume(); // the browser is gone (keepUpstreamOnAbort): drain and drop the answer
                return;
            }
            res.writeHead(up.statusCode, up.headers);
            up.pipe(res);
        });
        upstream.on("error", err => {
            if (!res.headersSent) res.writeHead(502, {"content-type": "text/plain"});
            res.end(`proxy error: ${err.message}`);
        });
        // A browser that aborts a held connect must abort it at the broker too.
        res.on("close", () => {
            if (!res.writableFinished && !keepUpstreamOnAbort) upstream.destroy();
        });
        upstream.end(body);
    });
}
