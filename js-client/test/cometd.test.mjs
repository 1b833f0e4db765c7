// The core suite against cometd-nodejs-server 1.2.1, plus the ack-extension suite: that server implements it
// (cometd-nodejs-server/ack-extension, AcknowledgedMessagesExtension), Faye does not.
import {describe} from "node:test";
import {ackSuite} from "./lib/ack.mjs";
import {coreSuite} from "./lib/core.mjs";
import {startCometd} from "./lib/servers.mjs";

describe("cometd", () => {
    coreSuite(startCometd);

    ackSuite(startCometd, {required: true});
});
