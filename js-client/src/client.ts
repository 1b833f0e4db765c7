import { patternsFor } from './channel.js';
import { BayeuxError } from './error.js';
import { callbackPolling, isReply, longPolling, webSocket, type Deliver, type Transport } from './transport.js';
import type { Advice, ClientEvent, ClientOptions, Listener, Message, State, Subscription } from './types.js';

interface Entry {
  m: Message;
  ok: (reply: Message) => void;
  ko: (err: Error) => void;
  retried?: boolean;
}

interface Sub {
  listeners: Set<Listener>;
  ready: Promise<void>;
  ok: () => void;
  ko: (err: Error) => void;
}

const noop = () => {};
const isMeta = (channel: string) => channel.startsWith('/meta/');
const FACTORIES: Record<string, (url: string, o: ClientOptions, deliver: Deliver) => Transport | undefined> = {
  websocket: webSocket,
  'long-polling': longPolling,
  'callback-polling': callbackPolling,
};

/** A Bayeux client: handshake and connect loop, subscriptions, publishes, batching and reconnection. */
export class Client {
  /** Current connection state. */
  state: State = 'disconnected';
  /** Session id from the last successful handshake; undefined while there is none. */
  clientId?: string;
  /** The transport in use (after a handshake), e.g. `long-polling`. */
  transport?: Transport;

  private o: ClientOptions;
  private transports: Transport[];
  private advice: Advice = {};
  private ids = 0;
  private epoch = 0;
  private failures = 0;
  private started = false;
  private lostSince = 0;
  private ack?: number;
  private outbox: Entry[] = [];
  private sending = false;
  private scheduled = false;
  private subs = new Map<string, Sub>();
  private events = new Map<string, Set<(detail?: any) => void>>();
  private poller?: AbortController;
  private timer?: ReturnType<typeof setTimeout>;
  private wake = noop;
  private connected = deferred<void>();

  /** Creates a client for the Bayeux endpoint `url`; nothing is sent before `connect()`, `subscribe()` or `publish()`. */
  constructor(readonly url: string, options: ClientOptions = {}) {
    this.o = { ack: true, maxNetworkDelay: 10000, backoff: 1000, maxBackoff: 30000, ...options };
    this.transports = (this.o.transports ?? ['websocket', 'long-polling', 'callback-polling'])
      .map(name => FACTORIES[name]?.(url, this.o, this.receive))
      .filter((t): t is Transport => !!t);
    if (!this.transports.length) throw new Error('no usable transport');
  }

  /** Adds an event listener; returns a function that removes it. */
  on(event: ClientEvent, listener: (detail?: any) => void): () => void {
    const set = this.events.get(event) ?? new Set();
    this.events.set(event, set.add(listener));
    return () => set.delete(listener);
  }

  /** Starts the session if needed; resolves once connected, rejects if the client gives up first. */
  connect(): Promise<void> {
    if (!this.started) {
      this.started = true;
      this.connected = deferred();
      this.setState('connecting');
      this.handshake(0);
    }
    return this.connected.promise;
  }

  /** Listens on a channel or a wildcard pattern (`/a/*`, `/a/**`). */
  subscribe(channel: string, listener: Listener): Subscription {
    let sub = this.subs.get(channel);
    if (!sub) {
      const d = deferred<void>();
      d.promise.catch(noop);
      this.subs.set(channel, (sub = { listeners: new Set(), ready: d.promise, ok: d.resolve, ko: d.reject }));
      if (this.clientId) this.sendSubscribe(channel, sub);
      else this.connect().catch(noop);
    }
    const s = sub;
    s.listeners.add(listener);
    return {
      channel,
      ready: s.ready,
      unsubscribe: async () => {
        if (!s.listeners.delete(listener) || s.listeners.size || this.subs.get(channel) != s) return;
        this.subs.delete(channel);
        if (this.clientId) await this.enqueue({ channel: '/meta/unsubscribe', subscription: channel }).catch(noop);
      },
    };
  }

  /** Publishes `data` on `channel`; resolves with the server's acknowledgement, rejects with a BayeuxError on refusal. */
  publish(channel: string, data: unknown, ext?: Record<string, unknown>): Promise<Message> {
    this.connect().catch(noop);
    return this.enqueue(ext ? { channel, data, ext } : { channel, data });
  }

  /** Ends the session: queued messages and a /meta/disconnect are sent, the connect loop stops. */
  async disconnect(): Promise<void> {
    const { clientId, transport } = this;
    const batch = this.outbox.splice(0);
    // The socket stays open for the /meta/disconnect.
    this.stop(undefined, true);
    this.subs.forEach(s => s.ko(new Error('disconnected')));
    this.subs.clear();
    if (clientId && transport) {
      batch.push({ m: { id: this.nextId(), channel: '/meta/disconnect' }, ok: noop, ko: noop });
      await this.send(batch, clientId, transport);
      transport.close?.();
    } else batch.forEach(e => e.ko(new Error('disconnected')));
  }

