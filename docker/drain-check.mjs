// Checks Halley's health endpoints and its SIGTERM drain, against a plain process or a container.
//
//   node docker/drain-check.mjs binary [--shutdown-timeout MS]
//       starts $HALLEY_BIN (default target/release/halley) on 127.0.0.1:0 itself and signals it
//   node docker/drain-check.mjs external --url URL --term-cmd CMD --wait-cmd CMD --shutdown-timeout MS
//       URL is the Bayeux endpoint of a broker started by the caller (e.g. a container);
//       CMD are shell commands: one sends SIGTERM, the other returns when the process has exited
//   common options:
//       --scenario drain|deadline  drain (default): a held /meta/connect is answered at once with
//                                  reconnect "retry" and the process exits soon after, well before
//                                  the deadline; deadline: a request stalled mid-body keeps the
//                                  process busy, which must still exit by --shutdown-timeout
//       --expect-timeout MS        advice.timeout the handshake must carry (checks configuration)
//       --expect-interval MS       advice.interval the drain reply must carry (default 0)
//
// Only 127.0.0.1; every wait is bounded. Exits 0 when every check passed, 1 otherwise.
import {spawn} from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import {fileURLToPath} from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..");

function parseArgs(argv) {
    const opts = {mode: argv[0], scenario: "drain", expectInterval: 0, shutdownTimeout: 3000};
    for (let i = 1; i < argv.length; i += 2) {
        const [key, value] = [argv[i], argv[i + 1]];
        if (value === undefined) throw new Error(`missing value for ${key}`);
        switch (key) {
            case "--url": opts.url = value; break;
            case "--term-cmd": opts.termCmd = value; break;
            case "--wait-cmd": opts.waitCmd = value; break;
            case "--scenario": opts.scenario = value; break;
            case "--shutdown-timeout": opts.shutdownTimeout = Number(value); break;
            case "--expect-timeout": opts.expectTimeout = Number(value); break;
            case "--expect-interval": opts.expectInterval = Number(value); break;
            default: throw new Error(`unknown option ${key}`);
        }
    }
    if (!["binary", "external"].includes(opts.mode)) throw new Error("first argument: binary or external");
    if (opts.mode === "external" && !(opts.url && opts.termCmd && opts.waitCmd)) {
        throw new Error("external needs --url, --term-cmd and --wait-cmd");
    }
    if (!["drain", "deadline"].includes(opts.scenario)) throw new Error("--scenario: drain or deadline");
    return opts;
}

