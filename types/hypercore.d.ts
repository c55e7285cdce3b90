/**
 * Minimal, accurate typing of hypercore 11.x as clonebox uses it: a signed append-only log (one writer,
 * the holder of the key pair), replicated sparsely over a Protomux/Noise stream. Blocks are raw Buffers
 * unless valueEncoding is set. Only members clonebox touches are listed.
 */
declare module 'hypercore' {
  import { EventEmitter } from 'node:events';
  import type NoiseSecretStream from '@hyperswarm/secret-stream';
  import type Protomux from 'protomux';

  namespace Hypercore {
    interface KeyPair {
      publicKey: Buffer;
      secretKey: Buffer;
    }
    interface Options {
      /** Public key of a core to open read-only (replicated from its writer). */
      key?: Buffer | string | null;
      /** Key pair of the writer: makes the core writable and signs appends. */
      keyPair?: KeyPair;
      valueEncoding?: 'binary' | 'utf-8' | 'json' | unknown;
      /** Wait for peers on get() of a missing block (default true). */
      wait?: boolean;
      /** ms before a waiting get() fails with REQUEST_TIMEOUT (0: no timeout). */
      timeout?: number;
      /** Create the core when missing (default true). */
      createIfMissing?: boolean;
      writable?: boolean;
    }
    interface GetOptions {
      wait?: boolean;
      timeout?: number;
      valueEncoding?: unknown;
    }
    interface Range {
      start?: number;
      end?: number;
      blocks?: number[];
      linear?: boolean;
    }
    interface Download {
      /** Resolves once every block of the range is stored locally. */
      done(): Promise<void>;
      destroy(): void;
    }
  }

  class Hypercore extends EventEmitter {
    /** `storage`: a directory (a RocksDB store of its own) or a hypercore-storage instance. */
    constructor(storage: string | unknown, key?: Buffer | string | null, opts?: Hypercore.Options);
    constructor(storage: string | unknown, opts?: Hypercore.Options);
    static discoveryKey(key: Buffer): Buffer;
    /** The key of a core written by this signer public key (the hash of its default manifest). */
    static key(signer: Buffer): Buffer;
    readonly key: Buffer | null;
    readonly discoveryKey: Buffer | null;
    readonly keyPair: Hypercore.KeyPair | null;
    readonly writable: boolean;
    readonly readable: boolean;
    readonly opened: boolean;
    readonly closed: boolean;
    readonly length: number;
    readonly byteLength: number;
    /** Blocks 0..contiguousLength-1 are all stored locally. */
    readonly contiguousLength: number;
    /** Bumped when the writer truncates the core (a fork of its history). */
    readonly fork: number;
    readonly peers: unknown[];
    ready(): Promise<void>;
    append(block: Buffer | Buffer[]): Promise<{ length: number; byteLength: number }>;
    get(index: number, opts?: Hypercore.GetOptions): Promise<Buffer | null>;
    has(start: number, end?: number): Promise<boolean>;
    /** The Merkle tree's root hash over blocks [0, length): equal hashes, equal blocks. */
    treeHash(length?: number): Promise<Buffer>;
    /** Fetch new length and signature from peers; resolves true when the length changed. */
    update(opts?: { wait?: boolean }): Promise<boolean>;
    download(range?: Hypercore.Range): Hypercore.Download;
    /** Remove stored blocks [start, end) locally (they stay fetchable from peers). */
    clear(start: number, end?: number): Promise<unknown>;
    /**
     * Replicate over an existing Noise stream or Protomux (sharing its mux with other protocols), or
     * create a protocol stream (isInitiator boolean). Returns the outer stream.
     */
    replicate(stream: NoiseSecretStream | Protomux | boolean, opts?: { keepAlive?: boolean }): NoiseSecretStream;
    /** Marks "still looking for peers" so that updates wait; call the returned function when discovery is done. */
    findingPeers(): () => void;
    close(): Promise<void>;
    on(event: 'append', listener: () => void): this;
    on(event: 'peer-add' | 'peer-remove', listener: (peer: unknown) => void): this;
    on(event: 'close', listener: () => void): this;
    on(event: string, listener: (...args: never[]) => void): this;
  }

  export = Hypercore;
}
