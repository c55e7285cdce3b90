/**
 * Minimal, accurate typing of protomux 3.x as clonebox uses it: several protocol channels over one
 * Noise stream. A channel opens when both sides have created it (same protocol and id) and called
 * open(); the remote's handshake value arrives in onopen.
 */
declare module 'protomux' {
  import type NoiseSecretStream from '@hyperswarm/secret-stream';
  import type c from 'compact-encoding';

  namespace Protomux {
    interface Message<T> {
      readonly type: number;
      /** Queues one message; returns false when the stream wants the sender to wait for drain. */
      send(value: T, session?: Channel): boolean;
    }
    interface MessageOptions<T> {
      encoding?: c.Encoding<T>;
      onmessage?: (value: T, channel: Channel) => unknown;
      autoBatch?: boolean;
    }
    interface ChannelOptions<H> {
      userData?: unknown;
      protocol: string;
      aliases?: string[];
      id?: Buffer | null;
      /** false allows several channels of the same protocol and id. Default true (createChannel returns null). */
      unique?: boolean;
      handshake?: c.Encoding<H> | null;
      // biome-ignore lint/suspicious/noExplicitAny: each slot has its own message type; TypeScript has no existential type for such a list
      messages?: Array<MessageOptions<any> | null>;
      onopen?: (handshake: H, channel: Channel) => unknown;
      onclose?: (isRemote: boolean, channel: Channel) => unknown;
      ondestroy?: (channel: Channel) => unknown;
      ondrain?: (channel: Channel) => unknown;
    }
    interface Channel {
      readonly protocol: string;
      readonly id: Buffer | null;
      readonly opened: boolean;
      readonly closed: boolean;
      readonly destroyed: boolean;
      /** The mux's drained state: false means wait for ondrain before sending more. */
      readonly drained: boolean;
      // biome-ignore lint/suspicious/noExplicitAny: one message type per slot, as in ChannelOptions.messages
      readonly messages: Message<any>[];
      userData: unknown;
      open(handshake?: unknown): void;
      close(): void;
      cork(): void;
      uncork(): void;
      fullyOpened(): Promise<boolean>;
      fullyClosed(): Promise<void>;
      addMessage<T>(opts: MessageOptions<T>): Message<T>;
    }
  }

  class Protomux {
    constructor(stream: NoiseSecretStream, opts?: { alloc?: (n: number) => Buffer });
    /** The stream's existing mux (kept in stream.userData), or a new one. */
    static from(stream: NoiseSecretStream): Protomux;
    static isProtomux(x: unknown): x is Protomux;
    readonly stream: NoiseSecretStream;
    readonly drained: boolean;
    /** Returns null when the stream is destroyed or a unique channel of that protocol/id exists. */
    createChannel<H = unknown>(opts: Protomux.ChannelOptions<H>): Protomux.Channel | null;
    /** Called when the remote opens protocol/id and no local channel exists yet. */
    pair(opts: { protocol: string; id?: Buffer | null }, notify: (id: Buffer | null) => void): void;
    unpair(opts: { protocol: string; id?: Buffer | null }): void;
    opened(opts: { protocol: string; id?: Buffer | null }): boolean;
    cork(): void;
    uncork(): void;
    destroy(err?: Error): void;
  }

  export = Protomux;
}
