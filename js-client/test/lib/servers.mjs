// The three Bayeux servers the suite runs against, all on 127.0.0.1 with a short hold time (5 s):
//   startHalley()  the Halley binary ($HALLEY_BIN or <repo>/target/release/halley), a child process
//   startFaye()    Faye 1.4.3's NodeAdapter on an http server in this process, mounted at /bayeux
//   startCometd()  cometd-nodejs-server 1.2.1 (with its ack extension) in this process, at /cometd
// Each returns {name, url, port, restart(), stop(), output()}. restart() stops the server and starts a new one on
// the same port, so that it has forgotten every session. Faye and CometD also record the handshake tokens they
// saw in `tokens` and refuse a handshake whose ext.token is "bad".
import {spawn} from "node:child_process";
import {existsSync} from "node:fs";
import http from "node:http";
import {createRequire} from "node:module";
import path from "node:path";
import {fileURLToPath} from "node:url";

const require = createRequire(import.meta.url);
const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, "..", "..", "..");
export const HALLEY_BIN = process.env.HALLEY_BIN || path.join(REPO_ROOT, "target", "release", "halley");
export const HOLD_MS = 5000;

const children = new Set();
process.on("exit", () => children.forEach(c => c.kill("SIGKILL")));

function spawnHalley(listen, args, log) {
    if (!existsSync(HALLEY_BIN)) throw new Error(`Halley binary not found: ${HALLEY_BIN} (build it or set HALLEY_BIN)`);
    const hold = args.includes("--timeout") ? [] : ["--timeout", String(HOLD_MS)];
    const child = spawn(HALLEY_BIN, ["--listen", listen, ...hold, ...args],
        {stdio: ["ignore", "pipe", "pipe"]});
    children.add(child);
    child.on("exit", () => children.delete(child));
    child.stderr.setEncoding("utf8").on("data", d => log.push(d));
    return new Promise((resolve, reject) => {
        let out = "";
        const timer = setTimeout(() => {
            child.kill("SIGKILL");
            reject(new Error(`halley did not start within 10 s:\n${log.join("")}`));
        }, 10000);
        child.stdout.setEncoding("utf8").on("data", d => {
            out += d;
            const m = /listening on (http:\/\/\S+)/.exec(out);
            if (m) {
                clearTimeout(timer);
                resolve({child, url: m[1]});
            }
        });
        child.on("exit", code => {
            clearTimeout(timer);
            reject(new Error(`halley exited (${code}) before listening:\n${log.join("")}`));
        });
    });
}

function kill(child, signal = "SIGTERM") {
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise(resolve => {
        const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
        child.once("exit", () => {
            clearTimeout(timer);
            resolve();
        });
        child.kill(signal);
    });
}

/** Starts Halley with extra command-line arguments. */
export async function startHalley(args = []) {
    const log = [];
    let {child, url} = await spawnHalley("127.0.0.1:0", args, log);
    const port = Number(new URL(url).port);
    return {
        name: "halley",
        url,
        port,
        output: () => log.join(""),
        stop: () => kill(child),
        /** SIGTERM lets Halley drain (held connects answered); SIGKILL is a crash. */
        async restart(downMs = 0, signal = "SIGTERM") {
            await kill(child, signal);
            if (downMs) await new Promise(r => setTimeout(r, downMs));
            ({child} = await spawnHalley(`127.0.0.1:${port}`, args, log));
        },
    };
}

/** Runs an http server built by `make()` ({server, close}) on 127.0.0.1, restartable on the same port. */
async function inProcess(name, pathname, make) {
    let current;
    const sockets = new Set();
    const listen = port => new Promise((resolve, reject) => {
        current = make();
        current.server.on("connection", s => {
            sockets.add(s);
            s.on("close", () => sockets.delete(s));
        });
        current.server.once("error", reject);
        current.server.listen(port, "127.0.0.1", () => resolve(current.server.address().port));
    });
    const stop = () => new Promise(resolve => {
        current.close?.();
        current.server.close(() => resolve());
        sockets.forEach(s => s.destroy());
    });
    const port = await listen(0);
    return {
        name,
        url: `http://127.0.0.1:${port}${pathname}`,
        port,
        output: () => "",
        stop,
        async restart(downMs = 0) {
            await stop();
            if (downMs) await new Promise(r => setTimeout(r, downMs));
            await listen(port);
        },
    };
}

/** Faye 1.4.3 (NodeAdapter, memory engine) at /bayeux; `extensions` are added after the token check. */
export async function startFaye({extensions = []} = {}) {
    const faye = require("faye");
    const tokens = [];
    const srv = await inProcess("faye", "/bayeux", () => {
        const bayeux = new faye.NodeAdapter({mount: "/bayeux", timeout: HOLD_MS / 1000});
        bayeux.addExtension({
            incoming(message, callback) {
                if (message.channel === "/meta/handshake") {
                    const token = message.ext?.token;
                    if (token) tokens.push(token);
                    if (token === "bad") message.error = "403::bad token";
                }
                callback(message);
            },
        });
        extensions.forEach(e => bayeux.addExtension(e));
        const server = http.createServer((req, res) => {
            res.writeHead(404);
            res.end();
        });
        bayeux.attach(server);
        return {server, close: () => bayeux.close()};
    });
    return Object.assign(srv, {tokens, refusesBadToken: true});
}

/** cometd-nodejs-server 1.2.1 with the acknowledged-messages extension, at /cometd. */
export async function startCometd() {
    const cometd = require("cometd-nodejs-server");
    const {AcknowledgedMessagesExtension} = require("cometd-nodejs-server/ack-extension");
    const tokens = [];
    const srv = await inProcess("cometd", "/cometd", () => {
        const cometdServer = cometd.createCometDServer({timeout: HOLD_MS, logLevel: "info"});
        cometdServer.addExtension(new AcknowledgedMessagesExtension());
        cometdServer.policy = {
            canHandshake(session, message, callback) {
                const token = message.ext?.token;
                if (token) tokens.push(token);
                callback(undefined, token !== "bad");
            },
        };
        return {server: http.createServer(cometdServer.handle), close: () => cometdServer.close()};
    });
    return Object.assign(srv, {tokens, refusesBadToken: true});
}
