// Security with real clients: channel rules from a TOML config (CometD JS denied a channel), handshake
// credentials (shared token, HS256 JWT) sent by CometD JS in the handshake ext and by Faye through an
// outgoing extension; a session ended by its JWT's expiry (--jwt-expiry-ends-session), re-handshaken by
// CometD JS with a fresh token, and one kept alive by a refresh on /service/halley/refresh.
import {describe, it, before, after} from "node:test";
import assert from "node:assert/strict";
import {createHmac} from "node:crypto";
import {mkdtempSync, rmSync, writeFileSync} from "node:fs";
import os from "node:os";
import path from "node:path";
import {startBroker} from "../broker.mjs";
import {
    Inbox, cometdConnected, cometdHandshake, cometdPublish, cometdSubscribe, nonce, rawDeliveries,
    scenario, sleep, waitUntil, withTimeout,
} from "../helpers.mjs";

// How long to keep listening after the expected messages, to catch duplicates.
const QUIET_MS = 600;
const API_KEY = "node-security-api-key-0123";
const SHARED_TOKEN = "shared-token-for-admins-42";
const JWT_SECRET = "hs256-test-secret-with-enough-bytes";

// The channel rule of every broker below.
const ADMIN_RULE = `
[[security.channels]]
pattern = "/admin/**"
subscribe = "authenticated"
publish = "nobody"
`;

// Writes `toml` to a fresh temp dir; returns {file, remove()}.
function tempConfig(toml) {
    const dir = mkdtempSync(path.join(os.tmpdir(), "halley-security-"));
    const file = path.join(dir, "halley.toml");
    writeFileSync(file, toml);
    return {file, remove: () => rmSync(dir, {recursive: true, force: true})};
}

