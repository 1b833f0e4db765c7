// The core suite against the Halley binary, plus what only Halley offers or what needs a child process:
// one copy per session with overlapping wildcards, /service/echo, advice (interval, timeout, maxInterval),
// back-off while the broker is down, a publish that meets 402 being sent again; and the ack suite, which
// checks that the client leaves the extension alone if this Halley build does not offer it.
import assert from "node:assert/strict";
import {after, afterEach, describe, test} from "node:test";
import {ackSuite} from "./lib/ack.mjs";
import {coreSuite} from "./lib/core.mjs";
import {startHalley} from "./lib/servers.mjs";
import {clientFactory, inbox, recordingFetch, sleep, until, within} from "./lib/util.mjs";

describe("halley", () => {
    coreSuite(startHalley);
    ackSuite(startHalley);

    describe("halley only", () => {
        const clients = clientFactory();
        const brokers = [];
        const broker = async (args = []) => {
            const b = await startHalley(args);
            brokers.push(b);
            return b;
        };
        afterEach(() => clients.closeAll());
        after(() => Promise.all(brokers.map(b => b.stop())));

        test("overlapping subscriptions of one client: each listener fires once per publish", async () => {
            const {url} = await broker();
            const a = clients.make(url), b = clients.make(url);
            const boxes = ["/d/*", "/d/**", "/d/a"].map(() => inbox());
            const subs = ["/d/*", "/d/**", "/d/a"].map((p, i) => a.subscribe(p, boxes[i].listener));
            await Promise.all(subs.map(s => s.ready));
            await b.publish("/d/a", "x");
            await until("deliveries", () => boxes.every(box => box.got.length));
            await sleep(300);
            assert.deepEqual(boxes.map(box => box.got.length), [1, 1, 1]);
        });

        test("/service/echo answers the caller, remoteCall style", async () => {
            const {url} = await broker();
            const a = clients.make(url);
            const box = inbox();
            const answers = [];
            await a.subscribe("/service/echo", (data, message) => answers.push(message)).ready;
            const ack = await within("echo", a.publish("/service/echo", {q: 42}));
            assert.equal(ack.successful, true);
            await until("echo answer", () => answers.length);
            assert.deepEqual(answers[0].data, {q: 42});
            assert.equal(answers[0].id, ack.id, "the answer carries the request id");
            assert.deepEqual(box.got, []);
        });

        test("follows advice: interval between connects, timeout of the hold", async () => {
            const {url} = await broker(["--timeout", "300", "--interval", "700"]);
            const wire = recordingFetch();
            const a = clients.make(url, {fetch: wire.fetch});
            await a.connect();
            await sleep(2600);
            const connects = wire.connects();
            // First connect answered at once, then: wait 700, held 300, wait 700, ...
            assert.ok(connects.length >= 3 && connects.length <= 4, `${connects.length} connects`);
            for (let i = 1; i < connects.length; i++) {
                const gap = connects[i].at - connects[i - 1].doneAt;
                assert.ok(gap >= 650, `gap ${gap} ms between connects honours interval 700`);
            }
            const held = connects.slice(1).filter(c => c.doneAt).map(c => c.doneAt - c.at);
            assert.ok(held.every(ms => ms >= 250 && ms < 1500), `hold times ${held}`);
            assert.ok(connects.slice(1).every(c => !c.messages[0].advice), "only the first connect asks for timeout 0");
            assert.deepEqual(connects[0].messages[0].advice, {timeout: 0});
        });

        test("back-off with jitter while the broker is down, then recovery", async () => {
            const brk = await broker();
            const wire = recordingFetch();
            const a = clients.make(brk.url, {fetch: wire.fetch, backoff: 100, maxBackoff: 800});
            const box = inbox();
            await a.subscribe("/bo/x", box.listener).ready;
            await until("connected", () => a.state === "connected");
            const from = wire.requests.length;
            await brk.restart(2500);
            const during = wire.requests.slice(from).filter(r => r.at < Date.now() - 50 && !r.replies);
            const gaps = during.slice(1).map((r, i) => r.at - during[i].at);
            // 50-100, 100-200, 200-400, 400-800, then 400-800: no hot loop, growing until the cap.
            assert.ok(during.length >= 3 && during.length <= 10, `${during.length} attempts while down`);
            for (let i = 1; i < Math.min(gaps.length, 3); i++) {
                assert.ok(gaps[i] >= gaps[i - 1] * 0.9, `gaps grow: ${gaps}`);
            }
            await until("connected again", () => a.state === "connected", 5000);
            await clients.make(brk.url).publish("/bo/x", "back");
            await until("delivery after recovery", () => box.got.length === 1);
        });

        test("maxInterval advice: after a long outage the client handshakes instead of connecting", async () => {
            const brk = await broker(["--timeout", "300"]);
            const wire = recordingFetch();
            // Halley sends no maxInterval; add one to the handshake reply as a server that does would.
            wire.intercept = (messages, res, replies) => {
                if (messages[0].channel !== "/meta/handshake") return res;
                replies[0].advice = {...replies[0].advice, maxInterval: 200};
                return new Response(JSON.stringify(replies), {status: 200, headers: res.headers});
            };
            const a = clients.make(brk.url, {fetch: wire.fetch, backoff: 100, maxBackoff: 400});
            await a.connect();
            await sleep(100);
            const before = a.clientId;
            await brk.restart(1200);
            await until("connected again", () => a.state === "connected" && a.clientId !== before, 5000);
            const answered = wire.requests.filter(r => Array.isArray(r.replies));
            const firstAfter = answered.find(r => r.at > answered.findLast(x => x.replies[0]?.clientId === before
                || x.messages[0].clientId === before)?.at);
            assert.equal(firstAfter?.messages[0].channel, "/meta/handshake");
            assert.ok(!answered.some(r => r.replies.some(m => m.error?.startsWith("402"))), "no 402 seen");
        });

        test("a publish that meets 402 (session gone) is sent once more after the new handshake", async () => {
            const brk = await broker();
            const wire = recordingFetch();
            // A long back-off keeps the connect loop asleep, so the publish is what discovers the restart.
            const a = clients.make(brk.url, {fetch: wire.fetch, backoff: 4000, maxBackoff: 4000});
            await a.connect();
            await sleep(100);
            await brk.restart(0, "SIGKILL"); // a crash: no drain reply to the held connect
            const box = inbox();
            const b = clients.make(brk.url);
            await b.subscribe("/again/x", box.listener).ready;
            const ack = await within("publish", a.publish("/again/x", "once"));
            assert.equal(ack.successful, true);
            const sent = wire.requests.filter(r => r.messages.some(m => m.channel === "/again/x"));
            assert.equal(sent.length, 2);
            assert.match(sent[0].replies.find(m => m.channel === "/again/x").error, /^402/);
            await until("delivery", () => box.got.length === 1);
            await sleep(200);
            assert.equal(box.got.length, 1);
        });
    });
});
