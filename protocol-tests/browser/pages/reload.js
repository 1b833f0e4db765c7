// Test page for the CometD 9 ReloadExtension (BAYEUX.md 6.4), CORS long-polling to the broker.
// Query: ?url=<broker Bayeux URL>&channel=<channel>. On every load the page configures CometD with the
// ReloadExtension and handshakes; the application subscribes from a /meta/handshake listener (the idiom
// the CometD docs give for reloads); `beforeunload` calls cometd.reload(), which saves the handshake
// reply in sessionStorage, so the reloaded page replays it instead of handshaking again.
// window.bayeux: {clientId(), state: {sent, received, handshakes, connects, messages, subscribed}}.
import {CometD, ReloadExtension} from "/cometd-js/cometd.js";

const params = new URLSearchParams(location.search);
const url = params.get("url");
const channel = params.get("channel");
const logEl = document.getElementById("log");
function log(text) {
    logEl.textContent += text + "\n";
    console.log(text);
}

const state = {loadedAt: Date.now(), sent: [], received: [], handshakes: [], connects: [], messages: [], subscribed: false};
const cometd = new CometD();
for (const type of ["websocket", "callback-polling"]) cometd.unregisterTransport(type);
// Registered first: its outgoing() runs last (sees what is really sent), its incoming() first.
cometd.registerExtension("recorder", {
    outgoing(message) {
        state.sent.push({at: Date.now(), message: JSON.parse(JSON.stringify(message))});
        return message;
    },
    incoming(message) {
        state.received.push({at: Date.now(), message: JSON.parse(JSON.stringify(message))});
        return message;
    },
});
cometd.registerExtension("reload", new ReloadExtension());
cometd.configure({url, logLevel: "warn", maxNetworkDelay: 5000});

cometd.addListener("/meta/handshake", reply => {
    state.handshakes.push({at: Date.now(), successful: reply.successful, clientId: reply.clientId, ext: reply.ext ?? null});
    log(`handshake successful=${reply.successful} clientId=${reply.clientId} ext=${JSON.stringify(reply.ext)}`);
    if (reply.successful) {
        cometd.subscribe(channel, m => {
            log(`received ${JSON.stringify(m.data)}`);
            state.messages.push(m.data);
        }, sub => {
            log(`subscribe successful=${sub.successful}`);
            state.subscribed = sub.successful === true;
        });
    }
});
cometd.addListener("/meta/connect", m => {
    state.connects.push({at: Date.now(), id: m.id, successful: m.successful, advice: m.advice ?? null});
});
window.addEventListener("beforeunload", () => {
    log("beforeunload: cometd.reload()");
    cometd.reload();
});

window.bayeux = {state, clientId: () => cometd.getClientId(), status: () => cometd.getStatus()};
cometd.handshake();
log("page ready");
