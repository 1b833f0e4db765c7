// Shared helpers for the real-client tests: bounded waits, message inboxes,
// promise wrappers around the CometD JS and Faye callback APIs.
import {adapt} from "cometd-nodejs-client";
import {CometD} from "cometd";
import faye from "faye";

// Cookies. cometd-nodejs-client 2.0.0 keeps server cookies in ONE process-wide jar (every CometD instance
// would look like a tab of the same browser). Its XMLHttpRequest reads cookies from `transport.context
// .cookieStore` when present but always stores them in the global jar, so a per-client context alone makes
// a client cookie-less. The hooks below give each context a real jar: retrieveCookies(context, uri) and
// storeCookie(uri, header) are called with the same per-request URL object (src/XMLHttpRequest.js send()),
// which links a Set-Cookie back to the context that made the request.
const contextOfRequest = new WeakMap();
const defaultJar = {};

function jarFor(context) {
    return (context && context.cookieStore) || defaultJar;
}

const cookieHooks = {
    retrieveCookies(context, uri, callback) {
        contextOfRequest.set(uri, context);
        const cookies = Object.values(jarFor(context)[uri.hostname] || {});
        callback(null, cookies);
    },
    storeCookie(uri, header, callback) {
        const jar = jarFor(contextOfRequest.get(uri));
        const nameValue = header.split(";")[0].trim();
        const equal = nameValue.indexOf("=");
        if (equal > 0) {
            const host = jar[uri.hostname] || (jar[uri.hostname] = {});
            host[nameValue.substring(0, equal)] = nameValue;
        }
        callback();
    },
};

// Install XMLHttpRequest and WebSocket (the `ws` package) for the CometD JS client.
adapt({cookies: cookieHooks});

// A fresh cookie jar: a client with its own jar behaves like a separate browser.
export function newBrowser() {
    return {cookieStore: {}};
}

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// Rejects if `promise` does not settle within `ms`.
export function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Polls `predicate` (sync or async) until it is truthy, at most `ms`.
export async function waitUntil(predicate, ms, what) {
    const deadline = Date.now() + ms;
    for (;;) {
        const value = await predicate();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
        await sleep(20);
    }
}

// Collects messages handed to a listener; waits for counts with a bound.
export class Inbox {
    constructor(name) {
        this.name = name;
        this.messages = [];
        this.push = this.push.bind(this);
    }

    push(message) {
        this.messages.push(message);
    }

    get data() {
        return this.messages.map(m => m.data);
    }

    async waitFor(count, ms = 5000) {
        await waitUntil(() => this.messages.length >= count, ms,
            `${count} message(s) in inbox ${this.name} (have ${JSON.stringify(this.data)})`);
        return this.messages;
    }
}

// ---------------------------------------------------------------- CometD JS

let clientCounter = 0;

// A CometD JS 9 client restricted to long-polling with its own cookie jar
// (each client behaves like a separate browser), or with `options.websocket` to WebSocket only (the `ws`
// package installed by adapt()). It records every message it sends and receives (after the transport, before
// the listeners) in .sent / .received.
export function newCometD(url, options = {}) {
    const name = options.name || `client${++clientCounter}`;
    const cometd = new CometD(name);
    if (options.websocket) {
        cometd.unregisterTransport("long-polling");
        cometd.unregisterTransport("callback-polling");
        if (!cometd.findTransport("websocket")) throw new Error("CometD has no websocket transport");
    } else {
        cometd.unregisterTransport("websocket");
        const lp = cometd.findTransport("long-polling");
        if (!lp) throw new Error("CometD has no long-polling transport");
        // Its own cookie jar (a separate browser) unless the caller shares one.
        lp.context = options.browser || newBrowser();
    }
    cometd.configure({url, logLevel: options.logLevel || "warn", ...(options.config || {})});
    const sent = [];
    const received = [];
    cometd.registerExtension("recorder", {
        outgoing(message) {
            sent.push({at: Date.now(), message: JSON.parse(JSON.stringify(message))});
            return message;
        },
        incoming(message) {
            received.push({at: Date.now(), message: JSON.parse(JSON.stringify(message))});
            return message;
        },
    });
    return {name, cometd, sent, received};
}

export function cometdHandshake(client, ms = 5000) {
    return withTimeout(new Promise((resolve, reject) => {
        client.cometd.handshake(reply => {
            if (reply.successful) resolve(reply);
            else reject(new Error(`${client.name}: handshake failed: ${JSON.stringify(reply)}`));
        });
    }), ms, `${client.name} handshake`);
}

// Resolves once the client has had a successful /meta/connect reply.
export async function cometdConnected(client, ms = 5000) {
    await waitUntil(() => client.received.some(r => r.message.channel === "/meta/connect" && r.message.successful === true),
        ms, `${client.name}: a successful /meta/connect reply`);
}