// An HS256 JWT signed with node:crypto (header.payload.signature, base64url).
function base64url(value) {
    return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

function signHs256(payload, secret, header = {alg: "HS256", typ: "JWT"}) {
    const signingInput = `${base64url(header)}.${base64url(payload)}`;
    const signature = createHmac("sha256", secret).update(signingInput).digest("base64url");
    return `${signingInput}.${signature}`;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);
const validJwt = () => signHs256({sub: "alice", iat: nowSeconds(), exp: nowSeconds() + 600}, JWT_SECRET);

// Handshakes with `props` (e.g. {ext: {auth: {token}}}); resolves with the reply, successful or not.
function handshakeWith(client, props, ms = 5000) {
    return withTimeout(new Promise(resolve => {
        client.cometd.handshake(props, reply => resolve(reply));
    }), ms, `${client.name} handshake`);
}

// Subscribes; resolves with the subscribe reply, successful or not.
function subscribeReply(client, channel, listener, ms = 5000) {
    return withTimeout(new Promise(resolve => {
        client.cometd.subscribe(channel, listener, reply => resolve(reply));
    }), ms, `${client.name} subscribe ${channel}`);
}

// Publishes; resolves with the publish reply, successful or not.
function publishReply(client, channel, data, ms = 5000) {
    return withTimeout(new Promise(resolve => {
        client.cometd.publish(channel, data, reply => resolve(reply));
    }), ms, `${client.name} publish ${channel}`);
}

// POST /api/publish (the backend may publish where clients may not).
async function apiPublish(broker, message, ms = 5000) {
    const response = await withTimeout(fetch(new URL("/api/publish", broker.url), {
        method: "POST",
        headers: {"Content-Type": "application/json", "Authorization": `Bearer ${API_KEY}`},
        body: JSON.stringify(message),
    }), ms, "POST /api/publish");
    return {status: response.status, body: await response.json()};
}

function sentOn(client, channel) {
    return client.sent.map(s => s.message).filter(m => m.channel === channel);
}

function receivedOn(client, channel) {
    return client.received.map(r => r.message).filter(m => m.channel === channel);
}

describe("channel rules: an anonymous CometD client is denied /admin/**", () => {
    let broker;
    let config;

    before(async () => {
        config = tempConfig(`[security]\ntokens = ["${SHARED_TOKEN}"]\n${ADMIN_RULE}`);
        broker = await startBroker(["--timeout", "2000", "--config", config.file]);
    });

    after(async () => {
        if (broker) await broker.stop();
        if (config) config.remove();
    });

    it("subscribe and publish on /admin get the 403 errors; other channels still work", async () => {
        await scenario(broker, async pool => {
            const anon = pool.cometd(broker.url, {name: "anonymous"});
            const hs = await cometdHandshake(anon);
            assert.notEqual(hs.ext?.auth?.authenticated, true, "an anonymous session is not authenticated");
            await cometdConnected(anon);

            // An authenticated client (shared token) may subscribe to /admin/**: it must see nothing denied.
            const admin = pool.cometd(broker.url, {name: "admin"});
            const adminHs = await handshakeWith(admin, {ext: {auth: {token: SHARED_TOKEN}}});
            assert.equal(adminHs.successful, true, JSON.stringify(adminHs));
            assert.deepEqual(adminHs.ext?.auth, {authenticated: true});
            await cometdConnected(admin);
            const adminInbox = new Inbox("admin /admin/**");
            await cometdSubscribe(admin, "/admin/**", adminInbox.push);

            const denied = new Inbox("anonymous /admin/logs");
            const reply = await subscribeReply(anon, "/admin/logs", denied.push);
            assert.equal(reply.successful, false, JSON.stringify(reply));
            assert.equal(reply.error, "403:/admin/logs:subscribe_denied");
            assert.equal(reply.subscription, "/admin/logs");
            // A subscription covering /admin/** is refused too.
            const all = await subscribeReply(anon, "/**", () => {});
            assert.equal(all.successful, false, JSON.stringify(all));
            assert.equal(all.error, "403:/**:subscribe_denied");

            // The session still works on other channels, exactly once per publication.
            const news = new Inbox("anonymous /public/news");
            await cometdSubscribe(anon, "/public/news", news.push);
            const data = {text: "still here", id: nonce()};
            await cometdPublish(anon, "/public/news", data);
            await news.waitFor(1);

            // Publishing on /admin is denied for everyone (publish = "nobody"), authenticated or not.
            const pub = await publishReply(anon, "/admin/x", {text: "must not arrive", id: nonce()});
            assert.equal(pub.successful, false, JSON.stringify(pub));
            assert.equal(pub.error, "403:/admin/x:publish_denied");
            const adminPub = await publishReply(admin, "/admin/x", {text: "must not arrive either"});
            assert.equal(adminPub.successful, false, JSON.stringify(adminPub));
            assert.equal(adminPub.error, "403:/admin/x:publish_denied");

            await sleep(QUIET_MS);
            assert.deepEqual(news.data, [data]);
            assert.equal(rawDeliveries(anon, "/public/news").length, 1);
            assert.deepEqual(denied.data, [], "a denied subscription receives nothing");
            assert.deepEqual(adminInbox.data, [], "a denied publication is not delivered");
            assert.equal(anon.cometd.getStatus() === "connected" || anon.cometd.getStatus() === "connecting", true,
                `the anonymous client is still connected (${anon.cometd.getStatus()})`);
            assert.equal(sentOn(anon, "/meta/handshake").length, 1, "denials do not make the client re-handshake");
        });
    });
});

describe("JWT handshake (--jwt-hs256-secret, --anonymous false) with CometD JS", () => {
    let broker;
    let config;

    before(async () => {
        config = tempConfig(ADMIN_RULE);
        broker = await startBroker(["--timeout", "2000", "--config", config.file, "--jwt-hs256-secret", JWT_SECRET,
            "--anonymous", "false", "--api-key", API_KEY]);
    });

    after(async () => {
        if (broker) await broker.stop();
        if (config) config.remove();
    });

    it("a valid JWT is accepted and may subscribe to the authenticated-only channel", async () => {
        await scenario(broker, async pool => {
            const c = pool.cometd(broker.url, {name: "jwt-valid"});
            const reply = await handshakeWith(c, {ext: {auth: {token: validJwt()}}});
            assert.equal(reply.successful, true, JSON.stringify(reply));
            assert.deepEqual(reply.ext?.auth, {authenticated: true});
            await cometdConnected(c);

            const logs = new Inbox("jwt /admin/logs");
            await cometdSubscribe(c, "/admin/logs", logs.push);
            // publish = "nobody" still holds for an authenticated client; the backend API may publish.
            const pub = await publishReply(c, "/admin/logs", {text: "no"});
            assert.equal(pub.successful, false, JSON.stringify(pub));
            assert.equal(pub.error, "403:/admin/logs:publish_denied");
            const data = {line: "backup done", id: nonce()};
            const api = await apiPublish(broker, {channel: "/admin/logs", data});
            assert.equal(api.status, 200, JSON.stringify(api.body));
            assert.deepEqual(api.body, {channel: "/admin/logs", queued: 1});
            await logs.waitFor(1);
            await sleep(QUIET_MS);
            assert.deepEqual(logs.data, [data]);
            assert.equal(logs.messages[0].channel, "/admin/logs");
        });
    });

    it("expired, forged and missing credentials: 403::Handshake denied, the client stops without retrying", async () => {
        await scenario(broker, async pool => {
            const header = {alg: "HS256", typ: "JWT"};
            const cases = {
                expired: signHs256({sub: "alice", iat: nowSeconds() - 7200, exp: nowSeconds() - 3600}, JWT_SECRET),
                "wrong-secret": signHs256({sub: "alice", exp: nowSeconds() + 600}, "not-the-secret-of-the-broker-x"),
                // a valid signature, then the payload changed (sub: mallory)
                tampered: (() => {
                    const [h, , s] = signHs256({sub: "alice", exp: nowSeconds() + 600}, JWT_SECRET).split(".");
                    return `${h}.${base64url({sub: "mallory", exp: nowSeconds() + 600})}.${s}`;
                })(),
                "alg-none": `${base64url({...header, alg: "none"})}.${base64url({sub: "alice", exp: nowSeconds() + 600})}.`,
                "no-token": null,
            };
            const clients = Object.keys(cases).map(name => pool.cometd(broker.url, {name}));
            const started = Date.now();
            const replies = await Promise.all(clients.map(c => {
                const token = cases[c.name];
                return handshakeWith(c, token === null ? {} : {ext: {auth: {token}}});
            }));
            for (const [i, reply] of replies.entries()) {
                const what = `${clients[i].name}: ${JSON.stringify(reply)}`;
                assert.equal(reply.successful, false, what);
                assert.equal(reply.error, "403::Handshake denied", what);
                assert.equal(reply.clientId, undefined, what);
            }
            // advice reconnect:"none": the client gives up; exactly one handshake each within 3 s.
            await sleep(Math.max(0, 3000 - (Date.now() - started)));
            for (const c of clients) {
                const fromServer = receivedOn(c, "/meta/handshake");
                assert.equal(fromServer.length, 1, `${c.name}: handshake replies ${JSON.stringify(fromServer)}`);
                assert.equal(fromServer[0].advice?.reconnect, "none", `${c.name}: ${JSON.stringify(fromServer[0])}`);
                assert.equal(sentOn(c, "/meta/handshake").length, 1, `${c.name}: handshakes sent`);
                assert.equal(sentOn(c, "/meta/connect").length, 0, `${c.name}: no connect without a session`);
                assert.equal(c.cometd.getStatus(), "disconnected", c.name);
            }
        });
    });
});

describe("Faye with a handshake token in an outgoing extension (--anonymous false)", () => {
    let broker;
    let config;

    before(async () => {
        config = tempConfig(ADMIN_RULE);
        broker = await startBroker(["--timeout", "2000", "--config", config.file, "--jwt-hs256-secret", JWT_SECRET,
            "--anonymous", "false", "--api-key", API_KEY]);
    });

    after(async () => {
        if (broker) await broker.stop();
        if (config) config.remove();
    });

    // Records what a Faye client sends and receives; with `token`, adds it to the handshake.
    function recordedFaye(pool, token) {
        const client = pool.faye(broker.url);
        const sent = [];
        const received = [];
        client.addExtension({
            outgoing(message, callback) {
                if (token !== undefined && message.channel === "/meta/handshake") message.ext = {auth: {token}};
                sent.push(JSON.parse(JSON.stringify(message)));
                callback(message);
            },
            incoming(message, callback) {
                received.push(JSON.parse(JSON.stringify(message)));
                callback(message);
            },
        });
        return {client, sent, received};
    }

    it("with a valid JWT Faye is accepted, subscribes to /admin/logs and receives", async () => {
        await scenario(broker, async pool => {
            const {client, sent, received} = recordedFaye(pool, validJwt());
            const logs = new Inbox("faye /admin/logs");
            await withTimeout(Promise.resolve(client.subscribe("/admin/logs", data => logs.push({data}))), 5000,
                "faye subscribe /admin/logs");
            const hs = received.filter(m => m.channel === "/meta/handshake");
            assert.equal(hs.length, 1);
            assert.equal(hs[0].successful, true, JSON.stringify(hs[0]));
            assert.deepEqual(hs[0].ext?.auth, {authenticated: true});

            const data = {line: "to faye", id: nonce()};
            const api = await apiPublish(broker, {channel: "/admin/logs", data});
            assert.deepEqual(api.body, {channel: "/admin/logs", queued: 1});
            await logs.waitFor(1);

            // publish = "nobody": Faye's publication fails with the broker's error.
            let error;
            await withTimeout(Promise.resolve(client.publish("/admin/logs", {text: "no"})).then(
                () => assert.fail("publish to /admin/logs must be refused"), x => { error = x; }), 5000, "faye publish");
            assert.equal(error.code, 403, JSON.stringify(error));
            assert.deepEqual(error.params, ["/admin/logs"]);
            assert.equal(error.message, "publish_denied");

            await sleep(QUIET_MS);
            assert.deepEqual(logs.data, [data]);
            assert.equal(sent.filter(m => m.channel === "/meta/handshake").length, 1);
        });
    });

    it("without a token Faye is refused and does not retry", async () => {
        await scenario(broker, async pool => {
            const {client, sent, received} = recordedFaye(pool, undefined);
            let subscribed = false;
            Promise.resolve(client.subscribe("/public/news", () => {})).then(() => { subscribed = true; }, () => {});
            await waitUntil(() => received.some(m => m.channel === "/meta/handshake"), 5000, "faye handshake reply");
            const hs = received.filter(m => m.channel === "/meta/handshake");
            assert.equal(hs[0].successful, false, JSON.stringify(hs[0]));
            assert.equal(hs[0].error, "403::Handshake denied");
            assert.equal(hs[0].advice?.reconnect, "none");
            // Faye would retry a failed handshake after `retry` (1 s) unless told reconnect:"none".
            await sleep(2500);
            assert.equal(sent.filter(m => m.channel === "/meta/handshake").length, 1, "one handshake only");
            assert.equal(sent.filter(m => m.channel === "/meta/subscribe").length, 0, "nothing sent without a session");
            assert.equal(subscribed, false);
        });
    });
});

describe("JWT expiry ends the session (--jwt-expiry-ends-session) with CometD JS", () => {
    let broker;

    before(async () => {
        broker = await startBroker(["--timeout", "5000", "--jwt-hs256-secret", JWT_SECRET, "--anonymous", "false",
            "--jwt-expiry-ends-session", "--jwt-leeway", "0", "--sweep-interval", "100", "--api-key", API_KEY]);
    });

    after(async () => {
        if (broker) await broker.stop();
    });

    // The page's token endpoint: the first token lives 2 s, later ones 10 minutes.
    function tokenIssuer(sub) {
        const issued = [];
        return {
            issued,
            fetchToken: async () => {
                await sleep(50);
                const exp = nowSeconds() + (issued.length === 0 ? 2 : 600);
                const token = signHs256({sub, iat: nowSeconds(), exp}, JWT_SECRET);
                issued.push({token, exp});
                return token;
            },
        };
    }

    it("a session ends with its token; the page re-handshakes with a fresh token and gets its subscriptions back",
        async () => {
            await scenario(broker, async pool => {
                const c = pool.cometd(broker.url, {name: "jwt-rehandshake"});
                const issuer = tokenIssuer("dora");
                const chat = new Inbox("jwt /chat/room");
                const channel = `/chat/${nonce("room")}`;
                // The README's pattern: an extension puts the page's current token on every handshake, the
                // /meta/handshake listener subscribes (again) on success, and on a refusal (the automatic
                // re-handshake carried the expired token) fetches a fresh token and handshakes again.
                let token = await issuer.fetchToken();
                c.cometd.registerExtension("auth", {
                    outgoing(message) {
                        if (message.channel === "/meta/handshake") message.ext = {...message.ext, auth: {token}};
                        return message;
                    },
                });
                const subscribed = [];
                c.cometd.addListener("/meta/handshake", reply => {
                    if (reply.successful) {
                        c.cometd.subscribe(channel, chat.push, r => subscribed.push(r));
                    } else if (reply.error === "403::Handshake denied") {
                        issuer.fetchToken().then(fresh => {
                            token = fresh;
                            c.cometd.handshake();
                        });
                    }
                });
                c.cometd.handshake();
                await waitUntil(() => subscribed.length === 1, 5000, "the first subscription");
                assert.equal(subscribed[0].successful, true, JSON.stringify(subscribed[0]));
                const first = receivedOn(c, "/meta/handshake")[0];
                assert.equal(first.ext?.auth?.expires, issuer.issued[0].exp * 1000, JSON.stringify(first));

                const before = {text: "before expiry", id: nonce()};
                assert.deepEqual((await apiPublish(broker, {channel, data: before})).body, {channel, queued: 1});
                await chat.waitFor(1);

                // The held connect is answered when the 2 s token expires.
                const ended = await waitUntil(() => receivedOn(c, "/meta/connect").find(m => m.successful === false),
                    6000, "the connect ended by the token's expiry");
                assert.equal(ended.error, "402::token_expired", JSON.stringify(ended));
                assert.equal(ended.advice?.reconnect, "handshake", JSON.stringify(ended));

                // Re-handshaken with a fresh token, subscribed again.
                await waitUntil(() => subscribed.length === 2, 8000, "the subscription after the re-handshake");
                assert.equal(subscribed[1].successful, true, JSON.stringify(subscribed[1]));
                const handshakes = receivedOn(c, "/meta/handshake");
                const successes = handshakes.filter(m => m.successful);
                assert.equal(successes.length, 2, JSON.stringify(handshakes));
                assert.notEqual(successes[1].clientId, successes[0].clientId);
                const lastSent = sentOn(c, "/meta/handshake").at(-1);
                assert.equal(lastSent.ext?.auth?.token, issuer.issued.at(-1).token, "the last handshake had the fresh token");
                assert.equal(issuer.issued.length, 2, "one fresh token was fetched");

                const after = {text: "after re-handshake", id: nonce()};
                assert.deepEqual((await apiPublish(broker, {channel, data: after})).body, {channel, queued: 1});
                await chat.waitFor(2);
                await sleep(QUIET_MS);
                assert.deepEqual(chat.data, [before, after]);
                await cometdConnected(c);
                assert.equal(c.cometd.getStatus(), "connected");
            });
        });

    it("a fresh token on /service/halley/refresh (remoteCall) keeps the session past the first token's expiry",
        async () => {
            await scenario(broker, async pool => {
                const c = pool.cometd(broker.url, {name: "jwt-refresh"});
                const issuer = tokenIssuer("erin");
                const reply = await handshakeWith(c, {ext: {auth: {token: await issuer.fetchToken()}}});
                assert.equal(reply.successful, true, JSON.stringify(reply));
                await cometdConnected(c);
                const chat = new Inbox("refresh /chat");
                const channel = `/chat/${nonce("refresh")}`;
                await cometdSubscribe(c, channel, chat.push);

                const fresh = await issuer.fetchToken();
                const answer = await withTimeout(new Promise(resolve => {
                    c.cometd.remoteCall("/halley/refresh", {token: fresh}, 5000, resolve);
                }), 6000, "remoteCall /halley/refresh");
                assert.equal(answer.successful, true, JSON.stringify(answer));
                assert.deepEqual(answer.data, {expires: issuer.issued[1].exp * 1000});

                // Well past the first token's expiry: the same session, still subscribed.
                const firstEnd = issuer.issued[0].exp * 1000;
                await sleep(Math.max(0, firstEnd - Date.now()) + 1500);
                const data = {text: "after the first expiry", id: nonce()};
                assert.deepEqual((await apiPublish(broker, {channel, data})).body, {channel, queued: 1});
                await chat.waitFor(1);
                assert.equal(sentOn(c, "/meta/handshake").length, 1, "no re-handshake");
                assert.equal(receivedOn(c, "/meta/connect").filter(m => m.successful === false).length, 0);
                assert.equal(c.cometd.getClientId(), reply.clientId);
            });
        });
});
