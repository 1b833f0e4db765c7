export { Client } from './client.js';
export { BayeuxError } from './error.js';
export { matches, patternsFor } from './channel.js';
export { callbackPolling, longPolling, webSocket, type Transport } from './transport.js';
export type { Advice, ClientEvent, ClientOptions, Listener, Message, State, Subscription } from './types.js';
