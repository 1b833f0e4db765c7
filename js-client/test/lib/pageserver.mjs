// A static server on 127.0.0.1 (port 0) for the browser test, on an origin other than the broker's:
//   /            a blank page that loads the browser build with a plain <script> tag
//   /halley-client.min.js   dist/halley-client.min.js
import {readFile} from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import {fileURLToPath} from "node:url";

const BUNDLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "dist", "halley-client.min.js");
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>halley-client</title>
<script src="/halley-client.min.js"></script></head><body></body></html>`;

export function startPageServer() {
    const sockets = new Set();
    const server = http.createServer(async (req, res) => {
        const headers = {"cache-control": "no-store"};
        if (req.url === "/") {
            res.writeHead(200, {...headers, "content-type": "text/html;charset=UTF-8"});
            res.end(PAGE);
        } else if (req.url === "/halley-client.min.js") {
            res.writeHead(200, {...headers, "content-type": "text/javascript;charset=UTF-8"});
            res.end(await readFile(BUNDLE));
        } else {
            res.writeHead(404);
            res.end();
        }
    });
    server.on("connection", s => {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
    });
    return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve({
            origin: `http://127.0.0.1:${server.address().port}`,
            stop: () => new Promise(done => {
                sockets.forEach(s => s.destroy());
                server.close(() => done());
            }),
        }));
    });
}
