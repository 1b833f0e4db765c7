// The core suite against faye.
import {describe} from "node:test";
import {coreSuite} from "./lib/core.mjs";
import {startFaye} from "./lib/servers.mjs";

describe("faye", () => coreSuite(startFaye));