  private nextId() {
    return String(++this.ids);
  }

  private emit(event: ClientEvent, detail?: unknown) {
    this.events.get(event)?.forEach(l => l(detail));
  }

  private setState(state: State, detail?: unknown) {
    if (state != this.state) this.emit((this.state = state), detail);
  }

  /** Terminal stop: no more handshakes or connects until `connect()` is called again. */
  private stop(err?: Error, keep?: boolean) {
    if (!keep) this.transports.forEach(t => t.close?.());
    this.epoch++;
    this.started = false;
    this.clientId = undefined;
    this.poller?.abort();
    clearTimeout(this.timer);
    this.wake();
    this.outbox.splice(0).forEach(e => e.ko(err ?? new Error('disconnected')));
    this.connected.reject(err ?? new Error('disconnected'));
    this.setState('disconnected', err);
  }

  /** Waits `ms`, or less if the client is stopped meanwhile. */
  private sleep(ms: number) {
    return new Promise<void>(resolve => {
      this.wake = resolve;
      this.timer = setTimeout(resolve, ms);
    });
  }

  /** Next back-off delay: exponential, capped, with jitter (between half and all of it). */
  private backoff() {
    const d = Math.min(this.o.maxBackoff!, this.o.backoff! * 2 ** this.failures++);
    return d / 2 + (Math.random() * d) / 2;
  }

  private failed(err: Error) {
    this.emit('error', err);
    if (this.state == 'connected') this.setState('reconnecting', err);
  }

  /** One round trip: deliveries in the response are dispatched, replies are returned by id. */
  private async exchange(t: Transport, messages: Message[], timeout: number, signal?: AbortSignal) {
    const replies = new Map<string, Message>();
    for (const m of await t.send(messages, timeout, signal)) {
      if (isReply(m)) replies.set(String(m.id), m);
      else this.receive(m);
    }
    return replies;
  }

  /** A message that is not a reply: a delivery, or the server ending the session. */
  private receive = (m: Message) => (m.channel == '/meta/disconnect' && m.id == null ? this.stop() : this.dispatch(m));

  private dispatch(m: Message) {
    for (const pattern of patternsFor(m.channel)) {
      this.subs.get(pattern)?.listeners.forEach(l => {
        try {
          l(m.data, m);
        } catch (e) {
          setTimeout(() => {
            throw e;
          });
        }
      });
    }
  }

  private async handshake(delay: number): Promise<void> {
    const epoch = ++this.epoch;
    this.clientId = undefined;
    this.poller?.abort();
    // A new session gets a new socket: the old session may live on in the server and push to the old one.
    this.transport?.close?.();
    if (delay) await this.sleep(delay);
    if (epoch != this.epoch) return;
    const ts = this.transports;
    // Sticky WebSocket: once it has worked, failures retry it rather than rotating to the next transport.
    const t = ts.find(t => t.ok) ?? ts[this.failures % ts.length];
    const i = ts.indexOf(t);
    const o = this.o;
    const m: Message = {
      id: this.nextId(),
      channel: '/meta/handshake',
      version: '1.0',
      minimumVersion: '1.0',
      supportedConnectionTypes: ts.map(t => t.name),
    };
    let reply: Message | undefined;
    try {
      const ext = typeof o.ext == 'function' ? await o.ext() : o.ext;
      if (ext || o.ack) m.ext = o.ack ? { ...ext, ack: true } : ext;
      reply = (await this.exchange(t, [m], o.maxNetworkDelay!)).get(m.id!);
      if (!reply?.successful) throw new BayeuxError(reply);
    } catch (e) {
      if (epoch != this.epoch) return;
      this.failed(e as Error);
      // A refusal's advice decides; a network failure retries (on the next transport).
      if (reply?.advice?.reconnect == 'none') return this.stop(e as Error);
      // A WebSocket that never carried a frame (upgrade refused, or a proxy that passes nothing): fall back now, for good.
      if (t.ok === false && ts.length > 1) {
        t.close!();
        this.transports = ts.filter(x => x != t);
        return this.handshake(0);
      }
      return this.handshake(this.backoff());
    }
    if (epoch != this.epoch) return;
    // Best transport the server supports, not counting those that just failed to handshake (e.g. fetch without CORS).
    const common = reply.supportedConnectionTypes as string[] | undefined;
    const transport = [...ts.slice(i), ...ts.slice(0, i)].find(t => !common || common.includes(t.name));
    if (!transport) return this.stop(new BayeuxError(reply, 'no common transport'));
    if (transport != t && t.close) {
      // The server does not offer WebSocket: forget it, as after a failed upgrade.
      t.close();
      this.transports = ts.filter(x => x != t);
    }
    this.transport = transport;
    this.advice = { reconnect: 'retry', interval: 0, timeout: 60000, ...reply.advice };
    this.clientId = reply.clientId as string;
    this.lostSince = 0;
    const ack = reply.ext?.ack;
    this.ack = o.ack && (ack === true || ack?.enabled) ? 0 : undefined;
    this.emit('handshake', reply);
    // Restore subscriptions ahead of anything queued meanwhile, then start polling once they are in place.
    const restored = [...this.subs].map(([channel, sub]) => this.sendSubscribe(channel, sub, true));
    this.flush();
    await Promise.all(restored);
    this.poll(epoch);
  }

