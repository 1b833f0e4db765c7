// Spawns the Halley broker binary for the browser tests.
//
// startBroker(extraArgs) -> {url, origin, port, output(), stop()}
//   - binary: $HALLEY_BIN or <repo>/target/release/halley
//   - always listens on 127.0.0.1:0 and waits (bounded) for "listening on http://..." on stdout
import {spawn} from "node:child_process";
import {existsSync} from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, "..", "..", "..");
export const HALLEY_BIN = process.env.HALLEY_BIN || path.join(REPO_ROOT, "target", "release", "halley");

const STARTUP_TIMEOUT_MS = 10000;
const LISTEN_RE = /listening on (http:\/\/\S+)/;

const live = new Set();
process.on("exit", () => {
    for (const child of live) {
        try {
            child.kill("SIGKILL");
        } catch {
            // already gone
        }
    }
});

export function startBroker(extraArgs = []) {
    if (!existsSync(HALLEY_BIN)) {
        return Promise.reject(new Error(`broker binary not found: ${HALLEY_BIN} (build it or set HALLEY_BIN)`));
    }
    const log = [];
    const args = ["--listen", "127.0.0.1:0", ...extraArgs];
    log.push(`--- spawn ${HALLEY_BIN} ${args.join(" ")}\n`);
    const child = spawn(HALLEY_BIN, args, {stdio: ["ignore", "pipe", "pipe"]});
    live.add(child);
    return new Promise((resolve, reject) => {
        let stdout = "";
        let settled = false;
        const timer = setTimeout(() => fail(new Error(`broker did not start within ${STARTUP_TIMEOUT_MS} ms`)),
            STARTUP_TIMEOUT_MS);

        function fail(err) {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            try {
                child.kill("SIGKILL");
            } catch {
                // ignore
            }
            err.message += `\nbroker output:\n${log.join("")}`;
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
                const url = m[1];
                const parsed = new URL(url);
                resolve({
                    url,
                    origin: parsed.origin,
                    port: Number(parsed.port),
                    output: () => log.join(""),
                    stop: () => killChild(child),
                });
            }
        });
        child.stderr.setEncoding("utf8");
        child.stderr.on("data", chunk => log.push(chunk));
        child.on("error", err => fail(err));
        child.on("exit", (code, signal) => {
            live.delete(child);
            log.push(`--- broker exited code=${code} signal=${signal}\n`);
            fail(new Error(`broker exited before listening (code=${code}, signal=${signal})`));
        });
    });
}

function killChild(child) {
    return new Promise(resolve => {
        if (child.exitCode !== null || child.signalCode !== null) {
            resolve();
            return;
        }
        const timer = setTimeout(() => {
            try {
                child.kill("SIGKILL");
            } catch {
                // ignore
            }
        }, 3000);
        child.once("exit", () => {
            clearTimeout(timer);
            resolve();
        });
        child.kill("SIGTERM");
    });
}
