// Faye 1.4.3 Node client (long-polling) interoperating with a CometD JS client through Halley.
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import {startBroker} from "../broker.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, nonce, rawDeliveries,
    scenario, sleep, withTimeout,
} from "../helpers.mjs";

const QUIET_MS = 600;

describe("Faye client interop", () => {
    let broker;

    before(async () => {
        broker = await startBroker(["--timeout", "2000"]);
    });

    after(async () => {
        if (broker) await broker.stop();
    });

    it("round trip: Faye publishes, CometD receives; CometD publishes, Faye receives", async () => {
        await scenario(broker, async pool => {
            const c = pool.cometd(broker.url, {name: "cometd"});
            await cometdHandshake(c);
            await cometdConnected(c);
            const toCometd = new Inbox("cometd /interop/to-cometd");
            await cometdSubscribe(c, "/interop/to-cometd", toCometd.push);

            const f = pool.faye(broker.url);
            const toFaye = new Inbox("faye /interop/to-faye");
            const subscription = f.subscribe("/interop/to-faye", data => toFaye.push({data}));
            await withTimeout(Promise.resolve(subscription), 5000, "faye subscribe /interop/to-faye");
            assert.equal(f._dispatcher.connectionType, "long-polling", "faye uses long-polling");

            // Faye -> CometD
            const fromFaye = {from: "faye", text: "héllo ✓", n: 1.5, list: [null, false], id: nonce()};
            const publication = f.publish("/interop/to-cometd", fromFaye);
            await withTimeout(Promise.resolve(publication), 5000, "faye publish promise to resolve");
            await toCometd.waitFor(1);

            // CometD -> Faye
            const fromCometd = {from: "cometd", nested: {deep: [1, 2, 3]}, id: nonce()};
            await cometdPublish(c, "/interop/to-faye", fromCometd);
            await toFaye.waitFor(1);

            await sleep(QUIET_MS);
            assert.deepEqual(toCometd.data, [fromFaye]);
            assert.equal(toCometd.messages[0].channel, "/interop/to-cometd");
            assert.equal(rawDeliveries(c, "/interop/to-cometd").length, 1);
            assert.deepEqual(toFaye.data, [fromCometd]);
        });
    });

    it("Faye publish to a channel Faye itself subscribes to is delivered once", async () => {
        await scenario(broker, async pool => {
            const f = pool.faye(broker.url);
            const inbox = new Inbox("faye /interop/self");
            const wildcard = new Inbox("faye /interop/**");
            await withTimeout(Promise.resolve(f.subscribe("/interop/self", data => inbox.push({data}))), 5000, "faye subscribe");
            await withTimeout(Promise.resolve(f.subscribe("/interop/**", data => wildcard.push({data}))), 5000, "faye subscribe **");
            const data = {text: "self", id: nonce()};
            await withTimeout(Promise.resolve(f.publish("/interop/self", data)), 5000, "faye publish");
            await inbox.waitFor(1);
            await wildcard.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(inbox.data, [data]);
            assert.deepEqual(wildcard.data, [data]);
        });
    });
});
