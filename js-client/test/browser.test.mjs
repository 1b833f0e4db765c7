// The browser build in headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM_BIN, driven by
// playwright-core): a page on one origin loads dist/halley-client.min.js with a <script> tag and talks to Halley
// on another origin, over callback-polling (script tags), with the default preference over WebSocket (one socket,
// no HTTP), and with the default preference against a Halley that refuses upgrades (`--transports
// long-polling,callback-polling`: WebSocket first, then CORS long-polling); and the same page over WebSocket to
// Faye 1.4.3.
import assert from "node:assert/strict";
import {createRequire} from "node:module";
import {after, before, describe, test} from "node:test";
import {chromium} from "playwright-core";
import {startPageServer} from "./lib/pageserver.mjs";
import {startFaye, startHalley} from "./lib/servers.mjs";
import {clientFactory, inbox, until, WAIT_MS} from "./lib/util.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];

describe("browser build in chromium", () => {
    let browser, broker, pages;
    const clients = clientFactory();

    before(async () => {
        [browser, broker, pages] = await Promise.all([
            chromium.launch({executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30000}),
            startHalley(),
            startPageServer(),
        ]);
    });
    after(async () => {
        await clients.closeAll();
        await browser?.close();
        await Promise.all([broker?.stop(), pages?.stop()]);
    });

    /** Opens the page and records the requests it makes to the broker. */
    async function openPage(server = broker) {
        const context = await browser.newContext();
        context.setDefaultTimeout(WAIT_MS);
        const page = await context.newPage();
        const log = [];
        const requests = [];
        const sockets = [];
        page.on("websocket", ws => sockets.push(ws.url()));
        page.on("console", m => log.push(`[${m.type()}] ${m.text()}`));
        page.on("pageerror", e => log.push(`[pageerror] ${e}`));
        page.on("request", r => {
            if (r.url().startsWith(server.url)) requests.push({method: r.method(), url: r.url(), type: r.resourceType()});
        });
        await page.goto(pages.origin + "/");
        return {context, page, log, requests, sockets};
    }

    /** In the page: connect, subscribe to /browser/**, publish, and expose what arrived on window.got. */
    async function roundTrip(page, options, url = broker.url) {
        return page.evaluate(async ({url, options}) => {
            const c = (window.client = new Halley.Client(url, options));
            window.got = [];
            window.states = [];
            ["connecting", "connected", "reconnecting", "disconnected"].forEach(s => c.on(s, () => states.push(s)));
            await c.subscribe("/browser/**", (data, m) => got.push({channel: m.channel, data})).ready;
            const ack = await c.publish("/browser/self", {from: "page", text: "ünïcødé ☃"});
            await c.connect();
            return {transport: c.transport.name, ack, clientId: c.clientId};
        }, {url, options});
    }

    test("callback-polling from another origin", async () => {
        const {context, page, log, requests} = await openPage();
        try {
            const r = await roundTrip(page, {transports: ["callback-polling"]});
            assert.equal(r.transport, "callback-polling");
            assert.equal(r.ack.successful, true);
            await clients.make(broker.url).publish("/browser/from/node", 42);
            await until("deliveries in the page", () => page.evaluate(() => got.length >= 2));
            const got = await page.evaluate(() => got);
            assert.deepEqual(got, [
                {channel: "/browser/self", data: {from: "page", text: "ünïcødé ☃"}},
                {channel: "/browser/from/node", data: 42},
            ]);
            await page.evaluate(() => client.disconnect());
            assert.deepEqual(await page.evaluate(() => states), ["connecting", "connected", "disconnected"]);
            assert.ok(requests.length >= 4, `${requests.length} requests`);
            for (const q of requests) {
                assert.equal(q.method, "GET", q.url);
                assert.equal(q.type, "script", q.url);
                assert.match(q.url, /[?&]jsonp=_halley_jsonp_\d+&message=/);
            }
            // Only the aborted held connect leaves a no-op callback behind (its script may still arrive).
            const left = await page.evaluate(() => Object.keys(window).filter(k => k.startsWith("_halley_jsonp_")));
            assert.ok(left.length <= 1, `callbacks left behind: ${left}`);
        } catch (e) {
            console.error(log.join("\n"), "\n", broker.output());
            throw e;
        } finally {
            await context.close();
        }
    });

    test("default preference: WebSocket to Halley, one socket and no HTTP", async () => {
        const {context, page, log, requests, sockets} = await openPage();
        try {
            const r = await roundTrip(page, {});
            assert.equal(r.transport, "websocket");
            assert.equal(r.ack.successful, true);
            await clients.make(broker.url, {transports: ["long-polling"]}).publish("/browser/from/node", 42);
            await until("deliveries in the page", () => page.evaluate(() => got.length >= 2));
            assert.deepEqual(await page.evaluate(() => got), [
                {channel: "/browser/self", data: {from: "page", text: "ünïcødé ☃"}},
                {channel: "/browser/from/node", data: 42},
            ]);
            await page.evaluate(() => client.disconnect());
            assert.deepEqual(sockets, [broker.url.replace(/^http/, "ws")], "one socket");
            assert.deepEqual(requests, [], "nothing over HTTP");
        } catch (e) {
            console.error(log.join("\n"), "\n", broker.output());
            throw e;
        } finally {
            await context.close();
        }
    });

    test("default preference: WebSocket refused by Halley, then CORS long-polling with credentials", async () => {
        const refusing = await startHalley(["--transports", "long-polling,callback-polling"]);
        const {context, page, log, requests, sockets} = await openPage(refusing);
        try {
            const r = await roundTrip(page, {}, refusing.url);
            assert.equal(r.transport, "long-polling");
            assert.deepEqual(sockets, [refusing.url.replace(/^http/, "ws")], "one WebSocket attempt");
            await until("own delivery", () => page.evaluate(() => got.length >= 1));
            await page.evaluate(() => client.disconnect());
            const posts = requests.filter(q => q.method === "POST");
            assert.ok(posts.length >= 3 && posts.every(q => q.type === "fetch"), JSON.stringify(requests));
        } catch (e) {
            console.error(log.join("\n"), "\n", refusing.output());
            throw e;
        } finally {
            await context.close();
            await refusing.stop();
        }
    });
});

