/**
 * Minimal, accurate typing of hyperdht 6.x (which extends dht-rpc 6.x) as clonebox uses it: creating
 * nodes (clients, and the persistent nodes of a private bootstrap testnet), checking that the routing
 * table is non-empty, and tearing down. Only members clonebox touches are listed.
 */
declare module 'hyperdht' {
  import { EventEmitter } from 'node:events';
  import type NoiseSecretStream from '@hyperswarm/secret-stream';

  namespace HyperDHT {
    interface Node {
      host: string;
      port: number;
    }
    type KeyPair = NoiseSecretStream.KeyPair;
    interface Options {
      /**
       * Bootstrap nodes as {host, port} or "host:port". Omitted: the public bootstrap nodes. An empty array:
       * none (this node starts a network of its own).
       */
      bootstrap?: Array<Node | string>;
      /**
       * UDP port to bind. A number: try it and the next 4, then any port (unless anyPort is false).
       * Note that 0 or undefined mean hyperdht's default 49737, not "any"; [0, 0] means any free port.
       */
      port?: number | [number, number];
      /** Address to bind (default 0.0.0.0). */
      host?: string;
      /** false: fail instead of falling back to another port when `port` is taken. */
      anyPort?: boolean;
      /** false: tell the network this node is reachable (needed on loopback, where no NAT test works). */
      firewalled?: boolean;
      /** false: a persistent node that stores announces (the bootstrap testnet's nodes). */
      ephemeral?: boolean;
      keyPair?: KeyPair;
      /** Connection keep-alive in ms, or false. */
      connectionKeepAlive?: number | false;
    }
  }

  class HyperDHT extends EventEmitter {
    constructor(opts?: HyperDHT.Options);
    /** A persistent, non-firewalled node on a fixed port (anyPort false), knowing its own address. */
    static bootstrapper(port: number, host: string, opts?: HyperDHT.Options): HyperDHT;
    static keyPair(seed?: Buffer): HyperDHT.KeyPair;
    readonly defaultKeyPair: HyperDHT.KeyPair;
    readonly bootstrapNodes: HyperDHT.Node[];
    /** True once the first bootstrap query ended, whether or not it reached anyone. */
    readonly bootstrapped: boolean;
    readonly firewalled: boolean;
    readonly ephemeral: boolean;
    readonly destroyed: boolean;
    /** Resolves when bootstrapping ended (about 6-12 s when no bootstrap node answers). */
    fullyBootstrapped(): Promise<void>;
    /** Deprecated alias of fullyBootstrapped(). */
    ready(): Promise<void>;
    /** Binds the UDP sockets. */
    bind(): Promise<void>;
    /** Dials the server listening on `publicKey` (tests: an outsider with a key pair per connection). */
    connect(publicKey: Buffer, opts?: { keyPair?: HyperDHT.KeyPair }): NoiseSecretStream;
    /** Nodes in the routing table, newest first: empty means no DHT was reached. */
    toArray(opts?: { limit?: number }): HyperDHT.Node[];
    /** Runs a background query; with fewer than k nodes in the table it asks the bootstrap nodes again. */
    refresh(): void;
    /** The bound address of the socket the node answers on. */
    address(): { host: string; family: number; port: number } | null;
    /** Our address as seen by other nodes, when known. */
    remoteAddress(): HyperDHT.Node | null;
    destroy(opts?: { force?: boolean }): Promise<void>;
  }

  export = HyperDHT;
}
