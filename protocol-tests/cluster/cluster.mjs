// A Halley cluster for black-box tests (issue 15): redis-server on a free 127.0.0.1 port (its own temp dir),
// three Halley nodes on the Redis engine (each on its own free port, one key prefix per cluster), and HAProxy in
// front (`balance roundrobin`, no stickiness, HTTP mode, timeouts above the long-poll, WebSocket passed on).
// Everything is started by this module and stopped by PID, bounded in time; an exit hook kills what is left and
// removes the iptables rules a test added.
//
// startCluster({name, nodes, args, appendonly, isolatedNode}) -> cluster (see the object at the end)
//
// HALLEY_CLUSTER_ENGINE=memory runs the suite's self-check instead: ONE node on the memory engine behind the same
// HAProxy, no Redis. Tests that need several nodes or Redis skip loudly then; the others must pass, which shows
// that the tests themselves are right before the Redis engine exists.
// HALLEY_CLUSTER_ENGINE=unshared: three nodes on the memory engine, each on its own (no shared engine), behind the
// same HAProxy: what a cluster looks like when nothing carries state between the nodes. The cross-node tests
// must FAIL there; it is how to see that they can.
//
// HALLEY_CLUSTER_STICKY=1: HAProxy pins each client to a node with a cookie (`cookie HALLEYNODE insert`), the
// setup the README asked for before sessions were cluster-wide. Only to run the tests that do not depend on
// sessions moving between nodes (Redis restart, cut from Redis) against an engine that shares publishes only;
// the suite proper runs without it.
//
// HAProxy tags every answer with the node that served it: header `X-Halley-Node` and, on a 200, the reason
// phrase (`HTTP/1.1 200 n2`), which is the only part of a response the CometD Node client lets a test see
// (XMLHttpRequest.statusText; see trackNodes() in clients.mjs).
import {execFile, execFileSync, spawn} from "node:child_process";
import {chmodSync, copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync} from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import {HALLEY_BIN, startBroker} from "../node/broker.mjs";

export const HAPROXY_BIN = process.env.HAPROXY_BIN || "/usr/sbin/haproxy";
export const REDIS_BIN = process.env.REDIS_BIN || "redis-server";
export const REDIS_CLI = process.env.REDIS_CLI || "redis-cli";
export const ENGINE = process.env.HALLEY_CLUSTER_ENGINE || "redis";
/** True when the suite runs its self-check (one memory-engine node), not a Redis cluster. */
export const SELF_CHECK = ENGINE === "memory";
const UNSHARED = ENGINE === "unshared";
const STICKY = process.env.HALLEY_CLUSTER_STICKY === "1";
export const API_KEY = "cluster-test-key";
const START_MS = 10000;

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// Processes, firewall rules and temp dirs to undo whatever happens to the test run.
const liveChildren = new Set();
const liveRules = new Set();
const liveDirs = new Set();
process.on("exit", () => {
    for (const child of liveChildren) {
        try {
            child.kill("SIGKILL");
        } catch {
            // already gone
        }
    }
    for (const rule of liveRules) {
        try {
            execFileSync("iptables", ["-D", ...rule], {stdio: "ignore", timeout: 5000});
        } catch {
            // already removed
        }
    }
    for (const dir of liveDirs) rmSync(dir, {recursive: true, force: true});
});

// A test file killed by a signal (the runner's timeout, ^C) would skip the exit hook above: exit instead, so that it
// runs (broker.mjs's hook kills the nodes the same way).
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.once(signal, () => process.exit(128 + os.constants.signals[signal]));
}

export function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const {port} = server.address();
            server.close(() => resolve(port));
        });
    });
}

function run(file, args, ms = 5000) {
    return new Promise((resolve, reject) => {
        execFile(file, args, {timeout: ms, maxBuffer: 64 << 20}, (err, stdout, stderr) => {
            if (err) reject(new Error(`${file} ${args.join(" ")}: ${err.message} ${stderr}`));
            else resolve(stdout);
        });
    });
}

