// Headless Chromium (Debian's /usr/bin/chromium driven by playwright-core) plus per-test bookkeeping:
// every page's console output and every request/response it makes are recorded; when the test body
// throws, each open page is screenshotted into output/ and the logs (and the broker's output) are
// printed to stderr before the error is re-thrown. Everything started through the harness is closed.
import {mkdirSync} from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {chromium} from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const OUTPUT_DIR = path.resolve(HERE, "..", "output");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// Default bound for every wait in the tests.
export const WAIT_MS = 10000;

function slug(text) {
    return text.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 80);
}

function clip(text, n = 600) {
    return text.length > n ? text.slice(0, n) + `…(${text.length} chars)` : text;
}

// Runs body(h) with a fresh browser; h.newContext(label), h.newPage(context, label),
// h.track(broker or pageServer) (stopped at the end, broker output printed on failure),
// h.wire(label) -> the recorded exchanges of that page.
export async function withBrowser(t, body) {
    const browser = await chromium.launch({executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30000});
    const contexts = [];
    const pages = []; // {label, page, console: [], wire: []}
    const servers = [];
    const h = {
        async newContext(options = {}) {
            const ctx = await browser.newContext(options);
            ctx.setDefaultTimeout(WAIT_MS);
            contexts.push(ctx);
            return ctx;
        },
        async newPage(ctx, label) {
            const page = await ctx.newPage();
            const rec = {label, page, console: [], wire: []};
            pages.push(rec);
            const t0 = Date.now();
            const stamp = () => String(Date.now() - t0).padStart(6);
            page.on("console", msg => rec.console.push(`${stamp()} [${msg.type()}] ${msg.text()}`));
            page.on("pageerror", err => rec.console.push(`${stamp()} [pageerror] ${err.stack || err}`));
            page.on("requestfailed", req =>
                rec.console.push(`${stamp()} [requestfailed] ${req.method()} ${req.url()} ${req.failure()?.errorText}`));
            page.on("request", req => {
                const entry = {
                    at: Date.now() - t0,
                    method: req.method(),
                    url: req.url(),
                    resourceType: req.resourceType(),
                    postData: req.postData(),
                    request: req,
                    requestHeaders: null,
                    status: null,
                    responseHeaders: null,
                    body: null,
                };
                rec.wire.push(entry);
                req.allHeaders().then(hs => {
                    entry.requestHeaders = hs;
                }, () => {});
            });
            page.on("response", async res => {
                const entry = rec.wire.findLast(e => e.request === res.request());
                if (!entry) return;
                entry.status = res.status();
                try {
                    entry.responseHeaders = await res.allHeaders();
                    entry.body = await res.text();
                } catch {
                    // page closed or body unavailable
                }
            });
            return page;
        },
        track(server) {
            servers.push(server);
            return server;
        },
        wire(label) {
            return pages.find(p => p.label === label)?.wire ?? [];
        },
        pages,
    };
    try {
        await body(h);
    } catch (err) {
        await report(t, pages, servers, err);
        throw err;
    } finally {
        for (const ctx of contexts) await ctx.close().catch(() => {});
        await browser.close().catch(() => {});
        for (const s of servers) await s.stop().catch(() => {});
    }
}

async function report(t, pages, servers, err) {
    mkdirSync(OUTPUT_DIR, {recursive: true});
    const out = [`\n===== FAILED: ${t.name}\n${err?.stack || err}\n`];
    for (const rec of pages) {
        const file = path.join(OUTPUT_DIR, `${slug(t.name)}--${slug(rec.label)}.png`);
        if (!rec.page.isClosed()) {
            try {
                await rec.page.screenshot({path: file, fullPage: true, timeout: 5000});
                out.push(`screenshot of ${rec.label}: ${file}\n`);
            } catch (x) {
                out.push(`screenshot of ${rec.label} failed: ${x.message}\n`);
            }
        }
        out.push(`----- console of ${rec.label} (${rec.page.isClosed() ? "closed" : rec.page.url()}):\n`);
        out.push(rec.console.map(l => l + "\n").join("") || "(empty)\n");
        out.push(`----- requests of ${rec.label}:\n`);
        for (const e of rec.wire) {
            if (!e.url.startsWith("http") || e.resourceType === "image" || e.url.includes("/dojo/") || e.url.includes("/dojox/")
                || e.url.includes("/cometd-js/") || e.url.includes("/demo/cometd/")) continue;
            out.push(`${String(e.at).padStart(6)} ${e.method} ${e.url}` +
                (e.postData ? `\n         body: ${clip(e.postData)}` : "") +
                (e.requestHeaders?.cookie ? `\n         cookie: ${e.requestHeaders.cookie}` : "") +
                `\n      -> ${e.status ?? "(no response)"}` + (e.body != null ? ` ${clip(e.body)}` : "") + "\n");
        }
    }
    for (const s of servers) {
        if (typeof s.output === "function") out.push(`----- broker output:\n${clip(s.output(), 8000)}\n`);
    }
    process.stderr.write(out.join(""));
}

// Polls fn() (sync or async) until it returns a truthy value; throws with `what` after ms.
export async function until(what, fn, ms = WAIT_MS, step = 50) {
    const deadline = Date.now() + ms;
    let last;
    for (;;) {
        last = await fn();
        if (last) return last;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await new Promise(r => setTimeout(r, step));
    }
}
