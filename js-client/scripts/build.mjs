// Build: tsc (ESM + .d.ts into dist/), then esbuild's single-file browser bundle (global `Halley`).
// Prints the bundle's minified+gzipped size and fails when it is over the budget.
import {execFileSync} from "node:child_process";
import {readFileSync, rmSync} from "node:fs";
import {createRequire} from "node:module";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {gzipSync} from "node:zlib";
import {build} from "esbuild";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BUDGET = 6 * 1024; // bytes, minified + gzipped
const BUNDLE = path.join(ROOT, "dist", "halley-client.min.js");

rmSync(path.join(ROOT, "dist"), {recursive: true, force: true});
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
try {
    execFileSync(process.execPath, [tsc, "-p", path.join(ROOT, "tsconfig.json")], {stdio: "inherit"});
} catch {
    console.error("build: tsc failed");
    process.exit(1);
}

await build({
    entryPoints: [path.join(ROOT, "src", "index.ts")],
    outfile: BUNDLE,
    bundle: true,
    minify: true,
    format: "iife",
    globalName: "Halley",
    target: "es2019",
    legalComments: "none",
});

const raw = readFileSync(BUNDLE);
const gz = gzipSync(raw, {level: 9}).length;
console.log(`browser bundle ${path.relative(ROOT, BUNDLE)}: ${raw.length} B minified, ${gz} B min+gzip (budget ${BUDGET} B)`);
if (gz > BUDGET) {
    console.error(`build: bundle is ${gz - BUDGET} B over the ${BUDGET} B budget`);
    process.exit(1);
}
