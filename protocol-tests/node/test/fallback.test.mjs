// Clients in their DEFAULT configuration (websocket not disabled) against a Halley started with
// `--transports long-polling,callback-polling`: it does not offer websocket and must refuse upgrades at once
// (BAYEUX.md 4.6, G-12), so both clients must end up on long-polling quickly. (websocket.test.mjs covers the
// default, where websocket is offered.)
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import {CometD} from "cometd";
import faye from "faye";
import {startBroker} from "../broker.mjs";
import {Inbox, newBrowser, cometdPublish, cometdSubscribe, nonce, scenario, sleep, waitUntil, withTimeout} from "../helpers.mjs";

const QUIET_MS = 600;

describe("default client configurations fall back to long-polling", () => {
    let broker;

    before(async () => {
        broker = await startBroker(["--timeout", "2000", "--transports", "long-polling,callback-polling"]);
    });

    after(async () => {
        if (broker) await broker.stop();
    });

    it("CometD JS with websocket registered handshakes over long-polling within 3 s", async () => {
        await scenario(broker, async pool => {
            const cometd = new CometD("default-transports");
            assert.deepEqual(cometd.getTransportTypes().slice(0, 2), ["websocket", "long-polling"],
                "precondition: the client tries websocket first");
            cometd.findTransport("long-polling").context = newBrowser();
            cometd.configure({url: broker.url, logLevel: "warn"});
            // Let the pool disconnect it at the end.
            const client = {name: "default", cometd, sent: [], received: []};
            pool.cometds.push(client);
            cometd.registerExtension("recorder", {
                incoming(message) {
                    client.received.push({at: Date.now(), message});
                    return message;
                },
            });
            const handshakes = [];
            cometd.addListener("/meta/handshake", m => handshakes.push(m));
            const started = Date.now();
            cometd.handshake();
            const ok = await waitUntil(() => handshakes.find(m => m.successful), 8000,
                "a successful handshake after the websocket attempt");
            const elapsed = Date.now() - started;
            assert.ok(elapsed < 3000, `fallback took ${elapsed} ms (websocket upgrade not refused at once?)`);
            assert.ok(!ok.supportedConnectionTypes.includes("websocket"));
            assert.equal(cometd.getTransport().type, "long-polling");
            // Working pub/sub on the fallback transport.
            const inbox = new Inbox("default");
            await cometdSubscribe(client, "/fallback/cometd", inbox.push);
            const data = {id: nonce()};
            await cometdPublish(client, "/fallback/cometd", data);
            await inbox.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
        });
    });

    it("Faye with websocket enabled ends up on long-polling and works", async () => {
        await scenario(broker, async pool => {
            const f = new faye.Client(broker.url, {timeout: 10, retry: 1});
            pool.fayes.push(f);
            const inbox = new Inbox("faye default");
            await withTimeout(Promise.resolve(f.subscribe("/fallback/faye", data => inbox.push({data}))), 5000,
                "faye subscribe");
            const data = {id: nonce()};
            await withTimeout(Promise.resolve(f.publish("/fallback/faye", data)), 5000, "faye publish");
            await inbox.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
            assert.equal(f._dispatcher.connectionType, "long-polling");
        });
    });
});
