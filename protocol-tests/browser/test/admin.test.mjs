// The read-only admin page (/admin) in Chromium: it is only mounted when a key with the admin right
// exists; it refuses unknown keys and keys without that right; with the admin key it shows the node and
// its charts move while this test publishes through the HTTP API. A screenshot is saved to
// output/admin.png and checked to be non-blank (decoded, many distinct pixel values).
import {test} from "node:test";
import assert from "node:assert/strict";
import {mkdirSync, readFileSync, writeFileSync} from "node:fs";
import {tmpdir} from "node:os";
import path from "node:path";
import {inflateSync} from "node:zlib";
import {startBroker} from "../lib/broker.mjs";
import {withBrowser, until, OUTPUT_DIR} from "../lib/harness.mjs";

const ADMIN_KEY = "browser-admin-key-0123456789";
const PUBLISH_KEY = "browser-publish-key-0123456789";

function keysFile(keys) {
    const file = path.join(tmpdir(), `halley-admin-${process.pid}-${Math.random().toString(36).slice(2)}.toml`);
    writeFileSync(file, "api_keys = [\n" + keys.map(([key, rights]) =>
        rights ? `  { key = "${key}", rights = ${JSON.stringify(rights)} },\n` : `  { key = "${key}" },\n`).join("") + "]\n");
    return file;
}

// Distinct byte values in a PNG's decompressed pixel data: a blank (one-colour) image has a handful.
function distinctPixelBytes(png) {
    assert.equal(png.subarray(1, 4).toString("latin1"), "PNG", "not a PNG");
    const idat = [];
    for (let at = 8; at < png.length;) {
        const len = png.readUInt32BE(at);
        const type = png.subarray(at + 4, at + 8).toString("latin1");
        if (type === "IDAT") idat.push(png.subarray(at + 8, at + 8 + len));
        at += 12 + len;
    }
    return new Set(inflateSync(Buffer.concat(idat))).size;
}

async function bayeux(origin, messages) {
    const r = await fetch(`${origin}/cometd`, {
        method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(messages),
    });
    assert.equal(r.status, 200);
    return r.json();
}

test("admin page: off without an admin key", async () => {
    const broker = await startBroker(["--config", keysFile([[PUBLISH_KEY, ["publish"]]])]);
    try {
        assert.equal((await fetch(`${broker.origin}/admin`)).status, 404);
        const r = await fetch(`${broker.origin}/api/admin/snapshot`, {headers: {authorization: `Bearer ${PUBLISH_KEY}`}});
        assert.equal(r.status, 403);
    } finally {
        await broker.stop();
    }
});

test("admin page: refuses bad keys, shows live charts with the admin key", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker([
            "--config", keysFile([[ADMIN_KEY, null], [PUBLISH_KEY, ["publish"]]]),
            "--max-interval", "60000",
        ]));
        const ctx = await h.newContext({viewport: {width: 1280, height: 860}});
        const page = await h.newPage(ctx, "admin");
        await page.goto(`${broker.origin}/admin`);
        await page.waitForSelector("#keyform");
        assert.equal(await page.isVisible("#dashboard"), false);
        assert.equal(await page.evaluate(async () => (await fetch("/api/admin/snapshot")).status), 401);

        for (const [key, why] of [["wrong-key-0123456789abc", "unknown key"], [PUBLISH_KEY, "key without admin"]]) {
            await page.fill("#key", key);
            await page.click("#keyform button");
            await until(`${why} refused`, async () => /refused/.test(await page.textContent("#status")));
            assert.equal(await page.isVisible("#dashboard"), false, why);
            assert.equal(await page.evaluate(() => sessionStorage.getItem("halley-admin-key")), null, why);
        }

        // One subscriber, so publishes are delivered.
        const [hs] = await bayeux(broker.origin, [{channel: "/meta/handshake", version: "1.0",
            supportedConnectionTypes: ["long-polling"]}]);
        await bayeux(broker.origin, [{channel: "/meta/connect", clientId: hs.clientId, connectionType: "long-polling",
            advice: {timeout: 0}}]);
        const [sub] = await bayeux(broker.origin, [{channel: "/meta/subscribe", clientId: hs.clientId,
            subscription: "/admin-test/*"}]);
        assert.equal(sub.successful, true);

        await page.fill("#key", ADMIN_KEY);
        await page.click("#keyform button");
        await page.waitForSelector("#dashboard", {state: "visible"});
        await until("the node listed", async () => /\b1\b/.test(await page.textContent("#nodes")));
        const points = async () => Number(await page.getAttribute("#chart-rates", "data-points") ?? 0);
        const before = await points();

        let published = 0;
        const publisher = setInterval(() => {
            published += 1;
            fetch(`${broker.origin}/api/publish`, {
                method: "POST",
                headers: {authorization: `Bearer ${PUBLISH_KEY}`, "content-type": "application/json"},
                body: JSON.stringify({channel: "/admin-test/ticks", data: published}),
            }).catch(() => {});
        }, 40);
        try {
            await until("the rate chart shows publishes and deliveries", async () => {
                const last = JSON.parse(await page.getAttribute("#chart-rates", "data-last") ?? "[]");
                return last[0] > 5 && last[1] > 5;
            }, 15000, 200);
            await until("the chart grows", async () => (await points()) >= before + 3, 10000, 200);
        } finally {
            clearInterval(publisher);
        }
        const status = await page.textContent("#status");
        assert.match(status, /1 sessions/);
        // The chart's canvas has been drawn on.
        const inked = await page.$eval("#chart-rates canvas", c => {
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
        });
        assert.ok(inked > 1000, `rate chart nearly empty (${inked} pixels)`);

        mkdirSync(OUTPUT_DIR, {recursive: true});
        const file = path.join(OUTPUT_DIR, "admin.png");
        await page.screenshot({path: file, fullPage: true});
        const distinct = distinctPixelBytes(readFileSync(file));
        assert.ok(distinct > 40, `screenshot looks blank (${distinct} distinct pixel bytes)`);
    });
});
