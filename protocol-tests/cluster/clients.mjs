// The real clients of ../node/helpers.mjs (CometD JS 9 over cometd-nodejs-client, Faye 1.4.3), plus what the
// cluster tests need to see which node served what:
//  - every long-polling response's node (HAProxy's reason phrase, see cluster.mjs) is appended to
//    `client.nodes` (the client's transport context; `client.failures` counts the requests that failed: no
//    answer, or not a 200) and handed to `context.onResponse(node, xhr)`, which may
//    answer "drop": the client then sees the request fail as if the connection died before the body arrived
//    (the broker sent it, the client never got it);
//  - every WebSocket records the node that accepted its upgrade (header X-Halley-Node) in `socket.node`.
// Also: sequence checks (exactly once, in order per publisher) and a publisher that retries what failed.
import assert from "node:assert/strict";
import {AckExtension} from "cometd";
import {Inbox, cometdConnected, cometdHandshake, cometdSubscribe, newBrowser, sleep, waitUntil, withTimeout}
    from "../node/helpers.mjs";

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
                context.lastNode = node;
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
                if (!ok) state.failureReplies.push({seq, attempt, error: reply.error ?? null, failure: reply.failure?.reason});
            } catch (err) {
                state.failureReplies.push({seq, attempt, timeout: true});
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

// ---------------------------------------------------------------- failure tests

// Fast retries after a failed request (CometD's default back-off grows by 1 s per failure).
export const FAST_RETRY = {backoffIncrement: 50, maxBackoff: 500};

/** `count` CometD clients with the AckExtension (long-polling, or WebSocket), subscribed to `channel`: [{c, inbox}]. */
export async function ackSubscribers(pool, url, channel, count, prefix = "ack", {websocket = false} = {}) {
    const subs = [];
    for (let i = 0; i < count; ++i) {
        const c = trackedCometD(pool, url, {name: `${prefix}${i}`, ack: true, websocket, config: FAST_RETRY});
        const inbox = new Inbox(c.name);
        await cometdHandshake(c);
        await cometdConnected(c);
        // Which node's reply carried each delivery (long-polling: the reply being processed now).
        await cometdSubscribe(c, channel, m => inbox.push({...m, node: c.context?.lastNode ?? null}));
        subs.push({c, inbox});
    }
    return subs;
}

/** Sums the subscribers' figures, reports them (a `FIGURES` diagnostic of test `t`), and returns them. */
export function figures(t, label, publisher, subs) {
    const expected = new Map([[publisher.pub, publisher.acked]]);
    // Publishes answered unsuccessfully (or not at all) whose message was delivered anyway: the retry arrives too.
    const deliveredAttempts = new Set(subs.flatMap(({inbox}) => inbox.data.map(d => `${d.seq}#${d.attempt ?? 0}`)));
    const failedButDelivered = (publisher.failureReplies || []).filter(f => deliveredAttempts.has(`${f.seq}#${f.attempt}`));
    if (failedButDelivered.length) {
        t.diagnostic(`${label}: publishes answered unsuccessfully but delivered: ${JSON.stringify(failedButDelivered)}`);
    }
    // How each subscriber's session fared: handshakes (more than 1: it was told to handshake again) and 402s.
    const per = subs.map(({c, inbox}) => {
        const replies = c.received.map(r => r.message);
        const counts = new Map();
        for (const d of inbox.data) counts.set(`${d.seq}#${d.attempt ?? 0}`, (counts.get(`${d.seq}#${d.attempt ?? 0}`) ?? 0) + 1);
        // Each message delivered twice, with the nodes whose replies carried it.
        const twice = [...counts].filter(([, n]) => n > 1).map(([key]) => {
            const seq = Number(key.split("#")[0]);
            return {seq, nodes: inbox.messages.filter(m => m.data.seq === seq).map(m => m.node)};
        });
        return {
            name: c.name,
            ...sequenceFigures(inbox.data, expected),
            ...(twice.length ? {twice} : {}),
            handshakes: replies.filter(m => m.channel === "/meta/handshake" && m.successful).length,
            unknown: replies.filter(m => /^402:/.test(m.error || "")).length,
        };
    });
    const total = {published: publisher.acked.size, attempts: publisher.attempts, failedPublishes: publisher.failures,
        subscribers: subs.length, delivered: 0, lost: 0, duplicated: 0, retried: 0, outOfOrder: 0};
    for (const f of per) {
        for (const k of ["lost", "duplicated", "retried", "outOfOrder"]) total[k] += f[k];
        total.delivered += f.received;
    }
    t.diagnostic(`FIGURES ${label}: ${JSON.stringify(total)}`);
    return {total, per};
}

/**
 * Waits (bounded by `ms` in all) for every subscriber to have every acknowledged publish, then a quiet period,
 * then reports the figures and fails unless each arrived once, in order; a subscriber that never catches up is
 * reported with what it lost rather than as a timeout. `toldMayLose`: a subscriber whose session was told
 * 402::session_unknown may have lost messages (only duplicates and order are checked for it).
 */
export async function settleAndCheck(t, label, publisher, subs, {ms = 20000, quietMs = 600, toldMayLose = false} = {}) {
    const deadline = Date.now() + ms;
    const wasTold = c => c.received.some(r => /^402:/.test(r.message.error || ""));
    for (const {c, inbox} of subs) {
        if (toldMayLose && wasTold(c)) continue; // it will not catch up: no need to wait for it
        try {
            await waitForSequence(inbox, publisher.pub, publisher.acked, Math.max(0, deadline - Date.now()), 0);
        } catch {
            // reported by the figures
        }
    }
    await sleep(quietMs);
    const result = figures(t, label, publisher, subs);
    if (!toldMayLose) {
        assertExactlyOnce(result);
        return;
    }
    // A session told 402::session_unknown lost its state visibly, not silently: only duplicates and order count
    // for it (its subscriber, subscribed once, stops receiving after the re-handshake).
    const told = result.per.filter(f => f.unknown > 0);
    t.diagnostic(`${label}: sessions told to handshake again: ${told.map(f => `${f.name} (lost ${f.lost})`).join(", ") || "none"}`);
    const silent = result.per.filter(f => f.unknown === 0);
    assert.deepEqual(silent.map(f => ({name: f.name, lost: f.lost})), silent.map(f => ({name: f.name, lost: 0})),
        `silent loss: ${JSON.stringify(result.per)}`);
    assert.deepEqual({duplicated: result.total.duplicated, outOfOrder: result.total.outOfOrder},
        {duplicated: 0, outOfOrder: 0}, JSON.stringify(result.per));
}

/** Fails unless every acknowledged publish reached every subscriber once, in order. */
export function assertExactlyOnce({total, per}) {
    assert.deepEqual({lost: total.lost, duplicated: total.duplicated, outOfOrder: total.outOfOrder},
        {lost: 0, duplicated: 0, outOfOrder: 0}, JSON.stringify(per));
}
