import type { Message } from './types.js';

/** A failure reported by the server (`successful: false`) or a missing reply. */
export class BayeuxError extends Error {
  /** The numeric code of the Bayeux error string (`402::session_unknown` → 402), 0 when absent. */
  readonly code: number;
  /** The server's reply, when there was one. */
  readonly reply?: Message;

  constructor(reply?: Message, message?: string) {
    super(message ?? reply?.error ?? 'request failed');
    this.name = 'BayeuxError';
    this.code = parseInt(reply?.error ?? '', 10) || 0;
    this.reply = reply;
  }
}
