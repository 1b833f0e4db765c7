// The real clients of ../node/helpers.mjs (CometD JS 9 over cometd-nodejs-client, Faye 1.4.3), plus what the
// cluster tests need to see which node served what:
//  - every long-polling response's node (HAProxy's reason phrase, see cluster.mjs) is appended to
//    `client.nodes` (the client's transport context; `client.failures` counts the requests that failed: no
//    answer, or not a 200) and handed to `context.onResponse(node, xhr)`, which may
//    answer "drop": the client then sees the request fail as if the connection died before the body arrived
//    (the broker sent it, the client never got it);
//  - every WebSocket records the node that accepted its upgrade (header X-Halley-Node) in `socket.node`.
// Also: sequence checks (exactly once, in order per publisher) and a publisher that retries what failed.
import {AckExtension} from "cometd";
import {newBrowser, sleep, waitUntil, withTimeout} from "../node/helpers.mjs";

export * from "../node/helpers.mjs";
export {AckExtension};

const BaseXHR = globalThis.window.XMLHttpRequest;
globalThis.window.XMLHttpRequest = class NodeTrackingXHR extends BaseXHR {
    send(body) {
        const onload = this.onload;
        const onerror = this.onerror;
        this.onerror = () => {
            if (this.context) this.context.failures = (this.context.failures || 0) + 1;
            if (onerror) onerror.call(this);
        };
        this.onload = () => {
            const context = this.context;
            const node = this.status === 200 ? this.statusText : null;
            if (context) {
                if (this.status !== 200) context.failures = (context.failures || 0) + 1;
                (context.nodes ||= []).push(node);
                if (context.onResponse && context.onResponse(node, this) === "drop") {
                    if (onerror) onerror.call(this);
                    return;
                }
            }
            if (onload) onload.call(this);
        };
        return super.send(body);
    }
};

/** Every WebSocket opened by a client of this process: {url, node, sent, received}. */
export const sockets = [];
const BaseWebSocket = globalThis.window.WebSocket;
globalThis.window.WebSocket = class NodeTrackingWebSocket extends BaseWebSocket {
    constructor(...args) {
        super(...args);
        this.rec = {url: String(args[0]), node: null};
        sockets.push(this.rec);
        this.on("upgrade", response => {
            this.rec.node = response.headers["x-halley-node"] || null;
        });
    }
};

/** A CometD client (newCometD options) whose long-polling context records the nodes that answered it. */
export function trackedCometD(pool, url, options = {}) {
    const browser = options.browser || newBrowser();
    const client = pool.cometd(url, {...options, browser});
    client.context = browser;
    Object.defineProperty(client, "nodes", {get: () => browser.nodes || []});
    Object.defineProperty(client, "failures", {get: () => browser.failures || 0});
    if (options.ack) client.cometd.registerExtension("ack", new AckExtension());
    return client;
}

/** The handshake-listener idiom: subscribes `channel` on every successful handshake (also re-handshakes). */
export function subscribeOnHandshake(client, channel, listener) {
    const state = {handshakes: 0, subscribed: 0};
    client.cometd.addListener("/meta/handshake", reply => {
        if (!reply.successful) return;
        state.handshakes += 1;
        client.cometd.subscribe(channel, listener, r => {
            if (r.successful) state.subscribed += 1;
        });
    });
    return state;
}

/**
 * Checks what a subscriber received from sequence-numbered publishers. `messages`: data objects
 * {pub, seq, attempt}; `expected`: Map pub -> Set of seqs that must have arrived (the publishes acknowledged
 * successfully). A message delivered twice is `duplicated` (the broker's fault); a seq delivered for two attempts
 * of its publisher (the first answered unsuccessfully or not at all, then retried) is `retried`, which a
 * publisher that retries must expect and is reported apart. Returns
 * {received, lost, duplicated, retried, outOfOrder}.
 */
export function sequenceFigures(messages, expected) {
    const seen = new Set();
    const seqs = new Set();
    const last = new Map();
    let duplicated = 0;
    let retried = 0;
    let outOfOrder = 0;
    for (const m of messages) {
        const key = `${m.pub}#${m.seq}#${m.attempt ?? 0}`;
        if (seen.has(key)) {
            duplicated += 1;
            continue;
        }
        seen.add(key);
        const seqKey = `${m.pub}#${m.seq}`;
        if (seqs.has(seqKey)) {
            retried += 1;
            continue;
        }
        seqs.add(seqKey);
        const previous = last.get(m.pub);
        if (previous !== undefined && m.seq < previous) outOfOrder += 1;
        last.set(m.pub, Math.max(previous ?? -1, m.seq));
    }
    let lost = 0;
    for (const [pub, want] of expected) {
        for (const seq of want) if (!seqs.has(`${pub}#${seq}`)) lost += 1;
    }
    return {received: messages.length, lost, duplicated, retried, outOfOrder};
}

/**
 * Publishes {pub, seq, attempt} for seq = from.. on `channel` with a CometD client, one at a time; a publish
 * answered unsuccessfully (or not at all within `ms`) is retried with the same seq and the next attempt number
 * (after `retryMs`) until it succeeds or `stop()` is called. Returns {acked: Set of seqs acknowledged, attempts,
 * failures, failureReplies, stop(), done}.
 */
export function sequencePublisher(client, channel, {pub = client.name, from = 0, pauseMs = 10, retryMs = 100,
    ms = 5000, total = Infinity, acked = new Set()} = {}) {
    const state = {acked, attempts: 0, failures: 0, failureReplies: [], stopped: false, next: from};
    state.stop = () => {
        state.stopped = true;
        return state.done;
    };
    state.done = (async () => {
        let attempt = 0;
        while (!state.stopped && state.next < from + total) {
            const seq = state.next;
            state.attempts += 1;
            let ok = false;
            try {
                const reply = await withTimeout(new Promise(resolve => {
                    client.cometd.publish(channel, {pub, seq, attempt}, resolve);
                }), ms, `${pub} publish ${seq}`);
                ok = reply.successful === true;
                if (!ok) state.failureReplies.push(reply);
            } catch (err) {
                state.failureReplies.push({timeout: err.message});
            }
            if (ok) {
                state.acked.add(seq);
                state.next += 1;
                attempt = 0;
                if (pauseMs) await sleep(pauseMs);
            } else {
                state.failures += 1;
                attempt += 1;
                await sleep(retryMs);
            }
        }
    })();
    return state;
}

/** Waits until `inbox` holds every seq of `acked` (bounded), then a quiet period for late duplicates. */
export async function waitForSequence(inbox, pub, acked, ms = 15000, quietMs = 600) {
    await waitUntil(() => {
        const have = new Set(inbox.data.filter(d => d.pub === pub).map(d => d.seq));
        for (const seq of acked) if (!have.has(seq)) return false;
        return true;
    }, ms, `${inbox.name}: all ${acked.size} acknowledged publishes of ${pub} (have ${inbox.messages.length})`);
    await sleep(quietMs);
}
