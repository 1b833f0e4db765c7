// CometD 9 browser client from another origin than the broker's:
//  - forced to callback-polling (JSONP script tags), BAYEUX.md 4.5 / TR-CB;
//  - forced to cross-origin long-polling (CORS XHR with credentials), 4.7 / 4.9 / CORS, and the
//    BAYEUX_BROWSER cookie round trip and per-browser connect limit (ADV-3).
import {test} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../lib/broker.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";
import {parseJsonp, requestMessages} from "../lib/wire.mjs";

async function openClient(h, ctx, label, pages, broker, transport, channel) {
    const page = await h.newPage(ctx, label);
    await page.goto(`${pages.origin}/pages/cometd9.html`);
    await page.waitForFunction(() => window.bayeuxReady === true, null, {timeout: WAIT_MS});
    const info = await page.evaluate(args => window.bayeux.start(args), {url: broker.url, transport, channel});
    return {page, info};
}

const received = page => page.evaluate(() => window.bayeux.received);

function brokerEntries(h, label, broker) {
    return h.wire(label).filter(e => e.url.startsWith(broker.origin + "/"));
}

test("CometD 9 browser client over callback-polling: handshake, subscribe, publish, receive", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const pages = h.track(await startPageServer());
        assert.notEqual(pages.origin, broker.origin);
        const channel = "/browser/jsonp";

        const a = await openClient(h, await h.newContext(), "alice", pages, broker, "callback-polling", channel);
        const b = await openClient(h, await h.newContext(), "bob", pages, broker, "callback-polling", channel);
        for (const c of [a, b]) {
            assert.equal(c.info.transport, "callback-polling");
            assert.ok(c.info.supportedConnectionTypes.includes("callback-polling"),
                `handshake reply lists callback-polling: ${c.info.supportedConnectionTypes}`);
            assert.match(c.info.clientId, /\S/);
        }
        assert.notEqual(a.info.clientId, b.info.clientId);

        assert.deepEqual(await a.page.evaluate(ch => window.bayeux.publish(ch, {from: "alice", n: 1}), channel),
            {successful: true, error: undefined});
        assert.deepEqual(await b.page.evaluate(ch => window.bayeux.publish(ch, {from: "bob", n: 2}), channel),
            {successful: true, error: undefined});

        const expected = [{from: "alice", n: 1}, {from: "bob", n: 2}];
        for (const c of [a, b]) {
            await until("both messages on both clients", async () => (await received(c.page)).length >= 2);
            assert.deepEqual(await received(c.page), expected);
        }
        // No duplicates show up a little later either.
        await new Promise(r => setTimeout(r, 300));
        assert.deepEqual(await received(a.page), expected);

        // The wire: only JSONP script GETs went to the broker, every answer a script calling the named callback.
        const entries = brokerEntries(h, "alice", broker);
        assert.ok(entries.length >= 4, `alice made ${entries.length} requests to the broker`);
        const channels = [];
        for (const e of entries) {
            assert.equal(e.method, "GET", `${e.method} ${e.url}`);
            assert.equal(e.resourceType, "script", e.url);
            const url = new URL(e.url);
            const cb = url.searchParams.get("jsonp");
            assert.match(cb ?? "", /^_cometd_jsonp_\d+$/, e.url);
            const sent = requestMessages(e);
            channels.push(...sent.map(m => m.channel));
            if (e.status === null) continue; // a connect still held when the test ended
            assert.equal(e.status, 200, e.url);
            assert.match(e.responseHeaders["content-type"], /^text\/javascript;\s*charset=utf-8$/i);
            const parsed = parseJsonp(e.body);
            assert.ok(parsed, `JSONP body: ${e.body}`);
            assert.equal(parsed.callback, cb);
            const isConnect = sent.some(m => m.channel === "/meta/connect");
            if (!isConnect) {
                // TR-CB-6: deliveries only ride on connect replies.
                for (const m of parsed.messages) {
                    assert.ok("successful" in m, `non-connect JSONP response carries a delivery: ${e.body}`);
                }
            }
        }
        for (const ch of ["/meta/handshake", "/meta/connect", "/meta/subscribe", channel]) {
            assert.ok(channels.includes(ch), `alice sent ${ch} over JSONP: ${channels}`);
        }
        // Deliveries came back inside connect replies.
        const deliveredOnConnect = entries.filter(e => requestMessages(e).some(m => m.channel === "/meta/connect"))
            .flatMap(e => parseJsonp(e.body ?? "")?.messages ?? [])
            .filter(m => m.channel === channel && m.data);
        assert.deepEqual(deliveredOnConnect.map(m => m.data), expected);
    });
});

