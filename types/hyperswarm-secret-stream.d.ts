/**
 * Minimal, accurate typing of @hyperswarm/secret-stream 6.x as clonebox uses it: the Noise-encrypted
 * duplex stream that Hyperswarm hands out for each connection. Only members clonebox touches are listed.
 */
declare module '@hyperswarm/secret-stream' {
  import { EventEmitter } from 'node:events';

  namespace NoiseSecretStream {
    interface KeyPair {
      /** 32-byte Ed25519 public key. */
      publicKey: Buffer;
      /** 64-byte libsodium Ed25519 secret key (seed followed by the public key). */
      secretKey: Buffer;
    }
  }

  /** A streamx Duplex carrying Buffers; events: 'data', 'drain', 'end', 'error', 'close', 'open'. */
  class NoiseSecretStream extends EventEmitter {
    constructor(isInitiator: boolean, rawStream?: unknown, opts?: Record<string, unknown>);
    readonly isInitiator: boolean;
    /** Our static public key (set once the handshake has run). */
    publicKey: Buffer | null;
    /** The remote's static public key, authenticated by the Noise handshake. */
    remotePublicKey: Buffer | null;
    /** Hash of the whole Noise handshake: unique to this connection, the same on both ends. */
    handshakeHash: Buffer | null;
    /** Resolves true once the handshake completed, false if the stream closed first. */
    readonly opened: Promise<boolean>;
    /** Slot upper layers use; Protomux stores itself here. */
    userData: unknown;
    readonly rawStream: unknown;
    rawBytesRead: number;
    rawBytesWritten: number;
    readonly destroyed: boolean;
    readonly destroying: boolean;
    setTimeout(ms: number): void;
    setKeepAlive(ms: number): void;
    write(data: Buffer | Uint8Array | string): boolean;
    end(data?: Buffer | Uint8Array): this;
    destroy(err?: Error | null): void;
    pause(): this;
    resume(): this;
    static keyPair(seed?: Buffer): NoiseSecretStream.KeyPair;
  }

  export = NoiseSecretStream;
}
