// A fault-injecting HTTP/1.1-aware TCP proxy (node:net, 127.0.0.1 only) for reliability tests.
//
// startFaultProxy({targetPort, onRequest?, onResponse?, onFrame?}) -> {port, urlFor(brokerUrl), counters, exchanges,
//                                                                    frames, stop()}
//
// Every client connection gets its own upstream connection to the broker. The proxy parses both byte
// streams into HTTP/1.1 messages (Content-Length or chunked bodies; no pipelining is expected, but
// requests and responses are paired FIFO per connection anyway) and forwards each message only once it
// is complete, after asking the test what to do with it:
//   onRequest(info)  -> "pass" | "drop"   "drop": the request never reaches the broker; both sockets are
//                                         destroyed (the client sees a connection error).
//   onResponse(info) -> "pass" | "cut"    "cut": the broker has written the whole response, but the client
//                                         gets only its head and part of its body, then the connection
//                                         is destroyed (the response is lost in flight).
// info = {connection, index, connectIndex, messages, isConnect, response?: {status, messages, deliveries}}
//   messages: the Bayeux messages of the request (parsed JSON body, [] if none);
//   deliveries: messages of the response that are deliveries (carry `data`, no `successful`);
//   connectIndex: 1-based count of /meta/connect requests (or responses) seen so far by the proxy.
//
// WebSocket: once an upgrade request is answered 101, the connection carries WebSocket frames (RFC 6455; client
// frames masked, no fragmentation expected: CometD's `ws` and Faye send each message whole). Each frame is parsed
// whole before it is forwarded, after asking the test:
//   onFrame(info) -> "pass" | "cut"       "cut" on a server frame: the client gets half of it, then both sockets
//                                         are destroyed (the frame is lost in flight); on a client frame: the
//                                         frame never reaches the broker and both sockets are destroyed.
// info = {connection, direction: "up" | "down", opcode, messages (the Bayeux messages of a text frame, else []),
//         deliveries (down only)}; frames: one record {connection, direction, opcode, messages, cut, at} per frame.
//
// counters: requests, responses, connectRequests, connectResponses, droppedRequests, droppedConnects,
//           cutResponses, cutConnectResponses, cutDeliveries (deliveries inside cut responses).
// exchanges: one record per request {connection, index, connectIndex, messages, isConnect, dropped, status,
//            response (parsed reply messages), cut, requestAt, responseAt, responseSeq}.
import net from "node:net";

const CRLF2 = Buffer.from("\r\n\r\n");

// Incremental HTTP/1.1 message parser. push(chunk) returns the messages completed by that chunk:
// {head: string, headers: {lower-case name: value}, body: Buffer, raw: Buffer, headLength}.
class HttpParser {
    constructor(kind) {
        this.kind = kind; // "request" | "response"
        this.buffer = Buffer.alloc(0);
    }

    push(chunk) {
        this.buffer = Buffer.concat([this.buffer, chunk]);
        const out = [];
        for (;;) {
            const message = this.#parseOne();
            if (!message) break;
            out.push(message);
        }
        return out;
    }

    #parseOne() {
        const headEnd = this.buffer.indexOf(CRLF2);
        if (headEnd < 0) return null;
        const head = this.buffer.subarray(0, headEnd).toString("latin1");
        const lines = head.split("\r\n");
        const headers = {};
        for (const line of lines.slice(1)) {
            const colon = line.indexOf(":");
            if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        const bodyStart = headEnd + 4;
        let body;
        let end;
        if (/chunked/i.test(headers["transfer-encoding"] || "")) {
            const parts = [];
            let pos = bodyStart;
            for (;;) {
                const lineEnd = this.buffer.indexOf("\r\n", pos);
                if (lineEnd < 0) return null;
                const size = parseInt(this.buffer.subarray(pos, lineEnd).toString("latin1").split(";")[0], 16);
                if (Number.isNaN(size)) throw new Error(`faultproxy: bad chunk size in ${this.kind}`);
                if (size === 0) {
                    // `0\r\n` then optional trailer lines, then an empty line.
                    if (this.buffer.length < lineEnd + 4) return null;
                    if (this.buffer.subarray(lineEnd, lineEnd + 4).equals(CRLF2)) {
                        end = lineEnd + 4;
                    } else {
                        const trailerEnd = this.buffer.indexOf(CRLF2, lineEnd + 2);
                        if (trailerEnd < 0) return null;
                        end = trailerEnd + 4;
                    }
                    break;
                }
                const dataStart = lineEnd + 2;
                if (this.buffer.length < dataStart + size + 2) return null;
                parts.push(this.buffer.subarray(dataStart, dataStart + size));
                pos = dataStart + size + 2;
            }
            body = Buffer.concat(parts);
        } else {
            const length = Number(headers["content-length"] || 0);
            if (this.buffer.length < bodyStart + length) return null;
            body = this.buffer.subarray(bodyStart, bodyStart + length);
            end = bodyStart + length;
        }
        const raw = Buffer.from(this.buffer.subarray(0, end));
        this.buffer = this.buffer.subarray(end);
        return {head, headers, body: Buffer.from(body), raw, headLength: bodyStart};
    }
}

