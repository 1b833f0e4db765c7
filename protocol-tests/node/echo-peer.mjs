#!/usr/bin/env node
// Echo peer for cross-language tests: node echo-peer.mjs URL
//
// A CometD JS 9 client (long-polling) that subscribes to /echo/in and republishes the data of every
// message it gets to /echo/out. Prints "ready" on stdout once subscribed. Exits on SIGTERM, SIGINT or
// when stdin is closed (so a parent that dies takes it down).
import {adapt} from "cometd-nodejs-client";
import {CometD} from "cometd";

const url = process.argv[2];
if (!url) {
    process.stderr.write("usage: node echo-peer.mjs URL\n");
    process.exit(2);
}

adapt();
const cometd = new CometD("echo-peer");
cometd.unregisterTransport("websocket");
cometd.configure({url, logLevel: "warn"});

let readyPrinted = false;
// Subscribe on every successful handshake (CometD clears subscriptions when it re-handshakes).
cometd.addListener("/meta/handshake", reply => {
    if (!reply.successful) {
        process.stderr.write(`echo-peer: handshake failed: ${JSON.stringify(reply)}\n`);
        return;
    }
    cometd.subscribe("/echo/in", message => {
        cometd.publish("/echo/out", message.data, ack => {
            if (!ack.successful) process.stderr.write(`echo-peer: publish failed: ${JSON.stringify(ack)}\n`);
        });
    }, subscribeReply => {
        if (!subscribeReply.successful) {
            process.stderr.write(`echo-peer: subscribe failed: ${JSON.stringify(subscribeReply)}\n`);
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
    process.stderr.write(`echo-peer: stopping (${reason})\n`);
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