export function cometdSubscribe(client, channel, listener, ms = 5000) {
    return withTimeout(new Promise((resolve, reject) => {
        const subscription = client.cometd.subscribe(channel, listener, reply => {
            if (reply.successful) resolve(subscription);
            else reject(new Error(`${client.name}: subscribe ${channel} failed: ${JSON.stringify(reply)}`));
        });
    }), ms, `${client.name} subscribe ${channel}`);
}

export function cometdUnsubscribe(client, subscription, ms = 5000) {
    return withTimeout(new Promise((resolve, reject) => {
        client.cometd.unsubscribe(subscription, reply => {
            if (reply.successful) resolve(reply);
            else reject(new Error(`${client.name}: unsubscribe failed: ${JSON.stringify(reply)}`));
        });
    }), ms, `${client.name} unsubscribe ${subscription.channel}`);
}

// Resolves with the publish acknowledgement; rejects if unsuccessful.
export function cometdPublish(client, channel, data, ms = 5000) {
    return withTimeout(new Promise((resolve, reject) => {
        client.cometd.publish(channel, data, reply => {
            if (reply.successful) resolve(reply);
            else reject(new Error(`${client.name}: publish ${channel} failed: ${JSON.stringify(reply)}`));
        });
    }), ms, `${client.name} publish ${channel}`);
}

export function cometdDisconnect(client, ms = 5000) {
    return withTimeout(new Promise(resolve => {
        client.cometd.disconnect(reply => resolve(reply));
    }), ms, `${client.name} disconnect`);
}

// Raw deliveries (messages with data, no `successful`) the client received on `channel`.
export function rawDeliveries(client, channel) {
    return client.received
        .map(r => r.message)
        .filter(m => m.channel === channel && m.data !== undefined && m.successful === undefined);
}

// ---------------------------------------------------------------- Faye

export function newFaye(url, options = {}) {
    const client = new faye.Client(url, {timeout: 10, retry: 1, ...options});
    client.disable("websocket");
    client.disable("eventsource");
    client.disable("in-process");
    return client;
}

// ---------------------------------------------------------------- cleanup

// Tracks clients so that every test can release them, whatever happened.
export class ClientPool {
    constructor() {
        this.cometds = [];
        this.fayes = [];
    }

    cometd(url, options) {
        const client = newCometD(url, options);
        this.cometds.push(client);
        return client;
    }

    faye(url, options) {
        const client = newFaye(url, options);
        this.fayes.push(client);
        return client;
    }

    async closeAll() {
        const pending = [];
        for (const client of this.cometds) {
            if (!client.cometd.isDisconnected()) {
                pending.push(new Promise(resolve => {
                    const timer = setTimeout(resolve, 2000);
                    try {
                        client.cometd.disconnect(() => {
                            clearTimeout(timer);
                            resolve();
                        });
                    } catch (x) {
                        clearTimeout(timer);
                        resolve();
                    }
                }));
            }
        }
        for (const client of this.fayes) {
            pending.push(new Promise(resolve => {
                const timer = setTimeout(resolve, 2000);
                try {
                    const p = client.disconnect();
                    if (p && typeof p.then === "function") {
                        p.then(() => {
                            clearTimeout(timer);
                            resolve();
                        }, () => {
                            clearTimeout(timer);
                            resolve();
                        });
                    } else {
                        clearTimeout(timer);
                        resolve();
                    }
                } catch (x) {
                    clearTimeout(timer);
                    resolve();
                }
            }));
        }
        await Promise.all(pending);
        this.cometds = [];
        this.fayes = [];
    }
}

// Runs `fn(pool)` and always releases the pool's clients; on failure prints the broker's output.
export async function scenario(broker, fn) {
    const pool = new ClientPool();
    try {
        await fn(pool);
    } catch (x) {
        const brokers = Array.isArray(broker) ? broker : [broker];
        for (const b of brokers) {
            if (b) process.stderr.write(`\n===== broker output (${b.url}) =====\n${b.output()}\n===== end broker output =====\n`);
        }
        throw x;
    } finally {
        await pool.closeAll();
    }
}

// A raw Bayeux POST (for checks the client libraries cannot express).
export async function postBayeux(url, messages, ms = 5000) {
    const response = await withTimeout(fetch(url, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(messages),
    }), ms, `POST ${url}`);
    const text = await response.text();
    let body;
    try {
        body = JSON.parse(text);
    } catch (x) {
        body = text;
    }
    return {status: response.status, contentType: response.headers.get("content-type"), body};
}

let nonceCounter = 0;
export function nonce(prefix = "n") {
    return `${prefix}-${process.pid}-${Date.now()}-${++nonceCounter}`;
}
