// Wire helpers: JSONP body parsing and a raw long-polling Bayeux publisher (Node fetch, no browser).

// `/**/cb([...]);` (prefix and trailing semicolon optional) -> {callback, messages}; null if not JSONP.
export function parseJsonp(body) {
    const m = /^\s*(?:\/\*\*\/)?\s*([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\(([\s\S]*)\)\s*;?\s*$/.exec(body ?? "");
    if (!m) return null;
    return {callback: m[1], messages: JSON.parse(m[2])};
}

// The Bayeux messages a browser request carried: JSON body, form body, or `message` query parameters.
export function requestMessages(entry) {
    const out = [];
    const url = new URL(entry.url);
    for (const v of url.searchParams.getAll("message")) out.push(...[].concat(JSON.parse(v)));
    const body = entry.postData;
    if (body) {
        if (/^message=/.test(body)) {
            for (const v of new URLSearchParams(body).getAll("message")) out.push(...[].concat(JSON.parse(v)));
        } else {
            out.push(...[].concat(JSON.parse(body)));
        }
    }
    return out;
}

async function post(url, messages) {
    const res = await fetch(url, {
        method: "POST",
        headers: {"content-type": "application/json"},
        body: JSON.stringify(messages),
        signal: AbortSignal.timeout(10000),
    });
    if (res.status !== 200) throw new Error(`POST ${url} -> HTTP ${res.status}`);
    return res.json();
}

// Handshakes a raw long-polling session and publishes `data` on `channel`; returns the publish reply.
export async function rawPublish(baseUrl, channel, data) {
    const [hs] = await post(baseUrl, [{
        id: "1", channel: "/meta/handshake", version: "1.0", supportedConnectionTypes: ["long-polling"],
    }]);
    if (!hs.successful) throw new Error("raw handshake failed: " + JSON.stringify(hs));
    const replies = await post(baseUrl, [{id: "2", channel, clientId: hs.clientId, data}]);
    const ack = replies.find(r => r.id === "2");
    await post(baseUrl, [{id: "3", channel: "/meta/disconnect", clientId: hs.clientId}]).catch(() => {});
    return ack;
}
