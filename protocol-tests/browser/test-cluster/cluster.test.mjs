// Browsers against the three-node cluster of ../../cluster (redis-server, three Halley nodes on the Redis engine,
// HAProxy round-robin without stickiness in front; issue 15). Run by the cluster stage, not with test/:
//   bash run.sh test-cluster/*.test.mjs
//  - the CometD 9 browser client through HAProxy over CORS long-polling, WebSocket and callback-polling: three
//    browsers, each message at each browser once;
//  - dojox.cometd 1.6 (callback-polling, cross-origin) through HAProxy with a publisher on another node;
//  - the demo chat with two browsers served by two different nodes and a third through HAProxy: presence
//    (the member list) is the same everywhere, messages cross nodes, a closed browser leaves every list.
import {test} from "node:test";
import assert from "node:assert/strict";
import {startCluster} from "../../cluster/cluster.mjs";
import {startPageServer} from "../lib/pageserver.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";
import {rawPublish} from "../lib/wire.mjs";

/** A cluster tracked by the harness (stopped at the end, its output printed on failure). */
async function cluster(h, name, args) {
    const c = await startCluster({name, args});
    h.track({stop: () => c.stop(), output: () => c.output()});
    return c;
}

test("CometD 9 browser clients through HAProxy: long-polling, websocket and callback-polling cross messages",
    async t => {
        await withBrowser(t, async h => {
            const c = await cluster(h, "browser-cometd", ["--timeout", "3000"]);
            const pages = h.track(await startPageServer());
            const channel = "/cluster/browser/cometd";
            const clients = [];
            for (const transport of ["long-polling", "websocket", "callback-polling"]) {
                const page = await h.newPage(await h.newContext(), transport);
                await page.goto(`${pages.origin}/pages/cometd9.html`);
                await page.waitForFunction(() => window.bayeuxReady === true, null, {timeout: WAIT_MS});
                const info = await page.evaluate(args => window.bayeux.start(args), {url: c.url, transport, channel});
                assert.equal(info.transport, transport);
                clients.push({transport, page});
            }
            for (const [i, {page, transport}] of clients.entries()) {
                for (let n = 0; n < 5; ++n) {
                    const ack = await page.evaluate(([ch, data]) => window.bayeux.publish(ch, data),
                        [channel, {from: transport, n}]);
                    assert.equal(ack.successful, true, `${transport} publish ${n} (client ${i}): ${JSON.stringify(ack)}`);
                }
            }
            const expected = clients.flatMap(({transport}) => Array.from({length: 5}, (_, n) => ({from: transport, n})));
            for (const {page, transport} of clients) {
                await until(`15 messages at ${transport}`,
                    async () => (await page.evaluate(() => window.bayeux.received.length)) >= expected.length);
            }
            await new Promise(r => setTimeout(r, 500));
            for (const {page, transport} of clients) {
                assert.deepEqual(await page.evaluate(() => window.bayeux.received), expected, transport);
            }
            // The long-polling browser's requests really went to several nodes.
            const nodes = new Set(h.wire("long-polling").filter(e => e.url.startsWith(c.origin) && e.responseHeaders)
                .map(e => e.responseHeaders["x-halley-node"]));
            assert.ok(nodes.size > 1 || c.nodes.length === 1, `long-polling requests only reached ${[...nodes]}`);
        });
    });

