/** One Bayeux message (request, reply or delivery). Unknown fields are kept as they are. */
export interface Message {
  channel: string;
  id?: string;
  clientId?: string;
  data?: unknown;
  successful?: boolean;
  error?: string;
  subscription?: string | string[];
  advice?: Advice;
  ext?: Record<string, any>;
  [field: string]: unknown;
}

/** Reconnect policy sent by the server (section 3 of the Bayeux spec). */
export interface Advice {
  reconnect?: 'retry' | 'handshake' | 'none';
  interval?: number;
  timeout?: number;
  maxInterval?: number;
  [field: string]: unknown;
}

/** Connection states; each is also the name of the event fired on entering it. */
export type State = 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

/** Events: the four states, `handshake` (the successful handshake reply) and `error` (a failed exchange). */
export type ClientEvent = State | 'handshake' | 'error';

/** Receives the `data` of a delivery and the whole message. */
export type Listener = (data: any, message: Message) => void;

/** Returned by `subscribe()`. */
export interface Subscription {
  /** The channel or pattern subscribed to. */
  readonly channel: string;
  /** Settles on the server's reply to the (first) subscribe of this channel. */
  readonly ready: Promise<void>;
  /** Removes this listener; the server is told when it was the channel's last one. */
  unsubscribe(): Promise<void>;
}

/** Options of `new Client(url, options)`. */
export interface ClientOptions {
  /** Transport preference, best first. Default `['websocket', 'long-polling', 'callback-polling']`. */
  transports?: string[];
  /** `fetch` credentials mode for long-polling. Default `'include'` (as CometD, for the BAYEUX_BROWSER cookie). */
  credentials?: 'omit' | 'same-origin' | 'include';
  /** Extra HTTP headers for long-polling requests. */
  headers?: Record<string, string>;
  /** `ext` of every handshake (auth tokens); a function is called before each handshake. */
  ext?: Record<string, unknown> | (() => Record<string, unknown> | Promise<Record<string, unknown>>);
  /** Use the ack extension when the server offers it. Default true. */
  ack?: boolean;
  /** Milliseconds a reply may take beyond the server's hold time. Default 10000. */
  maxNetworkDelay?: number;
  /** First back-off delay after a network failure, ms (doubled each time, with jitter). Default 1000. */
  backoff?: number;
  /** Upper bound of the back-off delay, ms. Default 30000. */
  maxBackoff?: number;
  /** WebSocket constructor for environments without a global one (e.g. Node 20: the `ws` package). */
  WebSocket?: typeof WebSocket;
  /** `fetch` implementation to use. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
}
