// The ack extension (BAYEUX.md 6.2) end to end against a real server: negotiation, batch numbers on connects,
// redelivery after a connect response is lost on the way, and `ack: false`. With {required: false}, a server
// that does not offer the extension only gets the check that the client then leaves it alone.
import assert from "node:assert/strict";
import {after, afterEach, before, describe, test} from "node:test";
import {clientFactory, inbox, recordingFetch, sleep, until} from "./util.mjs";

export function ackSuite(start, {required = false} = {}) {
    describe("ack extension", () => {
        let offered = false;
        let server;
        const clients = clientFactory();
        before(async () => {
            server = await start();
        });
        afterEach(() => clients.closeAll());
        after(() => server.stop());

        test("negotiated in the handshake; connects carry the last batch received", async (t) => {
            const wire = recordingFetch();
            const a = clients.make(server.url, {fetch: wire.fetch});
            const box = inbox();
            await a.subscribe("/ack/a", box.listener).ready;
            assert.equal(wire.requests[0].messages[0].ext.ack, true, "the client asks");
            offered = wire.requests[0].replies[0].ext?.ack === true;
            if (!offered) {
                assert.ok(!required, "this server must offer the ack extension");
                assert.ok(wire.connects().every(c => c.messages[0].ext === undefined), "not offered: not used");
                return t.skip(`${server.name} does not offer the ack extension: checked that the client does not use it`);
            }
            const b = clients.make(server.url);
            for (let i = 1; i <= 3; i++) {
                await b.publish("/ack/a", i);
                await until(`delivery ${i}`, () => box.got.length === i);
            }
            const connects = wire.connects().filter(c => Array.isArray(c.replies));
            const sent = connects.map(c => c.messages[0].ext.ack);
            const got = connects.map(c => c.replies.find(m => m.channel === "/meta/connect").ext.ack);
            assert.equal(sent[0], 0);
            for (let i = 1; i < sent.length; i++) assert.equal(sent[i], got[i - 1], `connect ${i} acks batch ${got[i - 1]}`);
            assert.deepEqual(box.got.map(g => g.data), [1, 2, 3]);
        });

        test("a lost connect response is delivered again, exactly once", async (t) => {
            if (!offered) return t.skip(`${server.name} does not offer the ack extension`);
            const wire = recordingFetch();
            let dropped = null;
            wire.intercept = (messages, res, replies) => {
                if (!dropped && messages[0].channel === "/meta/connect" && replies.some?.(m => m.channel === "/ack/lost")) {
                    dropped = replies;
                    throw new TypeError("simulated network loss");
                }
                return res;
            };
            const a = clients.make(server.url, {fetch: wire.fetch, backoff: 50, maxBackoff: 100});
            const box = inbox();
            await a.subscribe("/ack/lost", box.listener).ready;
            await until("connected", () => a.state === "connected");
            const b = clients.make(server.url);
            await b.publish("/ack/lost", "first");
            await b.publish("/ack/lost", "second");
            await until("redelivery", () => box.got.length >= 2);
            await b.publish("/ack/lost", "third");
            await until("third", () => box.got.length >= 3);
            await sleep(300);
            assert.ok(dropped, "a response was dropped");
            assert.deepEqual(box.got.map(g => g.data), ["first", "second", "third"]);
            const i = wire.requests.findIndex(r => r.replies === dropped);
            const lostAck = wire.requests[i].messages[0].ext.ack;
            const retry = wire.requests.slice(i + 1).find(r => r.messages[0].channel === "/meta/connect");
            assert.equal(retry.messages[0].ext.ack, lostAck, "the retry acks the same batch as the lost connect");
        });

        test("ack: false keeps the extension off", async () => {
            const wire = recordingFetch();
            const a = clients.make(server.url, {fetch: wire.fetch, ack: false});
            await a.connect();
            assert.equal(wire.requests[0].messages[0].ext, undefined);
            assert.ok(wire.connects().every(c => c.messages[0].ext === undefined));
        });
    });
}