let failures = 0;
function check(ok, what, detail = "") {
    console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? ` (${detail})` : ""}`);
    if (!ok) failures++;
    return ok;
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
    ]).finally(() => clearTimeout(timer));
}

// One HTTP request; resolves {status, body, json} or rejects (bounded by timeoutMs).
function request(url, {method = "GET", body, agent, timeoutMs = 10000} = {}) {
    return withTimeout(new Promise((resolve, reject) => {
        const req = http.request(url, {
            method,
            agent,
            headers: body ? {"Content-Type": "application/json", "Content-Length": Buffer.byteLength(body)} : {},
        }, res => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", c => text += c);
            res.on("end", () => {
                let json;
                try { json = JSON.parse(text); } catch { json = undefined; }
                resolve({status: res.statusCode, body: text, json});
            });
            res.on("error", reject);
        });
        req.on("error", reject);
        req.end(body);
    }), timeoutMs, `${method} ${url}`);
}

const bayeux = (url, messages, opts = {}) => request(url, {method: "POST", body: JSON.stringify(messages), ...opts});
const handshakeMessage = id => ({id, channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"]});

function run(command, timeoutMs) {
    return withTimeout(new Promise((resolve, reject) => {
        const child = spawn("sh", ["-c", command], {stdio: ["ignore", "inherit", "inherit"]});
        child.on("error", reject);
        child.on("exit", code => resolve(code));
    }), timeoutMs, `command ${JSON.stringify(command)}`);
}

// Starts the plain binary; returns {url, term(), exited (a promise of {code, signal})}.
function startBinary(shutdownTimeout) {
    const bin = process.env.HALLEY_BIN || path.join(REPO, "target", "release", "halley");
    const child = spawn(bin, ["--listen", "127.0.0.1:0", "--timeout", "20000", "--shutdown-timeout", String(shutdownTimeout)],
        {stdio: ["ignore", "pipe", "pipe"]});
    process.on("exit", () => { try { child.kill("SIGKILL"); } catch { /* gone */ } });
    const exited = new Promise(resolve => child.on("exit", (code, signal) => resolve({code, signal})));
    let stderr = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", c => stderr += c);
    return withTimeout(new Promise((resolve, reject) => {
        let out = "";
        child.on("error", reject);
        exited.then(e => reject(new Error(`${bin} exited before listening: ${JSON.stringify(e)} ${stderr}`)));
        child.stdout.setEncoding("utf8");
        child.stdout.on("data", c => {
            out += c;
            const m = /listening on (http:\/\/\S+)/.exec(out);
            if (m) resolve({url: m[1], term: () => child.kill("SIGTERM"), exited, log: () => stderr});
        });
    }), 10000, `start ${bin}`);
}

// Sends a POST with Content-Length of `body` but only its first `sent` bytes; finish() sends the rest
// and resolves {status, body} (Connection: close; chunked bodies decoded).
async function rawPartialRequest(u, body, sent) {
    const socket = net.connect(Number(u.port), u.hostname);
    await withTimeout(new Promise((resolve, reject) => { socket.on("connect", resolve); socket.on("error", reject); }), 5000, "raw connect");
    let data = "";
    let failed;
    socket.setEncoding("utf8");
    socket.on("data", c => data += c);
    socket.on("error", e => failed = e);
    const ended = new Promise(resolve => socket.on("close", resolve));
    const bytes = Buffer.from(body);
    socket.write(`POST ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${bytes.length}\r\nConnection: close\r\n\r\n`);
    socket.write(bytes.subarray(0, sent));
    return {
        socket,
        finish: () => withTimeout((async () => {
            socket.write(bytes.subarray(sent));
            await ended;
            if (!data && failed) throw failed;
            const split = data.indexOf("\r\n\r\n");
            if (split < 0) throw new Error(`no HTTP response: ${JSON.stringify(data)}`);
            const head = data.slice(0, split);
            let rest = data.slice(split + 4);
            if (/transfer-encoding:\s*chunked/i.test(head)) {
                let out = "";
                for (;;) {
                    const eol = rest.indexOf("\r\n");
                    const size = parseInt(rest.slice(0, eol), 16);
                    if (!size) break;
                    out += rest.slice(eol + 2, eol + 2 + size);
                    rest = rest.slice(eol + 2 + size + 2);
                }
                rest = out;
            }
            return {status: Number(head.split(" ")[1]), body: rest};
        })(), 10000, "in-flight request"),
    };
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    let target;
    if (opts.mode === "binary") {
        target = await startBinary(opts.shutdownTimeout);
    } else {
        target = {
            url: opts.url,
            term: () => run(opts.termCmd, 15000),
            exited: null,
            log: () => "",
        };
    }
    const url = target.url;
    const origin = new URL(url).origin;
    console.log(`# ${opts.mode} broker at ${url}, scenario ${opts.scenario}, shutdown timeout ${opts.shutdownTimeout} ms`);

    // Health endpoints.
    const health = await request(`${origin}/health`);
    check(health.status === 200 && health.json?.status === "ok", "GET /health is 200 {status: ok}", health.body);
    const ready = await request(`${origin}/ready`);
    check(ready.status === 200 && ready.json?.status === "ready", "GET /ready is 200 {status: ready}", ready.body);

    // A session with a held connect.
    const agentA = new http.Agent({keepAlive: true, maxSockets: 1});
    const [hs] = (await bayeux(url, [handshakeMessage("1")], {agent: agentA})).json;
    check(hs?.successful === true && typeof hs.clientId === "string", "handshake succeeds", JSON.stringify(hs));
    if (opts.expectTimeout !== undefined) {
        check(hs?.advice?.timeout === opts.expectTimeout, `handshake advice.timeout is ${opts.expectTimeout} (configuration reached the broker)`,
            JSON.stringify(hs?.advice));
    }
    const clientId = hs.clientId;
    const connect = id => ({id, channel: "/meta/connect", clientId, connectionType: "long-polling"});
    const [first] = (await bayeux(url, [connect("2")], {agent: agentA})).json;
    check(first?.successful === true, "first connect is answered at once", JSON.stringify(first));

    const held = bayeux(url, [connect("3")], {agent: agentA, timeoutMs: 30000}).then(
        r => ({reply: r, at: Date.now()}), e => ({error: e, at: Date.now()}));
    const pending = await Promise.race([held.then(() => false), sleep(500).then(() => true)]);
    check(pending, "second connect is held");

    // A keep-alive connection opened before the signal and idle during it: the drain closes it.
    const agentB = new http.Agent({keepAlive: true, maxSockets: 1});
    await request(`${origin}/health`, {agent: agentB});

    // A handshake already in flight when the signal comes (its body completes after it): it must be
    // refused with reconnect "handshake", never create a session.
    const u = new URL(url);
    const handshakeBody = JSON.stringify([handshakeMessage("9")]);
    const inflight = await rawPartialRequest(u, handshakeBody, 1);

    // deadline scenario: a request whose body never completes keeps the server busy.
    let stalled;
    if (opts.scenario === "deadline") stalled = await rawPartialRequest(u, "[".padEnd(1000), 1);
    await sleep(300);

    const t0 = Date.now();
    const termResult = target.term();
    if (termResult instanceof Promise) {
        const code = await termResult;
        check(code === 0, "SIGTERM delivered", `exit code of the signal command ${code}`);
    }
    await sleep(200);

    const idle = await request(`${origin}/health`, {agent: agentB, timeoutMs: 5000}).then(r => r, e => ({error: e}));
    check(idle.error !== undefined, "idle keep-alive connections are closed by the drain",
        idle.error ? idle.error.code || idle.error.message : `got ${idle.status} ${idle.body}`);
    const fresh = await request(`${origin}/ready`, {timeoutMs: 5000}).then(r => r, e => ({error: e}));
    check(fresh.error !== undefined || fresh.status === 503, "/ready is 503 or the listener is closed once draining",
        fresh.error ? fresh.error.code || fresh.error.message : `${fresh.status} ${fresh.body}`);

    const late = await inflight.finish().then(r => r, e => ({error: e}));
    if (check(!late.error, "an in-flight handshake is answered during the drain", late.error ? String(late.error) : `HTTP ${late.status}`)) {
        let reply;
        try { [reply] = JSON.parse(late.body); } catch { reply = undefined; }
        check(reply?.successful === false && reply?.advice?.reconnect === "handshake" && !reply?.clientId,
            "it is refused with reconnect: handshake", late.body);
    }

    const {reply, error, at} = await held;
    const latency = at - t0;
    if (check(!error, "the held connect gets an answer", error ? String(error) : `${latency} ms after SIGTERM`)) {
        const [m] = reply.json || [];
        check(reply.status === 200 && m?.successful === true && m?.advice?.reconnect === "retry",
            "the held connect is answered successful with reconnect: retry", reply.body);
        check(m?.advice?.interval === opts.expectInterval, `its advice.interval is ${opts.expectInterval}`, JSON.stringify(m?.advice));
        check(latency < 2000, "it is answered at once (< 2 s after SIGTERM)", `${latency} ms`);
    }

    // The process exits by the deadline.
    const slack = 2000;
    let exitInfo;
    try {
        if (target.exited) {
            exitInfo = await withTimeout(target.exited, opts.shutdownTimeout + slack, "process exit");
        } else {
            exitInfo = {code: await run(opts.waitCmd, opts.shutdownTimeout + slack)};
        }
    } catch (e) {
        exitInfo = {error: e};
    }
    const took = Date.now() - t0;
    if (check(!exitInfo.error, `the process exits within --shutdown-timeout ${opts.shutdownTimeout} ms (+${slack} ms slack)`,
        exitInfo.error ? String(exitInfo.error) : `${took} ms after SIGTERM, ${JSON.stringify(exitInfo)}`)) {
        if (target.exited) check(exitInfo.code === 0, "exit code 0", JSON.stringify(exitInfo));
        if (opts.scenario === "drain") {
            check(took < opts.shutdownTimeout, "with nothing left in flight it exits before the deadline", `${took} ms`);
        } else {
            check(took >= opts.shutdownTimeout - 500, "a stalled request is waited for until the deadline", `${took} ms`);
        }
    }
    if (stalled) stalled.socket.destroy();
    agentA.destroy();
    agentB.destroy();

    if (failures) {
        const log = target.log();
        if (log) console.log(`# broker stderr:\n${log}`);
        console.log(`# drain-check: ${failures} check(s) FAILED`);
        process.exit(1);
    }
    console.log("# drain-check: all checks passed");
    process.exit(0);
}

main().catch(e => {
    console.log(`FAIL drain-check aborted: ${e.stack || e}`);
    process.exit(1);
});
