import type { ClientOptions, Message } from './types.js';

/** A way to carry one batch of messages to the server and bring back the response array. */
export interface Transport {
  /** The Bayeux connection type, e.g. `long-polling`. */
  readonly name: string;
  /** Sends `messages`; rejects on network failure, a non-200 status, an unparsable body or after `timeout` ms. */
  send(messages: Message[], timeout: number, signal?: AbortSignal): Promise<Message[]>;
  /** Closes a transport's connection, if it keeps one; a later `send` opens a new one. */
  close?(): void;
  /** WebSocket only: whether a frame ever arrived; until then a failure means "unsupported here" (fall back). */
  ok?: boolean;
}

/** Receives the messages a transport gets outside of replies (WebSocket deliveries). */
export type Deliver = (m: Message) => void;

/** Which messages answer a request (a reply), rather than deliver data to listeners. */
export const isReply = (m: Message) => m.id != null && (m.channel.startsWith('/meta/') || !('data' in m));

function asReplies(body: unknown): Message[] {
  if (!Array.isArray(body)) throw new Error('bad response');
  return body;
}

/** Long-polling: a JSON POST per batch over `fetch`. In Node it keeps its own cookies (BAYEUX_BROWSER). */
export function longPolling(url: string, o: ClientOptions): Transport | undefined {
  const fetchFn = o.fetch ?? globalThis.fetch;
  if (!fetchFn) return;
  const jar = typeof document == 'undefined' ? new Map<string, string>() : undefined;
  return {
    name: 'long-polling',
    async send(messages, timeout, signal) {
      const ac = new AbortController();
      const abort = () => ac.abort();
      const timer = setTimeout(abort, timeout);
      signal?.addEventListener('abort', abort);
      try {
        const headers: Record<string, string> = { 'Content-Type': 'application/json', ...o.headers };
        if (jar?.size) headers.Cookie = [...jar].map(c => c.join('=')).join('; ');
        const res = await fetchFn(url, {
          method: 'POST', headers, body: JSON.stringify(messages), credentials: o.credentials ?? 'include', signal: ac.signal,
        });
        for (const c of (jar && res.headers.getSetCookie?.()) || []) {
          const pair = c.split(';')[0], i = pair.indexOf('=');
          if (i > 0) jar!.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
        }
        if (res.status != 200) throw new Error('HTTP ' + res.status);
        return asReplies(await res.json());
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener('abort', abort);
      }
    },
  };
}

let jsonpSeq = 0;

/** Callback-polling (JSONP): one `<script>` GET per batch, split to keep URLs under 2000 characters. Browsers only. */
export function callbackPolling(url: string): Transport | undefined {
  const maxUrl = 2000;
  if (typeof document == 'undefined') return;
  const w = window as any;
  const one = (messages: Message[], timeout: number, signal?: AbortSignal) =>
    new Promise<Message[]>((resolve, reject) => {
      const name = '_halley_jsonp_' + jsonpSeq++;
      const script = document.createElement('script');
      let settled = false;
      const done = (err?: Error, replies?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', fail);
        script.remove();
        // A script still on its way may call the callback later: leave a no-op behind in that case.
        if (err) w[name] = () => {}; else delete w[name];
        try {
          err ? reject(err) : resolve(asReplies(replies));
        } catch (e) {
          reject(e);
        }
      };
      const fail = () => done(new Error('callback-polling failed'));
      const timer = setTimeout(fail, timeout);
      signal?.addEventListener('abort', fail);
      w[name] = (replies: unknown) => done(undefined, replies);
      script.onerror = script.onload = fail; // onload fires after the script ran, i.e. after the callback
      script.src = url + (url.includes('?') ? '&' : '?') + 'jsonp=' + name + '&message=' +
        encodeURIComponent(JSON.stringify(messages));
      document.head.appendChild(script);
    });
  return {
    name: 'callback-polling',
    async send(messages, timeout, signal) {
      const chunks: Message[][] = [[]];
      let size = url.length + 60;
      for (const m of messages) {
        const n = encodeURIComponent(JSON.stringify(m)).length + 3;
        if (chunks[0].length && size + n > maxUrl) chunks.unshift([]), size = url.length + 60;
        chunks[0].push(m);
        size += n;
      }
      const replies: Message[] = [];
      for (const chunk of chunks.reverse()) replies.push(...(await one(chunk, timeout, signal)));
      return replies;
    },
  };
}

/**
 * WebSocket, as CometD does it: one socket at the Bayeux URL (http -> ws), one JSON array per text frame. Replies
 * are matched to requests by `id`; everything else (deliveries pushed while a connect is held) goes to `deliver`.
 * A request that outlives its timeout closes the socket (the watchdog); the next `send` opens a new one.
 */
export function webSocket(url: string, o: ClientOptions, deliver: Deliver): Transport | undefined {
  const WS: typeof WebSocket | undefined = o.WebSocket ?? globalThis.WebSocket;
  if (!WS) return;
  let socket: Promise<WebSocket> | undefined;
  let current: WebSocket | undefined;
  const pending = new Map<string, (m: Message) => void>();
  // Every request in flight fails when its socket goes away.
  const fails = new Set<(e: Error) => void>();
  const lost = (ws: WebSocket) => {
    if (ws != current) return;
    current = socket = undefined;
    ws.onclose = ws.onerror = ws.onmessage = null;
    ws.close(1000);
    fails.forEach(f => f(new Error('websocket closed')));
  };
  const open = () =>
    (socket ??= new Promise((resolve, reject) => {
      const ws = (current = new WS(url.replace(/^http/, 'ws')));
      ws.onopen = () => resolve(ws);
      ws.onclose = ws.onerror = () => (reject(new Error('websocket failed')), lost(ws));
      ws.onmessage = e => {
        let ms: Message[];
        try {
          ms = asReplies(JSON.parse(e.data));
        } catch {
          return lost(ws);
        }
        t.ok = true;
        for (const m of ms) (isReply(m) && pending.get(String(m.id)) || deliver)(m);
      };
    }));
  const t: Transport = {
    name: 'websocket',
    ok: false,
    close: () => current && lost(current),
    send: (messages, timeout, signal) =>
      new Promise((resolve, reject) => {
        const replies: Message[] = [];
        let left = messages.length;
        const done = (err?: Error) => {
          if (!fails.delete(done)) return;
          clearTimeout(timer);
          signal?.removeEventListener('abort', abort);
          messages.forEach(m => pending.delete(m.id!));
          err ? reject(err) : resolve(replies);
        };
        const abort = () => done(new Error('aborted'));
        const timer = setTimeout(() => (done(new Error('websocket timeout')), t.close!()), timeout);
        fails.add(done);
        signal?.addEventListener('abort', abort);
        for (const m of messages) pending.set(m.id!, r => (replies.push(r), pending.delete(m.id!), --left || done()));
        open().then(ws => fails.has(done) && ws.send(JSON.stringify(messages)), done);
      }),
  };
  return t;
}
