// Spawns the Halley broker binary for black-box tests.
//
// startBroker(extraArgs, spawnOptions) -> {url, port, pid, output(), stop(), kill(), restart()}
//   - spawnOptions: extra child_process.spawn options (the cluster harness runs a node under another uid), and
//     `bin`: another copy of the binary to run (one that uid can reach)
//   - binary: $HALLEY_BIN or <repo>/target/release/halley
//   - always listens on 127.0.0.1 (port 0 on the first start, the same port on restart)
//   - waits (bounded) for the "listening on http://..." line on stdout
import {spawn} from "node:child_process";
import {existsSync} from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, "..", "..");
export const HALLEY_BIN = process.env.HALLEY_BIN || path.join(REPO_ROOT, "target", "release", "halley");

const STARTUP_TIMEOUT_MS = 10000;
const LISTEN_RE = /listening on (http:\/\/\S+)/;

// Every broker process started by this module, so that a crashing test run never leaks one.
const live = new Set();
process.on("exit", () => {
    for (const child of live) {
        try {
            child.kill("SIGKILL");
        } catch (x) {
            // already gone
        }
    }
});

function spawnOnce(listen, extraArgs, log, spawnOptions = {}) {
    if (!existsSync(HALLEY_BIN)) {
        return Promise.reject(new Error(`broker binary not found: ${HALLEY_BIN} (build it or set HALLEY_BIN)`));
    }
    return new Promise((resolve, reject) => {
        const args = ["--listen", listen, ...extraArgs];
        log.push(`--- spawn ${spawnOptions.bin || HALLEY_BIN} ${args.join(" ")}\n`);
        const {bin = HALLEY_BIN, ...options} = spawnOptions;
        const child = spawn(bin, args, {...options, stdio: ["ignore", "pipe", "pipe"]});
        live.add(child);
        let stdout = "";
        let settled = false;
        const timer = setTimeout(() => {
            fail(new Error(`broker did not print "listening on" within ${STARTUP_TIMEOUT_MS} ms; stdout=${JSON.stringify(stdout)}`));
        }, STARTUP_TIMEOUT_MS);

        function fail(err) {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            try {
                child.kill("SIGKILL");
            } catch (x) {
                // ignore
            }
            reject(err);
        }

        child.stdout.setEncoding("utf8");
        child.stdout.on("data", chunk => {
            stdout += chunk;
            log.push(chunk);
            const m = LISTEN_RE.exec(stdout);
            if (m && !settled) {
                settled = true;
                clearTimeout(timer);
                resolve({child, url: m[1]});
            }
        });
        child.stderr.setEncoding("utf8");
        child.stderr.on("data", chunk => log.push(chunk));
        child.on("error", err => fail(err));
        child.on("exit", (code, signal) => {
            live.delete(child);
            log.push(`--- broker exited code=${code} signal=${signal}\n`);
            fail(new Error(`broker exited before listening (code=${code}, signal=${signal}):\n${log.join("")}`));
        });
    });
}

function killChild(child, signal = "SIGTERM") {
    return new Promise(resolve => {
        if (!child || child.exitCode !== null || child.signalCode !== null) {
            resolve();
            return;
        }
        const timer = setTimeout(() => {
            try {
                child.kill("SIGKILL");
            } catch (x) {
                // ignore
            }
        }, 3000);
        child.once("exit", () => {
            clearTimeout(timer);
            resolve();
        });
        child.kill(signal);
    });
}

export async function startBroker(extraArgs = [], spawnOptions = {}) {
    const log = [];
    let {child, url} = await spawnOnce("127.0.0.1:0", extraArgs, log, spawnOptions);
    const port = Number(new URL(url).port);
    if (!port) {
        await killChild(child);
        throw new Error(`could not parse a port from ${url}`);
    }
    const broker = {
        url,
        port,
        get pid() {
            return child.pid;
        },
        // Everything the broker wrote so far (stdout and stderr), for failure reports.
        output() {
            return log.join("");
        },
        async stop() {
            const c = child;
            child = null;
            await killChild(c);
        },
        // SIGKILL (a crash), waiting for the exit; restart() can bring it back on the same port.
        async kill() {
            await killChild(child, "SIGKILL");
        },
        // Stop the broker (SIGTERM, a graceful restart; {kill: true}: SIGKILL, a crash) and start a new
        // one on the same port: all sessions are forgotten.
        async restart({kill = false} = {}) {
            await killChild(child, kill ? "SIGKILL" : "SIGTERM");
            child = null;
            let lastError;
            // The port is released at once (SO_REUSEADDR), but retry briefly to be safe.
            for (let attempt = 0; attempt < 5; ++attempt) {
                let started;
                try {
                    started = await spawnOnce(`127.0.0.1:${port}`, extraArgs, log, spawnOptions);
                } catch (x) {
                    lastError = x;
                    await new Promise(r => setTimeout(r, 200));
                    continue;
                }
                child = started.child;
                if (started.url !== url) {
                    throw new Error(`restarted broker reports ${started.url}, expected ${url}`);
                }
                return;
            }
            throw lastError;
        },
    };
    return broker;
}
