// Faye's browser client (faye 1.4.3, client/faye-browser.js) in Chromium over Halley's eventsource transport
// (issue 14), with websocket disabled so that it picks eventsource. Faye uses EventSource only on the page's
// own origin (its XHR must be same-origin), so the page and the Bayeux path share the page server's origin,
// which passes /cometd through to the broker as a reverse proxy would (streaming the answer).
// Proof that eventsource is what carries the deliveries: the client's selected connection type, the stream
// request (GET /cometd/<clientId>, 200 text/event-stream) seen by the proxy and by the page, the broker's
// halley_sessions_by_transport{transport="eventsource"}, and no delivery from the other page in any of a
// page's HTTP responses. The same through Debian's nginx and HAProxy configured as the README says (they serve
// the pages too, so that the origin is one), where the events must arrive at once (not buffered).
import {test} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../lib/broker.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {startHaproxy, startNginx} from "../lib/proxies.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";

const KEY = "browser-eventsource-key-0123456789";

async function openFaye(h, label, origin, channel) {
    const page = await h.newPage(await h.newContext(), label);
    const sockets = [];
    page.on("websocket", ws => sockets.push(ws.url()));
    await page.goto(`${origin}/pages/faye.html`);
    await page.waitForFunction(() => window.fayeReady === true, null, {timeout: WAIT_MS});
    const info = await page.evaluate(args => window.faye.start(args),
        {url: `${origin}/cometd`, channel, disable: ["websocket"]});
    // Faye connects over long-polling until its EventSource has opened, then switches for good.
    const type = () => page.evaluate(() => window.faye.client._dispatcher.connectionType);
    await until(`${label} on eventsource`, async () => (await type()) === "eventsource");
    info.connectionType = await type();
    return {page, info, sockets, label};
}

const received = page => page.evaluate(() => window.faye.received);

async function sessionsByTransport(broker) {
    const res = await fetch(`${broker.origin}/metrics`, {headers: {authorization: `Bearer ${KEY}`}});
    assert.equal(res.status, 200);
    const text = await res.text();
    const counts = {};
    for (const m of text.matchAll(/^halley_sessions_by_transport\{transport="([a-z-]+)"\} (\d+)/gm)) {
        counts[m[1]] = Number(m[2]);
    }
    return counts;
}

/** Each page publishes once; both get both, and what one published reached the other down its stream. */
async function crossTalk(h, a, b, channel) {
    for (const [c, n] of [[a, 1], [b, 2]]) {
        assert.deepEqual(await c.page.evaluate(([ch, n]) => window.faye.publish(ch, {n}), [channel, n]),
            {successful: true});
    }
    const sent = Date.now();
    for (const c of [a, b]) {
        await until(`both messages on ${c.label}`, async () => (await received(c.page)).length >= 2);
    }
    // Pushed, not held back by a buffer or left for a connect (the next one is 5 s away).
    assert.ok(Date.now() - sent < 2000, `delivered after ${Date.now() - sent} ms`);
    await new Promise(r => setTimeout(r, 300));
    for (const c of [a, b]) assert.deepEqual((await received(c.page)).map(d => d.n).sort(), [1, 2]);
    // None of the other page's HTTP answers held it.
    for (const [c, other] of [[a, 2], [b, 1]]) {
        const carried = h.wire(c.label)
            .filter(e => e.method === "POST" && e.body && e.body.includes(`"n":${other}`));
        assert.deepEqual(carried.map(e => e.body), [], `${c.label}: a delivery came over HTTP`);
    }
}

test("Faye's browser client with websocket disabled uses eventsource: deliveries come down the stream", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "5000", "--api-key", KEY]));
        const pages = h.track(await startPageServer({proxyPrefix: "/cometd", proxyTarget: broker.origin}));
        const channel = "/browser/eventsource";
        const a = await openFaye(h, "faye-a", pages.origin, channel);
        const b = await openFaye(h, "faye-b", pages.origin, channel);
        for (const c of [a, b]) {
            assert.equal(c.info.connectionType, "eventsource", `${c.label} chose ${c.info.connectionType}`);
            assert.deepEqual(c.sockets, [], `${c.label}: no websocket`);
            // The page opened the stream for its own session, and the broker answered it as one.
            const stream = pages.proxied.filter(e => e.method === "GET" && e.url === `/cometd/${c.info.clientId}`);
            assert.equal(stream.length >= 1, true, `${c.label}: no stream request in ${JSON.stringify(pages.proxied.map(e => `${e.method} ${e.url}`))}`);
            assert.equal(stream[0].status, 200);
            const seen = h.wire(c.label).find(e => e.url === `${pages.origin}/cometd/${c.info.clientId}`);
            assert.ok(seen, `${c.label}: the page made no stream request`);
            assert.equal(seen.resourceType, "eventsource");
        }
        assert.equal((await sessionsByTransport(broker)).eventsource, 2);

        await crossTalk(h, a, b, channel);
        // Faye's connects are answered at once with Faye's advice, not held.
        const connects = pages.proxied.filter(e => e.method === "POST" && e.body.includes("/meta/connect"));
        assert.ok(connects.some(e => e.body.includes('"connectionType":"eventsource"')),
            "no eventsource connect");
        for (const label of ["faye-a", "faye-b"]) {
            const answers = h.wire(label).filter(e => e.method === "POST" && e.postData?.includes("/meta/connect"));
            for (const e of answers.filter(e => e.postData.includes('"connectionType":"eventsource"'))) {
                const reply = JSON.parse(e.body).find(m => m.channel === "/meta/connect");
                assert.deepEqual(reply.advice, {reconnect: "retry", interval: 5000, timeout: 0});
            }
        }
    });
});

for (const [name, start] of [
    ["nginx", (port, pagesPort) => startNginx(port, {websocket: true, pagesPort})],
    ["HAProxy", (port, pagesPort) => startHaproxy(port, {pagesPort})],
]) {
    test(`Faye over eventsource behind ${name} configured as the README says: events pass unbuffered`, async t => {
        await withBrowser(t, async h => {
            const broker = h.track(await startBroker(["--timeout", "5000"]));
            const pages = h.track(await startPageServer());
            const proxy = h.track(await start(broker.port, pages.port));
            const channel = "/browser/eventsource-proxied";
            const a = await openFaye(h, "faye-c", proxy.origin, channel);
            const b = await openFaye(h, "faye-d", proxy.origin, channel);
            for (const c of [a, b]) {
                assert.equal(c.info.connectionType, "eventsource");
                const stream = h.wire(c.label).find(e => e.url === `${proxy.origin}/cometd/${c.info.clientId}`);
                assert.equal(stream?.resourceType, "eventsource", `${c.label}: no stream through ${name}`);
            }
            await crossTalk(h, a, b, channel);
        });
    });
}
