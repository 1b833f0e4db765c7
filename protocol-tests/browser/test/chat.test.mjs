// The demo chat served by the broker at `/` (same origin as the broker), over WebSocket, in two browser contexts
// (separate cookie jars): join, presence from the broker, messages both ways, and a closed browser
// leaving the member list within a bounded time (session expiry, BAYEUX.md 5.2).
import {test} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../lib/broker.mjs";
import {withBrowser, until, WAIT_MS} from "../lib/harness.mjs";

const members = page => page.$$eval("#members li", lis => lis.map(li => li.textContent.trim()).sort());
const messages = page => page.$$eval("#messages li:not(.note)", lis => lis.map(li => ({
    who: li.querySelector(".who")?.textContent ?? null,
    text: li.childNodes[li.childNodes.length - 1]?.textContent ?? null,
})));

async function openChat(h, broker, label) {
    const ctx = await h.newContext();
    const page = await h.newPage(ctx, label);
    // What the page sends over its WebSocket(s), since the chat's Bayeux traffic goes there, not over HTTP.
    const frames = [];
    page.on("websocket", ws => ws.on("framesent", f => frames.push(String(f.payload))));
    await page.goto(`${broker.origin}/`);
    await page.waitForSelector("#join:not([disabled])", {timeout: WAIT_MS});
    assert.equal(await page.inputValue("#room"), "lobby");
    await page.fill("#name", label);
    await page.click("#join");
    await page.waitForSelector("#send:not([disabled])", {timeout: WAIT_MS});
    return {ctx, page, frames};
}

async function say(page, text) {
    await page.fill("#text", text);
    await page.click("#send");
}

test("demo chat: two browsers join the lobby, see each other, talk, and a closed one leaves", async t => {
    await withBrowser(t, async h => {
        const broker = h.track(await startBroker([
            "--timeout", "3000", "--max-interval", "2000", "--sweep-interval", "200",
        ]));

        const alice = await openChat(h, broker, "alice");
        const bob = await openChat(h, broker, "bob");

        for (const c of [alice, bob]) {
            await until(`both members listed`, async () =>
                JSON.stringify(await members(c.page)) === JSON.stringify(["alice", "bob"]));
            // The broker offers websocket, so the chat must be on it (not on a long-polling fallback).
            assert.equal(await c.page.textContent("#status"), "connected (websocket)");
        }

        await say(alice.page, "hello from alice");
        await until("alice's message at bob", async () => (await messages(bob.page)).length >= 1);
        await say(bob.page, "hi alice, bob here");
        await until("bob's message at alice", async () => (await messages(alice.page)).length >= 2);
        await until("bob's own message at bob", async () => (await messages(bob.page)).length >= 2);
        const expected = [
            {who: "alice", text: "hello from alice"},
            {who: "bob", text: "hi alice, bob here"},
        ];
        assert.deepEqual(await messages(alice.page), expected);
        assert.deepEqual(await messages(bob.page), expected);

        // All of the Bayeux traffic went over the sockets: no long-polling POST reached the broker.
        for (const label of ["alice", "bob"]) {
            const posts = h.wire(label).filter(e => e.method === "POST" && e.url.startsWith(broker.url));
            assert.deepEqual(posts.map(e => e.url), [], `${label} polled over HTTP`);
        }
        assert.ok(alice.frames.some(f => f.includes('"/meta/connect"')), "alice's connects went over the socket");

        // Bob's browser goes away without running beforeunload: the broker must expire the session
        // (max-interval 2 s after the aborted connect) and tell alice.
        const closedAt = Date.now();
        await bob.ctx.close();
        await until("bob gone from alice's member list", async () =>
            JSON.stringify(await members(alice.page)) === JSON.stringify(["alice"]), 15000, 100);
        t.diagnostic(`bob left alice's list ${Date.now() - closedAt} ms after his browser closed`);

        // Alice is still connected and can still talk.
        await say(alice.page, "anyone?");
        await until("alice's last message", async () => (await messages(alice.page)).length >= 3);
        assert.deepEqual((await messages(alice.page))[2], {who: "alice", text: "anyone?"});
    });
});

test("demo chat: a page that unloads (beforeunload runs cometd.disconnect) leaves at once", async t => {
    await withBrowser(t, async h => {
        // A long max-interval: only the disconnect can remove carol quickly.
        const broker = h.track(await startBroker(["--timeout", "3000", "--max-interval", "30000"]));
        const dave = await openChat(h, broker, "dave");
        const carol = await openChat(h, broker, "carol");
        await until("both members listed", async () =>
            JSON.stringify(await members(dave.page)) === JSON.stringify(["carol", "dave"]));

        await carol.page.close({runBeforeUnload: true});
        await until("carol gone from dave's member list", async () =>
            JSON.stringify(await members(dave.page)) === JSON.stringify(["dave"]), 8000, 100);
        // It was the unload's /meta/disconnect that did it (the session itself would live 30 s more).
        assert.ok(carol.frames.some(f => /"channel":"\/meta\/disconnect"/.test(f)),
            "carol's page sent /meta/disconnect over its socket while unloading");
    });
});
