// Checks a running Halley cluster through its load balancer with real clients (CometD JS 9 over
// long-polling and over WebSocket, and Faye 1.4.3): docker/cluster-test.sh runs it against
// docker/compose.yaml's `cluster` profile.
//
//   node docker/cluster-check.mjs --url http://127.0.0.1:PORT/cometd [--rounds N] [--between-cmd CMD]
//
// Each round: three CometD clients (long-polling, each its own cookie jar, so each a separate
// browser), one CometD client on WebSocket and one Faye client handshake through the balancer,
// subscribe to one channel, and each publishes 20 numbered messages; every client must receive
// every message exactly once, in order per publisher. Behind a round-robin balancer the requests
// of one session land on different nodes, so this only passes when the nodes share sessions.
// --between-cmd runs a shell command between rounds (e.g. SIGKILL a node); the next round's
// clients are new and must see everything again. Every wait is bounded. Exits 0 when all passed.
import {execSync} from "node:child_process";
import {
    cometdDisconnect, cometdHandshake, cometdPublish, cometdSubscribe, newCometD, newFaye, sleep,
    waitUntil, withTimeout,
} from "../protocol-tests/node/helpers.mjs";

const opts = {rounds: 1, perPublisher: 20};
for (let i = 2; i < process.argv.length; i += 2) {
    const [key, value] = [process.argv[i], process.argv[i + 1]];
    if (key === "--url") opts.url = value;
    else if (key === "--rounds") opts.rounds = Number(value);
    else if (key === "--between-cmd") opts.between = value;
    else throw new Error(`unknown option ${key}`);
}
if (!opts.url) throw new Error("--url is required");

let failures = 0;
function check(ok, what, detail = "") {
    console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? ` (${detail})` : ""}`);
    if (!ok) failures++;
    return ok;
}

// One subscriber's view: messages by publisher, in arrival order.
function recorder() {
    const byPublisher = new Map();
    return {
        byPublisher,
        push(data) {
            const list = byPublisher.get(data.from) || [];
            list.push(data.seq);
            byPublisher.set(data.from, list);
        },
        count() {
            let n = 0;
            for (const list of byPublisher.values()) n += list.length;
            return n;
        },
    };
}

async function round(r) {
    const channel = `/cluster/round${r}`;
    const clients = [];
    for (let i = 0; i < 4; i++) {
        const websocket = i === 3;
        const client = newCometD(opts.url, {name: `r${r}-${websocket ? "ws" : "lp"}${i}`, websocket});
        client.inbox = recorder();
        clients.push(client);
    }
    const faye = newFaye(opts.url);
    const fayeInbox = recorder();
    try {
        for (const client of clients) {
            await cometdHandshake(client, 10000);
            await cometdSubscribe(client, channel, m => client.inbox.push(m.data), 10000);
        }
        await withTimeout(faye.subscribe(channel, data => fayeInbox.push(data)), 10000, "faye subscribe");
        const publishers = clients.map(c => c.name);
        const expected = publishers.length * opts.perPublisher;
        // The publishers take turns, so messages of different publishers interleave across nodes.
        for (let seq = 0; seq < opts.perPublisher; seq++) {
            for (const client of clients) {
                await cometdPublish(client, channel, {from: client.name, seq}, 10000);
            }
        }
        // The clientId in each line, to find the session in the nodes' logs.
        const inboxes = [...clients.map(c => [`${c.name} (${c.cometd.getClientId()})`, c.inbox]),
            [`faye (${faye._dispatcher?.clientId ?? "?"})`, fayeInbox]];
        try {
            await waitUntil(() => inboxes.every(([, inbox]) => inbox.count() >= expected), 15000,
                `${expected} messages at every client`);
        } catch (e) {
            console.log(`     ${e.message}`);
        }
        await sleep(500); // a duplicate would arrive now
        for (const [name, inbox] of inboxes) {
            const problems = [];
            for (const from of publishers) {
                const got = inbox.byPublisher.get(from) || [];
                const want = [...Array(opts.perPublisher).keys()];
                if (JSON.stringify(got) !== JSON.stringify(want)) {
                    problems.push(`from ${from}: ${got.length} received, first differences at ${
                        got.findIndex((s, k) => s !== k)}`);
                }
            }
            check(problems.length === 0,
                `round ${r}: ${name} received ${inbox.count()} of ${expected}, each once, in order per publisher`,
                problems.join("; "));
        }
    } catch (e) {
        check(false, `round ${r}`, e.message);
    } finally {
        for (const client of clients) await cometdDisconnect(client, 5000).catch(() => {});
        faye.disconnect();
    }
}

for (let r = 1; r <= opts.rounds; r++) {
    if (r > 1 && opts.between) {
        console.log(`---- ${opts.between}`);
        execSync(opts.between, {stdio: "inherit", shell: "/bin/bash", timeout: 60000});
    }
    await round(r);
}
console.log(failures ? `cluster-check: ${failures} FAILED` : "cluster-check: all passed");
process.exit(failures ? 1 : 0);
