// Starts a cluster (./cluster.mjs) for a test written in another language, e.g. the Python fixture
// `start_cluster` in ../python/conftest.py:
//   node launch.mjs NAME [BROKER_FLAG...]
// prints one line `ready {"url", "origin", "nodeUrls", "prefix", "redisPort"}` (JSON) once everything listens, and
// stops everything (by PID, bounded) when its stdin closes; on SIGTERM/SIGINT, cluster.mjs's hooks SIGKILL it all.
import {startCluster} from "./cluster.mjs";

const [name = "launched", ...args] = process.argv.slice(2);
const cluster = await startCluster({name, args});
let stopping = false;

async function shutdown() {
    if (stopping) return;
    stopping = true;
    // Bounded: whatever is still running after 3.5 s is SIGKILLed by the exit hooks of cluster.mjs and broker.mjs.
    await Promise.race([cluster.stop(), new Promise(resolve => setTimeout(resolve, 3500))]);
    process.exit(0);
}

process.stdin.on("end", shutdown);
process.stdin.on("close", shutdown);
process.stdin.resume();
process.stdout.write(`ready ${JSON.stringify({
    url: cluster.url,
    origin: cluster.origin,
    nodeUrls: cluster.nodes.map((_, i) => cluster.nodeUrl(i)),
    prefix: cluster.prefix,
    redisPort: cluster.redis?.port ?? null,
})}\n`);
