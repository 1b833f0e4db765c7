// dojox.cometd 1.6 (npm dojox@1.6.4 on the dojo 1.6 source loader, `dojo.require("dojox.cometd")`,
// `dojox.cometd.init(url)`) as it really behaves (BAYEUX.md G-25):
//  - cross-origin (page server origin != broker): every request is a JSONP script GET and the handshake
//    carries no supportedConnectionTypes; it must pick callback-polling;
//  - same origin (the page server reverse-proxies /cometd to the broker): a form-encoded handshake, then
//    long-polling POSTs with text/json bodies.
import {test} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../lib/broker.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";
import {parseJsonp, requestMessages, rawPublish} from "../lib/wire.mjs";

const CHANNEL = "/browser/dojo";

// Loads the dojo page, runs init + subscribe, publishes once from the page and once from a raw client.
async function roundTrip(h, pages, bayeuxUrl, broker) {
    const page = await h.newPage(await h.newContext(), "dojo");
    await page.goto(`${pages.origin}/pages/dojox.html`);
    await page.waitForFunction(() => window.dojoxReady === true, null, {timeout: WAIT_MS});
    assert.match(await page.evaluate(() => dojo.version.toString()), /^1\.6\./);

    await page.evaluate(([url, ch]) => window.dojoxTest.start(url, ch), [bayeuxUrl, CHANNEL]);
    // dojox sends its subscribe only after the first /meta/connect reply (G-25).
    await page.waitForFunction(() => window.dojoxTest.subscribed !== null, null, {timeout: WAIT_MS});
    assert.equal(await page.evaluate(() => window.dojoxTest.subscribed), true);
    const meta = await page.evaluate(() => window.dojoxTest.meta);
    assert.deepEqual(meta.find(m => m.action === "handshake"), {action: "handshake", successful: true, state: "handshaking"});
    assert.ok(meta.some(m => m.action === "connect" && m.successful && m.state === "connected"),
        `a successful connect: ${JSON.stringify(meta)}`);

    await page.evaluate(ch => dojox.cometd.publish(ch, {from: "dojo", text: "hé"}), CHANNEL);
    await until("dojo's own message", () => page.evaluate(() => window.dojoxTest.received.length >= 1));
    const ack = await rawPublish(broker.url, CHANNEL, {from: "raw"});
    assert.equal(ack?.successful, true, `raw publish ack ${JSON.stringify(ack)}`);
    await until("the raw client's message", () => page.evaluate(() => window.dojoxTest.received.length >= 2));
    await new Promise(r => setTimeout(r, 300));
    assert.deepEqual(await page.evaluate(() => window.dojoxTest.received), [{from: "dojo", text: "hé"}, {from: "raw"}]);
    assert.equal(await page.evaluate(() => dojox.cometd.state()), "connected");
    return page;
}

test("dojox.cometd 1.6 cross-origin: callback-polling round trip", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const pages = h.track(await startPageServer());
        assert.notEqual(pages.origin, broker.origin);
        const page = await roundTrip(h, pages, broker.url, broker);
        assert.equal(await page.evaluate(() => window.dojoxTest.transport()), "callback-polling");

        const entries = h.wire("dojo").filter(e => e.url.startsWith(broker.origin + "/"));
        assert.ok(entries.length >= 4, `${entries.length} requests to the broker`);
        for (const e of entries) {
            assert.equal(e.method, "GET", `${e.method} ${e.url}`);
            assert.equal(e.resourceType, "script", e.url);
            const cb = new URL(e.url).searchParams.get("jsonp");
            assert.match(cb ?? "", /^dojo\.io\.script\.jsonp_dojoIoScript\d+\._jsonpCallback$/, e.url);
            if (e.status === null) continue;
            assert.equal(e.status, 200, e.url);
            assert.match(e.responseHeaders["content-type"], /^text\/javascript/i);
            assert.equal(parseJsonp(e.body)?.callback, cb, e.body);
        }
        const handshake = requestMessages(entries[0]);
        assert.equal(handshake[0].channel, "/meta/handshake");
        assert.equal("supportedConnectionTypes" in handshake[0], false, "dojox XD handshake has no connection types");
        const connects = entries.flatMap(requestMessages).filter(m => m.channel === "/meta/connect");
        assert.ok(connects.length >= 2);
        for (const c of connects) assert.equal(c.connectionType, "callback-polling");
    });
});

test("dojox.cometd 1.6 same-origin (through a reverse proxy): long-polling round trip", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const pages = h.track(await startPageServer({proxyPrefix: "/cometd", proxyTarget: broker.origin}));
        const page = await roundTrip(h, pages, `${pages.origin}/cometd`, broker);
        assert.equal(await page.evaluate(() => window.dojoxTest.transport()), "long-polling");

        // What went through the proxy (i.e. what the broker was sent).
        const sent = pages.proxied;
        assert.ok(sent.length >= 4, `${sent.length} proxied requests`);
        for (const e of sent) assert.equal(e.method, "POST", `${e.method} ${e.url}`);
        assert.match(sent[0].contentType ?? "", /^application\/x-www-form-urlencoded/);
        assert.match(sent[0].body, /^message=/);
        const hs = JSON.parse(new URLSearchParams(sent[0].body).get("message"));
        assert.equal(hs[0].channel, "/meta/handshake");
        assert.ok(hs[0].supportedConnectionTypes.includes("long-polling"));
        for (const e of sent.slice(1)) {
            assert.match(e.contentType ?? "", /^text\/json/, `content type of ${e.body}`);
            if (e.status !== null) assert.equal(e.status, 200, e.body);
        }
        const connects = sent.slice(1).flatMap(e => [].concat(JSON.parse(e.body)))
            .filter(m => m.channel === "/meta/connect");
        assert.ok(connects.length >= 2);
        for (const c of connects) assert.equal(c.connectionType, "long-polling");
        // The cookie set by the (proxied) handshake is sent back on the following requests.
        assert.ok(sent.slice(1).every(e => /BAYEUX_BROWSER=/.test(e.cookie ?? "")),
            `cookies: ${JSON.stringify(sent.map(e => e.cookie))}`);
    });
});
