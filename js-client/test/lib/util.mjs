// Small helpers shared by the test files.
import {Client} from "../../dist/index.js";

export const WAIT_MS = 10000;

/** Polls fn() until it returns a truthy value; throws with `what` after ms. */
export async function until(what, fn, ms = WAIT_MS, step = 25) {
    const deadline = Date.now() + ms;
    for (;;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(step);
    }
}

export const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Rejects when `promise` has not settled within ms. */
export function within(what, promise, ms = WAIT_MS) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
        }),
    ]).finally(() => clearTimeout(timer));
}

/**
 * A fetch that records every request's messages and, when set, lets a test replace a response:
 * wire.requests -> [{messages, replies, at, doneAt}], wire.intercept = (messages, response) => response | throws.
 */
export function recordingFetch() {
    const wire = {requests: [], intercept: null};
    wire.fetch = async (url, init) => {
        const entry = {messages: JSON.parse(init.body), replies: null, at: Date.now(), doneAt: null};
        wire.requests.push(entry);
        const res = await fetch(url, init);
        entry.doneAt = Date.now();
        const text = await res.text();
        try {
            entry.replies = JSON.parse(text);
        } catch {
            entry.replies = text;
        }
        const out = new Response(text, {status: res.status, headers: res.headers});
        return wire.intercept ? wire.intercept(entry.messages, out, entry.replies) : out;
    };
    wire.connects = () => wire.requests.filter(r => r.messages[0].channel === "/meta/connect");
    return wire;
}

/** Creates clients with fast back-off for tests and disconnects them all in closeAll(). */
export function clientFactory() {
    const clients = [];
    return {
        make(url, options = {}) {
            const c = new Client(url, {backoff: 100, maxBackoff: 1000, ...options});
            clients.push(c);
            return c;
        },
        async closeAll() {
            await Promise.all(clients.splice(0).map(c => within("disconnect", c.disconnect(), 5000).catch(() => {})));
        },
    };
}

/** Records everything a listener receives. */
export function inbox() {
    const got = [];
    const listener = (data, message) => got.push({channel: message.channel, data});
    return {got, listener};
}