describe("browser build in chromium over WebSocket", () => {
    let browser, faye, pages;

    before(async () => {
        [browser, faye, pages] = await Promise.all([
            chromium.launch({executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30000}),
            startFaye(),
            startPageServer(),
        ]);
    });
    after(async () => {
        await browser?.close();
        await Promise.all([faye?.stop(), pages?.stop()]);
    });

    test("to Faye from another origin: one socket, no HTTP, deliveries both ways", async () => {
        const context = await browser.newContext();
        context.setDefaultTimeout(WAIT_MS);
        const page = await context.newPage();
        const log = [], sockets = [], http = [];
        page.on("console", m => log.push(`[${m.type()}] ${m.text()}`));
        page.on("websocket", ws => sockets.push(ws.url()));
        page.on("request", r => r.url().startsWith(faye.url) && http.push(r.url()));
        const fayeClient = new (createRequire(import.meta.url)("faye").Client)(faye.url);
        try {
            await page.goto(pages.origin + "/");
            const r = await page.evaluate(async url => {
                const c = (window.client = new Halley.Client(url));
                window.got = [];
                await c.subscribe("/browser/**", (data, m) => got.push({channel: m.channel, data})).ready;
                await c.connect();
                return {transport: c.transport.name, ack: await c.publish("/browser/from/page", "ünïcødé ☃")};
            }, faye.url);
            assert.equal(r.transport, "websocket");
            assert.equal(r.ack.successful, true);
            await fayeClient.publish("/browser/from/node", 42);
            await until("deliveries in the page", () => page.evaluate(() => got.length >= 2));
            assert.deepEqual(await page.evaluate(() => got), [
                {channel: "/browser/from/page", data: "ünïcødé ☃"},
                {channel: "/browser/from/node", data: 42},
            ]);
            await page.evaluate(() => client.disconnect());
            assert.deepEqual(sockets, [faye.url.replace(/^http/, "ws")]);
            assert.deepEqual(http, [], "nothing over HTTP");
        } catch (e) {
            console.error(log.join("\n"));
            throw e;
        } finally {
            fayeClient.disconnect();
            await context.close();
        }
    });
});