function bayeuxMessages(body) {
    if (!body || body.length === 0) return [];
    try {
        return [].concat(JSON.parse(body.toString("utf8")));
    } catch {
        return [];
    }
}

const isDelivery = m => m && typeof m === "object" && m.data !== undefined && m.successful === undefined;

// Incremental WebSocket frame parser: push(chunk) returns the frames completed by that chunk,
// {opcode, payload (unmasked), raw}.
class FrameParser {
    constructor() {
        this.buffer = Buffer.alloc(0);
    }

    push(chunk) {
        this.buffer = Buffer.concat([this.buffer, chunk]);
        const out = [];
        for (;;) {
            const b = this.buffer;
            if (b.length < 2) break;
            const opcode = b[0] & 0x0f;
            const masked = (b[1] & 0x80) !== 0;
            let length = b[1] & 0x7f;
            let pos = 2;
            if (length === 126) {
                if (b.length < 4) break;
                length = b.readUInt16BE(2);
                pos = 4;
            } else if (length === 127) {
                if (b.length < 10) break;
                length = Number(b.readBigUInt64BE(2));
                pos = 10;
            }
            const mask = masked ? b.subarray(pos, pos + 4) : null;
            if (masked) pos += 4;
            if (b.length < pos + length) break;
            const payload = Buffer.from(b.subarray(pos, pos + length));
            if (mask) for (let i = 0; i < payload.length; ++i) payload[i] ^= mask[i % 4];
            out.push({opcode, payload, raw: Buffer.from(b.subarray(0, pos + length))});
            this.buffer = b.subarray(pos + length);
        }
        return out;
    }
}

