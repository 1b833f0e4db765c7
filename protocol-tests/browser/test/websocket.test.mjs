// CometD 9 in Chromium over Halley's websocket transport (issue 14), from another origin than the broker's:
//  - forced onto websocket, and with the default preference (websocket first): the transport really is websocket
//    (cometd.getTransport().type), messages cross between two browsers, nothing goes to the broker over HTTP;
//  - behind a real reverse proxy that refuses the upgrade (Debian's nginx, which does not forward Upgrade or
//    Connection): the default client falls back to long-polling through it and works;
//  - behind nginx and HAProxy configured for WebSocket as the README says: the client is on websocket through them.
import {test} from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import {startBroker} from "../lib/broker.mjs";
import {startHaproxy, startNginx} from "../lib/proxies.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";

async function openClient(h, label, pages, url, transport, channel) {
    const page = await h.newPage(await h.newContext(), label);
    const sockets = [];
    page.on("websocket", ws => sockets.push(ws.url()));
    await page.goto(`${pages.origin}/pages/cometd9.html`);
    await page.waitForFunction(() => window.bayeuxReady === true, null, {timeout: WAIT_MS});
    const info = await page.evaluate(args => window.bayeux.start(args), {url, transport, channel});
    return {page, info, sockets};
}

const received = page => page.evaluate(() => window.bayeux.received);
const transportOf = page => page.evaluate(() => window.bayeux.cometd.getTransport().type);

/** Two pages publish one message each; both must receive both, once. */
async function crossTalk(a, b, channel) {
    for (const [c, n] of [[a, 1], [b, 2]]) {
        assert.deepEqual(await c.page.evaluate(([ch, n]) => window.bayeux.publish(ch, {n}), [channel, n]),
            {successful: true, error: undefined});
    }
    for (const c of [a, b]) {
        await until("both messages on both pages", async () => (await received(c.page)).length >= 2);
    }
    await new Promise(r => setTimeout(r, 300));
    for (const c of [a, b]) assert.deepEqual((await received(c.page)).map(d => d.n).sort(), [1, 2]);
}

test("CometD 9 over WebSocket (forced and by default): the transport is websocket, nothing over HTTP", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const pages = h.track(await startPageServer());
        const channel = "/browser/ws";
        const a = await openClient(h, "forced", pages, broker.url, "websocket", channel);
        const b = await openClient(h, "default", pages, broker.url, "default", channel);
        for (const c of [a, b]) {
            assert.equal(c.info.transport, "websocket");
            assert.equal(await transportOf(c.page), "websocket");
            assert.ok(c.info.supportedConnectionTypes.includes("websocket"), `${c.info.supportedConnectionTypes}`);
        }
        await crossTalk(a, b, channel);
        for (const [c, label] of [[a, "forced"], [b, "default"]]) {
            assert.deepEqual(c.sockets, [broker.url.replace(/^http/, "ws")], `${label}: one socket`);
            const overHttp = h.wire(label).filter(e => e.url.startsWith(broker.origin + "/"));
            assert.deepEqual(overHttp.map(e => `${e.method} ${e.url}`), [], `${label}: nothing over HTTP`);
        }
    });
});

test("behind nginx that refuses the upgrade, the default CometD client falls back to long-polling", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker(["--timeout", "3000"]));
        const proxy = h.track(await startNginx(broker.port));
        const pages = h.track(await startPageServer());
        const url = proxy.urlFor(broker.url);

        // The proxy really refuses: an upgrade through it gets no 101 (the broker sees a plain GET).
        const status = await new Promise((resolve, reject) => {
            const req = http.request(url, {headers: {
                Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }});
            req.on("upgrade", res => resolve(res.statusCode));
            req.on("response", res => (res.resume(), resolve(res.statusCode)));
            req.on("error", reject);
            req.end();
        });
        assert.notEqual(status, 101, "nginx passed the upgrade on");

        const channel = "/browser/proxied";
        const a = await openClient(h, "alice", pages, url, "default", channel);
        const b = await openClient(h, "bob", pages, url, "default", channel);
        for (const c of [a, b]) {
            assert.equal(c.info.transport, "long-polling");
            assert.equal(await transportOf(c.page), "long-polling");
            assert.ok(c.sockets.length >= 1, "the client tried websocket first");
        }
        await crossTalk(a, b, channel);
        const posts = h.wire("alice").filter(e => e.url.startsWith(proxy.origin + "/") && e.method === "POST");
        assert.ok(posts.length >= 3, `${posts.length} long-polling POSTs through the proxy`);
    });
});

for (const [name, start] of [
    ["nginx", port => startNginx(port, {websocket: true})],
    ["HAProxy", port => startHaproxy(port)],
]) {
    test(`behind ${name} configured for WebSocket (the README's snippet), the default CometD client is on websocket`,
        async t => {
            await withBrowser(t, async h => {
                const broker = h.track(await startBroker(["--timeout", "3000"]));
                const proxy = h.track(await start(broker.port));
                const pages = h.track(await startPageServer());
                const url = proxy.urlFor(broker.url);
                const channel = "/browser/proxied-ws";
                const a = await openClient(h, "carol", pages, url, "default", channel);
                const b = await openClient(h, "dan", pages, url, "default", channel);
                for (const c of [a, b]) {
                    assert.equal(c.info.transport, "websocket");
                    assert.deepEqual(c.sockets, [url.replace(/^http/, "ws")]);
                }
                await crossTalk(a, b, channel);
                const posts = h.wire("carol").filter(e => e.url.startsWith(proxy.origin + "/") && e.method === "POST");
                assert.deepEqual(posts.map(e => e.url), [], "nothing over HTTP");
            });
        });
}