test("CometD 9 browser client over CORS long-polling: round trip and BAYEUX_BROWSER cookie", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const pages = h.track(await startPageServer());
        const channel = "/browser/cors";
        const ctx = await h.newContext();

        const a = await openClient(h, ctx, "alice", pages, broker, "long-polling", channel);
        assert.equal(a.info.transport, "long-polling");
        assert.deepEqual(await a.page.evaluate(ch => window.bayeux.publish(ch, {text: "over cors"}), channel),
            {successful: true, error: undefined});
        await until("own message back", async () => (await received(a.page)).length >= 1);
        assert.deepEqual(await received(a.page), [{text: "over cors"}]);
        // Let one held connect complete, so that later requests exist.
        await until("a later /meta/connect reply", () =>
            a.page.evaluate(() => window.bayeux.metaConnects.length >= 2), 8000);

        const entries = brokerEntries(h, "alice", broker);
        for (const e of entries) {
            assert.equal(e.method, "POST", `${e.method} ${e.url}`);
            assert.equal(e.resourceType, "xhr", e.url);
            if (e.status === null) continue; // still held
            e.requestHeaders = await e.request.allHeaders();
            assert.equal(e.requestHeaders.origin, pages.origin, `Origin header of ${e.url}`);
            assert.equal(e.status, 200, e.url);
            assert.equal(e.responseHeaders["access-control-allow-origin"], pages.origin, `ACAO of ${e.url}`);
            assert.equal(e.responseHeaders["access-control-allow-credentials"], "true", `ACAC of ${e.url}`);
        }

        // The cookie: set on the handshake response, stored for the broker's origin, sent back afterwards.
        const handshake = entries.find(e => requestMessages(e).some(m => m.channel === "/meta/handshake"));
        assert.ok(handshake, "a handshake request was seen");
        const setCookie = handshake.responseHeaders?.["set-cookie"] ?? "";
        const m = /(?:^|\n)BAYEUX_BROWSER=([^;\s]+)/.exec(setCookie);
        assert.ok(m, `handshake response sets BAYEUX_BROWSER: ${JSON.stringify(setCookie)}`);
        const value = m[1];
        assert.match(setCookie, /Path=\//i);
        assert.match(setCookie, /HttpOnly/i);

        const jar = await ctx.cookies(broker.origin);
        const stored = jar.find(c => c.name === "BAYEUX_BROWSER");
        assert.ok(stored, `cookie jar for ${broker.origin}: ${JSON.stringify(jar)}`);
        assert.equal(stored.value, value);
        assert.equal(stored.httpOnly, true);
        assert.equal(stored.path, "/");
        assert.equal(stored.sameSite, "Lax");

        const later = entries.slice(entries.indexOf(handshake) + 1).filter(e => e.status !== null);
        assert.ok(later.length >= 3, `${later.length} requests after the handshake`);
        for (const e of later) {
            assert.match(e.requestHeaders?.cookie ?? "", new RegExp(`(?:^|;\\s*)BAYEUX_BROWSER=${value}(?:;|$)`),
                `cookie sent with ${e.url}: ${e.requestHeaders?.cookie}`);
        }
        // The page's script cannot read an HttpOnly cookie.
        assert.doesNotMatch(await a.page.evaluate(() => document.cookie), /BAYEUX_BROWSER/);
    });
});

test("two CometD 9 tabs of one browser (shared cookie) over CORS: the second degrades to multiple-clients polling",
    async t => {
        await withBrowser(t, async h => {
            const broker = h.track(await startBroker(["--timeout", "3000"]));
            const pages = h.track(await startPageServer());
            const channel = "/browser/tabs";
            const ctx = await h.newContext(); // one cookie jar for both tabs

            const a = await openClient(h, ctx, "tab1", pages, broker, "long-polling", channel);
            // Make sure tab1's connect is held before tab2 starts.
            await until("tab1 holding a connect", () =>
                h.wire("tab1").some(e => e.status === null && requestMessages(e).some(m => m.channel === "/meta/connect")));
            const b = await openClient(h, ctx, "tab2", pages, broker, "long-polling", channel);
            assert.notEqual(a.info.clientId, b.info.clientId);

            await until("tab2 told multiple-clients", () => b.page.evaluate(() =>
                window.bayeux.metaConnects.some(m => m.advice && m.advice["multiple-clients"] === true)), 8000);
            const advised = await b.page.evaluate(() =>
                window.bayeux.metaConnects.find(m => m.advice && m.advice["multiple-clients"] === true));
            assert.deepEqual(advised, {
                successful: true,
                advice: {"multiple-clients": true, reconnect: "retry", interval: 2000, timeout: 3000},
            });
            assert.equal(await a.page.evaluate(() =>
                window.bayeux.metaConnects.some(m => m.advice && m.advice["multiple-clients"])), false);

            // Both tabs still get messages (tab2 by polling every 2 s).
            assert.equal((await a.page.evaluate(ch => window.bayeux.publish(ch, {n: 1}), channel)).successful, true);
            for (const c of [a, b]) {
                await until("message on both tabs", async () => (await received(c.page)).length >= 1, 8000);
                assert.deepEqual(await received(c.page), [{n: 1}]);
            }
        });
    });