  private sendSubscribe(channel: string, sub: Sub, first?: boolean) {
    return this.enqueue({ channel: '/meta/subscribe', subscription: channel }, first).then(sub.ok, (e: Error) => {
      if (this.subs.get(channel) == sub) this.subs.delete(channel);
      sub.ko(e);
    });
  }

  private async poll(epoch: number): Promise<void> {
    let first = true;
    while (epoch == this.epoch) {
      const t = this.transport!;
      const a = this.advice;
      const m: Message = { id: this.nextId(), channel: '/meta/connect', clientId: this.clientId, connectionType: t.name };
      if (first) m.advice = { timeout: 0 };
      if (this.ack != null) m.ext = { ack: this.ack };
      const poller = (this.poller = new AbortController());
      const sentAt = Date.now();
      let reply: Message | undefined;
      try {
        reply = (await this.exchange(t, [m], (first ? 0 : a.timeout!) + this.o.maxNetworkDelay!, poller.signal)).get(m.id!);
        if (!reply) throw new BayeuxError(undefined, 'no reply');
      } catch (e) {
        if (epoch != this.epoch) return;
        this.failed(e as Error);
        // The server drops a session maxInterval after the reply to its last connect: past that, handshake.
        const delay = this.backoff();
        this.lostSince ||= sentAt;
        if (a.maxInterval && Date.now() + delay - this.lostSince > a.timeout! + a.interval! + a.maxInterval) {
          return this.handshake(delay);
        }
        await this.sleep(delay);
        continue;
      }
      if (epoch != this.epoch) return;
      Object.assign(a, reply.advice);
      if (reply.successful) {
        first = false;
        this.failures = 0;
        this.lostSince = 0;
        if (this.ack != null && typeof reply.ext?.ack == 'number') this.ack = reply.ext.ack;
        this.setState('connected');
        this.connected.resolve();
      } else this.failed(new BayeuxError(reply));
      if (a.reconnect == 'none') return this.stop(reply.successful ? undefined : new BayeuxError(reply));
      // A 402 (session unknown, e.g. the server restarted) needs a new session, advice or not.
      if (a.reconnect == 'handshake' || parseInt(reply.error!) == 402) return this.handshake(a.interval!);
      await this.sleep(a.interval! + (reply.successful ? 0 : this.backoff()));
    }
  }

  /** Queues a message for the next batch; all calls made in the same tick share one request. */
  private enqueue(m: Message, first?: boolean): Promise<Message> {
    m.id = this.nextId();
    return new Promise((ok, ko) => {
      this.outbox[first ? 'unshift' : 'push']({ m, ok, ko });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => this.flush());
      }
    });
  }

  /** Sends the queued messages, one request at a time so that the server sees them in order. */
  private async flush() {
    this.scheduled = false;
    if (this.sending || !this.clientId || !this.outbox.length) return;
    this.sending = true;
    await this.send(this.outbox.splice(0), this.clientId, this.transport!);
    this.sending = false;
    this.flush();
  }

  private async send(batch: Entry[], clientId: string, t: Transport) {
    for (const e of batch) e.m.clientId = clientId;
    let replies: Map<string, Message>;
    try {
      replies = await this.exchange(t, batch.map(e => e.m), this.o.maxNetworkDelay!);
    } catch (err) {
      // Whether a lost subscribe took effect is unknown: a new session restores all subscriptions for certain.
      const subscribing = batch.some(e => e.m.channel == '/meta/subscribe');
      if (subscribing && this.started && this.clientId == clientId) {
        this.failed(err as Error);
        this.handshake(this.backoff());
      }
      return batch.forEach(e => (e.m.channel != '/meta/subscribe' || !this.started) && e.ko(err as Error));
    }
    for (const e of batch) {
      const r = replies.get(e.m.id!);
      if (r?.successful) e.ok(r);
      else if (r && parseInt(r.error!) == 402 && this.started) {
        // The session is gone: handshake again. Subscriptions come back by themselves; a publish is sent once more.
        if (this.clientId == clientId) {
          this.failed(new BayeuxError(r));
          this.handshake(0);
        }
        if (!isMeta(e.m.channel) && !e.retried) {
          e.retried = true;
          this.outbox.push(e);
        } else if (e.m.channel != '/meta/subscribe') e.ko(new BayeuxError(r));
      } else e.ko(new BayeuxError(r, r ? undefined : 'no reply'));
    }
  }
}

function deferred<T>() {
  let resolve!: (value: T) => void, reject!: (err: Error) => void;
  const promise = new Promise<T>((a, b) => ((resolve = a), (reject = b)));
  promise.catch(noop);
  return { promise, resolve, reject };
}