function tcpOpen(port, ms) {
    const deadline = Date.now() + ms;
    return new Promise((resolve, reject) => {
        const attempt = () => {
            const socket = net.connect({host: "127.0.0.1", port}, () => {
                socket.destroy();
                resolve();
            });
            socket.once("error", () => {
                socket.destroy();
                if (Date.now() > deadline) reject(new Error(`nothing listening on ${port} within ${ms} ms`));
                else setTimeout(attempt, 50);
            });
        };
        attempt();
    });
}

/** A child process stopped by PID (SIGTERM, SIGKILL after 3 s); resolves when it has exited. */
function spawnTracked(bin, args, log, options = {}) {
    const child = spawn(bin, args, {...options, stdio: ["ignore", "pipe", "pipe"]});
    liveChildren.add(child);
    child.stdout.setEncoding("utf8").on("data", d => log.push(d));
    child.stderr.setEncoding("utf8").on("data", d => log.push(d));
    child.exited = new Promise(resolve => child.once("exit", (code, signal) => {
        liveChildren.delete(child);
        log.push(`--- ${path.basename(bin)} exited code=${code} signal=${signal}\n`);
        resolve();
    }));
    child.once("error", err => log.push(`--- ${bin}: ${err.message}\n`));
    return child;
}

async function stopChild(child, signal = "SIGTERM") {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
    child.kill(signal);
    await child.exited;
    clearTimeout(timer);
}

// ---------------------------------------------------------------- redis

/** redis-server on a free loopback port; restart() keeps the port and, with appendonly, the data. */
export async function startRedis(dir, {appendonly = false} = {}) {
    const port = await freePort();
    const log = [];
    const args = ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--dir", dir,
        "--appendonly", appendonly ? "yes" : "no", ...(appendonly ? ["--appendfsync", "always"] : [])];
    let child;
    const cli = (...a) => run(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(port), ...a]);
    const up = async () => {
        child = spawnTracked(REDIS_BIN, args, log);
        const deadline = Date.now() + START_MS;
        for (;;) {
            if (child.exitCode !== null) throw new Error(`redis-server exited at start:\n${log.join("")}`);
            try {
                if ((await cli("PING")).trim() === "PONG") return;
            } catch {
                // not up yet
            }
            if (Date.now() > deadline) throw new Error(`redis-server not answering within ${START_MS} ms`);
            await sleep(50);
        }
    };
    await up();
    return {
        port,
        url: `redis://127.0.0.1:${port}`,
        get pid() {
            return child.pid;
        },
        cli,
        output: () => log.join(""),
        /** Keys whose name starts with `prefix` (SCAN, as an operator would count them). */
        async keys(prefix) {
            const out = await cli("--scan", "--pattern", `${prefix}*`);
            return out.split("\n").filter(Boolean);
        },
        /** Stops Redis (SIGTERM, or SIGKILL with {kill}), leaves it down `downMs`, starts it on the same port. */
        async restart({downMs = 0, kill = false} = {}) {
            await stopChild(child, kill ? "SIGKILL" : "SIGTERM");
            await sleep(downMs);
            await up();
        },
        stop: () => stopChild(child),
    };
}

// ---------------------------------------------------------------- haproxy

/** HAProxy (round-robin, no stickiness) in front of the nodes listening on `nodePorts`. */
export async function startHaproxy(dir, nodePorts) {
    const port = await freePort();
    const conf = path.join(dir, "haproxy.cfg");
    const names = nodePorts.map((_, i) => `n${i + 1}`);
    writeFileSync(conf, `
global
    maxconn 4000
defaults
    mode http
    # A request that could not be sent to a dead node goes to another one; a request that reached a node is
    # never replayed (retry-on stays conn-failure), as a careful operator would configure it.
    option redispatch
    retries 2
    timeout connect 1s
    # Above the broker's 30 s long-poll hold.
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend bayeux
    bind 127.0.0.1:${port}
    default_backend halley
backend halley
    # Every request is balanced on its own (no cookie, no stick table, no prefer-last-server).
    balance roundrobin
${STICKY ? "    cookie HALLEYNODE insert indirect nocache\n" : ""}    http-response set-header X-Halley-Node %[srv_name]
${names.map(n => `    http-response set-status 200 reason ${n} if { status 200 } { srv_name ${n} }`).join("\n")}
${nodePorts.map((p, i) => `    server ${names[i]} 127.0.0.1:${p} check inter 250 fall 2 rise 2${
        STICKY ? ` cookie ${names[i]}` : ""}`).join("\n")}
`);
    const log = [];
    const child = spawnTracked(HAPROXY_BIN, ["-db", "-f", conf], log);
    try {
        await Promise.race([tcpOpen(port, START_MS), child.exited.then(() => {
            throw new Error(`haproxy exited before listening:\n${log.join("")}`);
        })]);
    } catch (err) {
        child.kill("SIGKILL");
        throw err;
    }
    return {port, origin: `http://127.0.0.1:${port}`, output: () => log.join(""), stop: () => stopChild(child)};
}

