#!/usr/bin/env node
// Subscriber peer for cross-language tests: node subscriber.mjs URL CHANNEL
//
// A CometD JS 9 client (long-polling) that subscribes to CHANNEL, prints "ready" on stdout once
// subscribed, then prints every message its listener gets as one JSON line (the whole message:
// channel, data, ext, ...). Errors go to stderr. Exits on SIGTERM, SIGINT or when stdin is closed
// (so a parent that dies takes it down).
import {adapt} from "cometd-nodejs-client";
import {CometD} from "cometd";

const [url, channel] = process.argv.slice(2);
if (!url || !channel) {
    process.stderr.write("usage: node subscriber.mjs URL CHANNEL\n");
    process.exit(2);
}

adapt();
const cometd = new CometD("subscriber");
cometd.unregisterTransport("websocket");
cometd.configure({url, logLevel: "warn"});

let readyPrinted = false;
// Subscribe on every successful handshake (CometD clears subscriptions when it re-handshakes).
cometd.addListener("/meta/handshake", reply => {
    if (!reply.successful) {
        process.stderr.write(`subscriber: handshake failed: ${JSON.stringify(reply)}\n`);
        return;
    }
    process.stderr.write(`subscriber: clientId ${reply.clientId}\n`);
    cometd.subscribe(channel, message => {
        process.stdout.write(`${JSON.stringify(message)}\n`);
    }, subscribeReply => {
        if (!subscribeReply.successful) {
            process.stderr.write(`subscriber: subscribe failed: ${JSON.stringify(subscribeReply)}\n`);
            return;
        }
        if (!readyPrinted) {
            readyPrinted = true;
            process.stdout.write("ready\n");
        }
    });
});

let stopping = false;
function stop(reason) {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`subscriber: stopping (${reason})\n`);
    const exit = () => process.exit(0);
    setTimeout(exit, 1000).unref();
    try {
        if (!cometd.isDisconnected()) cometd.disconnect(exit);
        else exit();
    } catch (x) {
        exit();
    }
}

process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
process.stdin.on("end", () => stop("stdin closed"));
process.stdin.on("error", () => stop("stdin error"));
process.stdin.resume();

cometd.handshake();
