// Test page driver for the CometD 9 browser client (served from the page server's origin).
// window.bayeux.start({url, transport, channel}) resolves with the handshake reply once the client is
// handshaken over exactly `transport` ("default": every transport registered, websocket first) and subscribed to
// `channel`; received deliveries on the channel are collected in window.bayeux.received.
import {CometD} from "/cometd-js/cometd.js";

const logEl = document.getElementById("log");
function log(text) {
    logEl.textContent += text + "\n";
    console.log(text);
}

const ALL = ["websocket", "long-polling", "callback-polling"];

window.bayeux = {
    cometd: null,
    received: [],
    metaConnects: [],
    start({url, transport, channel}) {
        const cometd = new CometD();
        this.cometd = cometd;
        for (const type of ALL) {
            if (transport !== "default" && type !== transport) cometd.unregisterTransport(type);
        }
        cometd.configure({url, logLevel: "warn", maxNetworkDelay: 5000});
        cometd.addListener("/meta/connect", m => {
            this.metaConnects.push({successful: m.successful, advice: m.advice ?? null});
        });
        return new Promise((resolve, reject) => {
            let failures = 0;
            // A listener, not the handshake callback: with every transport registered, a refused websocket
            // fails the first handshake and CometD retries it on long-polling.
            const listener = cometd.addListener("/meta/handshake", reply => {
                log(`handshake successful=${reply.successful} transport=${cometd.getTransport()?.type}`);
                if (!reply.successful) {
                    if (transport !== "default" || ++failures >= 3) {
                        cometd.removeListener(listener);
                        reject(new Error("handshake failed: " + JSON.stringify(reply)));
                    }
                    return;
                }
                cometd.removeListener(listener);
                cometd.subscribe(channel, m => {
                    log(`received on ${m.channel}: ${JSON.stringify(m.data)}`);
                    this.received.push(m.data);
                }, sub => {
                    log(`subscribe successful=${sub.successful}`);
                    if (sub.successful) {
                        resolve({
                            clientId: cometd.getClientId(),
                            transport: cometd.getTransport()?.type,
                            supportedConnectionTypes: reply.supportedConnectionTypes,
                        });
                    } else {
                        reject(new Error("subscribe failed: " + JSON.stringify(sub)));
                    }
                });
            });
            cometd.handshake();
        });
    },
    publish(channel, data) {
        return new Promise(resolve => {
            this.cometd.publish(channel, data, reply => resolve({successful: reply.successful, error: reply.error}));
        });
    },
    disconnect() {
        return new Promise(resolve => this.cometd.disconnect(reply => resolve(reply.successful)));
    },
};
window.bayeuxReady = true;
log("page ready");