// ---------------------------------------------------------------- iptables

/** Whether this process can add iptables rules (root and the iptables command). */
export function canUseIptables() {
    try {
        execFileSync("iptables", ["-w", "5", "-S", "OUTPUT"], {stdio: "ignore", timeout: 5000});
        return process.getuid?.() === 0;
    } catch {
        return false;
    }
}

function nobodyIds() {
    try {
        const id = flag => Number(execFileSync("id", [flag, "nobody"], {timeout: 5000}).toString().trim());
        return {uid: id("-u"), gid: id("-g")};
    } catch {
        return null;
    }
}

// ---------------------------------------------------------------- the cluster

/**
 * Starts Redis, `nodes` Halley nodes and HAProxy.
 *  - name: the test's name; the key prefix is `halley:<name>-<pid>:`.
 *  - args: extra broker flags for every node (e.g. ["--timeout", "3000"]).
 *  - appendonly: Redis with the append-only file (restart tests).
 *  - isolatedNode: index of a node that runs as user `nobody`, so that an iptables owner match can cut that node
 *    (and only it) from Redis: cutFromRedis(). Only honoured when canUseIptables().
 */
export async function startCluster({name, nodes = 3, args = [], appendonly = false, isolatedNode = null} = {}) {
    if (!name) throw new Error("startCluster: a name is required (it makes the key prefix)");
    if (!existsSync(HAPROXY_BIN)) throw new Error(`${HAPROXY_BIN} missing: apt-get install haproxy (run.sh does it)`);
    const count = SELF_CHECK ? 1 : nodes;
    const dir = mkdtempSync(path.join(os.tmpdir(), `halley-cluster-${name}-`));
    chmodSync(dir, 0o755);
    liveDirs.add(dir);
    const prefix = `halley:${name}-${process.pid}:`;
    const started = {redis: null, nodes: [], haproxy: null};
    const rules = [];
    const stopAll = async () => {
        for (const rule of rules.splice(0)) await removeRule(rule);
        if (started.haproxy) await started.haproxy.stop();
        await Promise.all(started.nodes.map(n => n.stop()));
        if (started.redis) await started.redis.stop();
        rmSync(dir, {recursive: true, force: true});
        liveDirs.delete(dir);
    };
    try {
        if (!SELF_CHECK && !UNSHARED) started.redis = await startRedis(dir, {appendonly});
        const nobody = isolatedNode !== null && canUseIptables() ? nobodyIds() : null;
        for (let i = 0; i < count; ++i) {
            const engine = !started.redis ? [] : ["--engine", started.redis.url, "--node-id", `n${i + 1}`,
                "--redis-prefix", prefix];
            // The isolated node runs a copy of the binary in the (world-readable) temp dir: the checkout may sit
            // where user nobody cannot reach.
            let spawnOptions = {};
            if (nobody && i === isolatedNode) {
                const bin = path.join(dir, "halley");
                copyFileSync(HALLEY_BIN, bin);
                chmodSync(bin, 0o755);
                spawnOptions = {uid: nobody.uid, gid: nobody.gid, bin, cwd: dir};
            }
            started.nodes.push(await startBroker(["--api-key", API_KEY, ...engine, ...args], spawnOptions));
        }
        started.haproxy = await startHaproxy(dir, started.nodes.map(n => n.port));
    } catch (err) {
        const outputs = started.nodes.map((n, i) => `--- node n${i + 1}:\n${n.output()}`).join("\n");
        await stopAll();
        err.message += `\n${outputs}`;
        throw err;
    }
    const {redis, haproxy} = started;
    const nodeList = started.nodes;

    async function addRule(rule) {
        await run("iptables", ["-w", "5", "-I", ...rule]);
        liveRules.add(rule);
        rules.push(rule);
    }
    async function removeRule(rule) {
        try {
            await run("iptables", ["-w", "5", "-D", ...rule]);
        } catch {
            // already gone
        }
        liveRules.delete(rule);
    }

    const cluster = {
        name,
        prefix,
        dir,
        redis,
        haproxy,
        nodes: nodeList,
        /** The Bayeux URL through HAProxy. */
        url: `${haproxy.origin}/cometd`,
        origin: haproxy.origin,
        /** The Bayeux URL of node i directly (a client pinned to one node). */
        nodeUrl: i => `${new URL(nodeList[i].url).origin}/cometd`,
        nodeOrigin: i => new URL(nodeList[i].url).origin,
        /** i of the node named `nK` (HAProxy's server names and the --node-id values are the same). */
        indexOf: nodeName => Number(String(nodeName).replace(/^n/, "")) - 1,
        /**
         * A backend API call, through HAProxy or on node i ({node: i}); never throws for an HTTP error status.
         * -> {status, body, node} (node: the X-Halley-Node header when through HAProxy).
         */
        async api(method, apiPath, body, {node = null, ms = 5000} = {}) {
            const base = node === null ? haproxy.origin : cluster.nodeOrigin(node);
            const controller = new AbortController();
            const timer = setTimeout(() => controller.abort(), ms);
            try {
                const response = await fetch(`${base}${apiPath}`, {
                    method,
                    headers: {"Authorization": `Bearer ${API_KEY}`, "Content-Type": "application/json"},
                    body: body === undefined ? undefined : JSON.stringify(body),
                    signal: controller.signal,
                });
                const text = await response.text();
                let parsed = text;
                try {
                    parsed = JSON.parse(text);
                } catch {
                    // not JSON
                }
                return {status: response.status, body: parsed, node: response.headers.get("x-halley-node")};
            } finally {
                clearTimeout(timer);
            }
        },
        /** Keys under this cluster's prefix (0 in the self-check: no Redis). */
        async keyCount() {
            return redis ? (await redis.keys(prefix)).length : 0;
        },
        async keys() {
            return redis ? redis.keys(prefix) : [];
        },
        /** SIGKILL node i (it stays down until restartNode(i)). */
        killNode: i => nodeList[i].kill(),
        restartNode: i => nodeList[i].restart(),
        /**
         * Drops every packet node `isolatedNode` sends to Redis (iptables owner match on its uid): its open
         * connections go silent (no RST, no FIN), new ones never complete. Returns heal().
         */
        async cutFromRedis() {
            if (isolatedNode === null) throw new Error("cutFromRedis needs startCluster({isolatedNode})");
            const nobody = nobodyIds();
            if (!nobody) throw new Error("no user nobody");
            const rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "-d", "127.0.0.1", "--dport", String(redis.port),
                "-m", "owner", "--uid-owner", String(nobody.uid), "-j", "DROP"];
            await addRule(rule);
            return async () => {
                rules.splice(rules.indexOf(rule), 1);
                await removeRule(rule);
            };
        },
        /** Everything every process printed, for a failure report. */
        output() {
            return [
                ...nodeList.map((n, i) => `===== node n${i + 1} (${n.url}) =====\n${n.output()}`),
                redis ? `===== redis (${redis.port}) =====\n${redis.output()}` : "",
                `===== haproxy (${haproxy.port}) =====\n${haproxy.output()}`,
            ].join("\n");
        },
        stop: stopAll,
    };
    return cluster;
}

/** Runs fn(cluster) on a new cluster, stops it whatever happens, prints every output if fn throws. */
export async function withCluster(options, fn) {
    const cluster = await startCluster(options);
    try {
        return await fn(cluster);
    } catch (err) {
        process.stderr.write(`\n${cluster.output()}\n`);
        throw err;
    } finally {
        await cluster.stop();
    }
}