test("dojox.cometd 1.6 through HAProxy (callback-polling) receives a publish made on another node", async t => {
    await withBrowser(t, async h => {
        const c = await cluster(h, "browser-dojox", ["--timeout", "3000"]);
        const pages = h.track(await startPageServer());
        const channel = "/cluster/browser/dojo";
        const page = await h.newPage(await h.newContext(), "dojo");
        await page.goto(`${pages.origin}/pages/dojox.html`);
        await page.waitForFunction(() => window.dojoxReady === true, null, {timeout: WAIT_MS});
        await page.evaluate(([url, ch]) => window.dojoxTest.start(url, ch), [c.url, channel]);
        await page.waitForFunction(() => window.dojoxTest.subscribed !== null, null, {timeout: WAIT_MS});
        assert.equal(await page.evaluate(() => window.dojoxTest.subscribed), true);
        assert.equal(await page.evaluate(() => window.dojoxTest.transport()), "callback-polling");

        await page.evaluate(ch => dojox.cometd.publish(ch, {from: "dojo"}), channel);
        // dojox's publish does not wait for its reply: only the order of each publisher's
        // messages is guaranteed, so the raw ones start once dojo's own has come back.
        await until("dojo's own publish at dojo",
            () => page.evaluate(() => window.dojoxTest.received.length >= 1));
        for (let i = 0; i < c.nodes.length; ++i) {
            const ack = await rawPublish(c.nodeUrl(i), channel, {from: `raw-n${i + 1}`});
            assert.equal(ack?.successful, true, `raw publish on n${i + 1}: ${JSON.stringify(ack)}`);
        }
        const expected = [{from: "dojo"}, ...c.nodes.map((_, i) => ({from: `raw-n${i + 1}`}))];
        await until("every message at dojo",
            () => page.evaluate(n => window.dojoxTest.received.length >= n, expected.length));
        await new Promise(r => setTimeout(r, 500));
        assert.deepEqual(await page.evaluate(() => window.dojoxTest.received), expected);
        assert.equal(await page.evaluate(() => dojox.cometd.state()), "connected");
    });
});

const members = page => page.$$eval("#members li", lis => lis.map(li => li.textContent.trim()).sort());
const messages = page => page.$$eval("#messages li:not(.note)", lis => lis.map(li => ({
    who: li.querySelector(".who")?.textContent ?? null,
    text: li.childNodes[li.childNodes.length - 1]?.textContent ?? null,
})));

async function openChat(h, origin, label) {
    const ctx = await h.newContext();
    const page = await h.newPage(ctx, label);
    await page.goto(`${origin}/`);
    await page.waitForSelector("#join:not([disabled])", {timeout: WAIT_MS});
    await page.fill("#name", label);
    await page.click("#join");
    await page.waitForSelector("#send:not([disabled])", {timeout: WAIT_MS});
    return {ctx, page};
}

async function say(page, text) {
    await page.fill("#text", text);
    await page.click("#send");
}

test("demo chat: browsers on different nodes share presence and messages; a closed one leaves every list",
    async t => {
        await withBrowser(t, async h => {
            const c = await cluster(h, "browser-chat",
                ["--timeout", "3000", "--max-interval", "2000", "--sweep-interval", "200"]);
            const last = c.nodes.length - 1;
            // alice's page and socket on n1, bob's on the last node, carol through HAProxy.
            const alice = await openChat(h, c.nodeOrigin(0), "alice");
            const bob = await openChat(h, c.nodeOrigin(last), "bob");
            const carol = await openChat(h, c.origin, "carol");
            const everyone = ["alice", "bob", "carol"];
            for (const [name, x] of Object.entries({alice, bob, carol})) {
                await until("all three members listed", async () =>
                    JSON.stringify(await members(x.page)) === JSON.stringify(everyone)).catch(async err => {
                    err.message += ` at ${name}: ${JSON.stringify(await members(x.page))}`;
                    throw err;
                });
            }
            await say(alice.page, "hello from n1");
            await say(bob.page, "hello from the last node");
            const both = [{who: "alice", text: "hello from n1"}, {who: "bob", text: "hello from the last node"}];
            for (const x of [alice, bob, carol]) {
                await until("both messages", async () => (await messages(x.page)).length >= 2);
            }
            await new Promise(r => setTimeout(r, 500));
            for (const x of [alice, bob, carol]) {
                const got = await messages(x.page);
                assert.deepEqual([...got].sort((a, b) => a.who.localeCompare(b.who)), both, JSON.stringify(got));
            }

            // bob's browser vanishes (no beforeunload): his session expires cluster-wide, everyone is told.
            const closedAt = Date.now();
            await bob.ctx.close();
            for (const x of [alice, carol]) {
                await until("bob gone from the member list", async () =>
                    JSON.stringify(await members(x.page)) === JSON.stringify(["alice", "carol"]), 15000, 100);
            }
            t.diagnostic(`bob left both lists ${Date.now() - closedAt} ms after his browser closed`);
        });
    });