export function startFaultProxy({
    targetPort, targetHost = "127.0.0.1", onRequest = () => "pass", onResponse = () => "pass", onFrame = () => "pass",
}) {
    const counters = {
        connections: 0, requests: 0, responses: 0, connectRequests: 0, connectResponses: 0,
        droppedRequests: 0, droppedConnects: 0, cutResponses: 0, cutConnectResponses: 0, cutDeliveries: 0,
        upgrades: 0, framesUp: 0, framesDown: 0, cutFrames: 0,
    };
    const exchanges = [];
    const frames = [];
    const sockets = new Set();

    const server = net.createServer(client => {
        const connection = ++counters.connections;
        sockets.add(client);
        const upstream = net.connect({host: targetHost, port: targetPort});
        sockets.add(upstream);
        const requestParser = new HttpParser("request");
        const responseParser = new HttpParser("response");
        const pending = []; // exchanges forwarded upstream, awaiting their response
        let closed = false;
        // Set once a 101 passed: from then on both directions carry WebSocket frames.
        let upFrames = null;
        let downFrames = null;

        // Forwards the WebSocket frames completed by `chunk` in one direction, or cuts the connection.
        function relayFrames(parser, chunk, direction, to) {
            for (const f of parser.push(chunk)) {
                if (closed) return;
                const messages = f.opcode === 1 ? bayeuxMessages(f.payload) : [];
                const record = {connection, direction, opcode: f.opcode, messages, cut: false, at: Date.now()};
                frames.push(record);
                counters[direction === "up" ? "framesUp" : "framesDown"] += 1;
                const verdict = onFrame({connection, direction, opcode: f.opcode, messages,
                    deliveries: direction === "down" ? messages.filter(isDelivery) : []});
                if (verdict === "cut") {
                    record.cut = true;
                    counters.cutFrames += 1;
                    closed = true;
                    const kill = () => {
                        client.destroy();
                        upstream.destroy();
                    };
                    if (direction === "up") {
                        kill();
                        return;
                    }
                    const fallback = setTimeout(kill, 200);
                    client.write(f.raw.subarray(0, Math.floor(f.raw.length / 2)), () => {
                        clearTimeout(fallback);
                        kill();
                    });
                    return;
                }
                to.write(f.raw);
            }
        }

        function closeBoth() {
            if (closed) return;
            closed = true;
            client.destroy();
            upstream.destroy();
        }

        client.on("data", chunk => {
            if (closed) return;
            if (upFrames) {
                relayFrames(upFrames, chunk, "up", upstream);
                return;
            }
            let messages;
            try {
                messages = requestParser.push(chunk);
            } catch (x) {
                closeBoth();
                return;
            }
            for (const m of messages) {
                if (closed) return;
                const bayeux = bayeuxMessages(m.body);
                const isConnect = bayeux.some(b => b && b.channel === "/meta/connect");
                counters.requests += 1;
                if (isConnect) counters.connectRequests += 1;
                const exchange = {
                    connection, index: counters.requests, connectIndex: isConnect ? counters.connectRequests : null,
                    requestLine: m.head.split("\r\n")[0], messages: bayeux, isConnect,
                    dropped: false, status: null, response: null, cut: false,
                    requestAt: Date.now(), responseAt: null, responseSeq: null,
                };
                exchanges.push(exchange);
                const verdict = onRequest({connection, index: exchange.index, connectIndex: exchange.connectIndex,
                    messages: bayeux, isConnect});
                if (verdict === "drop") {
                    exchange.dropped = true;
                    counters.droppedRequests += 1;
                    if (isConnect) counters.droppedConnects += 1;
                    closeBoth();
                    return;
                }
                pending.push(exchange);
                upstream.write(m.raw);
            }
        });

        upstream.on("data", chunk => {
            if (closed) return;
            if (downFrames) {
                relayFrames(downFrames, chunk, "down", client);
                return;
            }
            let messages;
            try {
                messages = responseParser.push(chunk);
            } catch (x) {
                closeBoth();
                return;
            }
            for (const m of messages) {
                if (closed) return;
                const exchange = pending.shift() || {connection, messages: [], isConnect: false, orphan: true};
                const status = Number(m.head.split(" ")[1]);
                const replies = bayeuxMessages(m.body);
                const deliveries = replies.filter(isDelivery);
                exchange.status = status;
                exchange.response = replies;
                counters.responses += 1;
                exchange.responseAt = Date.now();
                exchange.responseSeq = counters.responses;
                let connectResponseIndex = null;
                if (exchange.isConnect) connectResponseIndex = ++counters.connectResponses;
                const verdict = onResponse({
                    connection, index: exchange.index, connectIndex: connectResponseIndex,
                    messages: exchange.messages, isConnect: exchange.isConnect,
                    response: {status, messages: replies, deliveries},
                });
                if (verdict === "cut") {
                    exchange.cut = true;
                    counters.cutResponses += 1;
                    if (exchange.isConnect) counters.cutConnectResponses += 1;
                    counters.cutDeliveries += deliveries.length;
                    // The head and half of the body leave, then the connection dies.
                    const partial = m.headLength + Math.floor((m.raw.length - m.headLength) / 2);
                    closed = true;
                    const kill = () => {
                        client.destroy();
                        upstream.destroy();
                    };
                    const fallback = setTimeout(kill, 200);
                    client.write(m.raw.subarray(0, partial), () => {
                        clearTimeout(fallback);
                        kill();
                    });
                    return;
                }
                client.write(m.raw);
                if (status === 101) {
                    counters.upgrades += 1;
                    exchange.upgraded = true;
                    upFrames = new FrameParser();
                    downFrames = new FrameParser();
                    // Bytes already read past the 101 (in either direction) are frames.
                    const early = [requestParser.buffer, responseParser.buffer];
                    requestParser.buffer = responseParser.buffer = Buffer.alloc(0);
                    if (early[0].length) relayFrames(upFrames, early[0], "up", upstream);
                    if (early[1].length) relayFrames(downFrames, early[1], "down", client);
                    return;
                }
            }
        });

        client.on("end", () => upstream.end());
        upstream.on("end", () => client.end());
        client.on("error", () => closeBoth());
        upstream.on("error", () => closeBoth());
        client.on("close", () => {
            sockets.delete(client);
            closeBoth();
        });
        upstream.on("close", () => {
            sockets.delete(upstream);
            closeBoth();
        });
    });

    return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const {port} = server.address();
            resolve({
                port,
                counters,
                exchanges,
                frames,
                // The broker URL with the proxy's port (same path).
                urlFor(brokerUrl) {
                    const u = new URL(brokerUrl);
                    u.port = String(port);
                    return u.href;
                },
                stop() {
                    return new Promise(done => {
                        for (const s of sockets) s.destroy();
                        server.close(() => done());
                    });
                },
            });
        });
    });
}
