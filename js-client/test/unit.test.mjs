// Pure functions: wildcard matching (BAYEUX.md 1.5) and error parsing; the browser build's size budget.
import assert from "node:assert/strict";
import {readFileSync} from "node:fs";
import {test} from "node:test";
import {gzipSync} from "node:zlib";
import {BayeuxError, matches, patternsFor} from "../dist/index.js";

test("patternsFor lists the exact name, parent /* and every ancestor /**", () => {
    assert.deepEqual(patternsFor("/a/b/c"), ["/a/b/c", "/a/b/*", "/a/b/**", "/a/**", "/**"]);
    assert.deepEqual(patternsFor("/foo"), ["/foo", "/*", "/**"]);
});

test("matches follows the table of BAYEUX.md 1.5", () => {
    const yes = [["/foo/*", "/foo/bar"], ["/foo/**", "/foo/bar/baz"], ["/*", "/foo"], ["/**", "/a/b/c"], ["/foo/bar", "/foo/bar"]];
    const no = [["/foo/*", "/foo"], ["/foo/*", "/foobar"], ["/foo/*", "/foo/bar/baz"], ["/foo/**", "/foo"],
        ["/foo/**", "/foobar/baz"], ["/*", "/foo/bar"], ["/foo/bar", "/foo/bar/baz"], ["/foo/ba*", "/foo/bar"]];
    for (const [p, c] of yes) assert.ok(matches(p, c), `${p} matches ${c}`);
    for (const [p, c] of no) assert.ok(!matches(p, c), `${p} does not match ${c}`);
});

test("BayeuxError exposes the numeric code and the reply", () => {
    const reply = {channel: "/meta/subscribe", successful: false, error: "403:denied_by_security_policy:create_denied"};
    const e = new BayeuxError(reply);
    assert.equal(e.code, 403);
    assert.equal(e.reply, reply);
    assert.equal(e.message, reply.error);
    assert.equal(new BayeuxError(undefined, "no reply").code, 0);
});

test("the browser build stays within its budget: 6 KiB minified and gzipped", () => {
    const bundle = readFileSync(new URL("../dist/halley-client.min.js", import.meta.url));
    const size = gzipSync(bundle, {level: 9}).length;
    assert.ok(size <= 6 * 1024, `${size} B min+gzip`);
});
