/**
 * Minimal, accurate typing of hyperswarm 4.x as clonebox uses it: topic discovery over a HyperDHT, and
 * Noise-encrypted connections. Only members clonebox touches are listed.
 */
declare module 'hyperswarm' {
  import { EventEmitter } from 'node:events';
  import type NoiseSecretStream from '@hyperswarm/secret-stream';
  import type HyperDHT from 'hyperdht';

  namespace Hyperswarm {
    interface Options {
      keyPair?: HyperDHT.KeyPair;
      seed?: Buffer;
      /** Use this DHT node (the swarm destroys it on destroy()). Without it, one is created from `bootstrap`. */
      dht?: HyperDHT;
      bootstrap?: HyperDHT.Options['bootstrap'];
      maxPeers?: number;
      /** Called before connecting or accepting; return true to refuse the peer. */
      firewall?: (remotePublicKey: Buffer, payload?: unknown) => boolean;
    }
    interface PeerInfo {
      readonly publicKey: Buffer;
      /** True when we dialled this peer. */
      readonly client: boolean;
      readonly topics: Buffer[];
      readonly banned: boolean;
      /** Refuse further connections to and from this peer (true) or allow them again (false). */
      ban(banned?: boolean): void;
    }
    interface Discovery {
      /** Resolves once the topic has been announced and/or looked up once. */
      flushed(): Promise<void>;
      refresh(opts?: { client?: boolean; server?: boolean }): Promise<void>;
      destroy(): Promise<void>;
    }
  }

  class Hyperswarm extends EventEmitter {
    constructor(opts?: Hyperswarm.Options);
    readonly keyPair: HyperDHT.KeyPair;
    readonly dht: HyperDHT;
    readonly connections: Set<NoiseSecretStream>;
    /** Client connections being attempted now. */
    readonly connecting: number;
    readonly peers: Map<string, Hyperswarm.PeerInfo>;
    readonly destroyed: boolean;
    join(topic: Buffer, opts?: { server?: boolean; client?: boolean; limit?: number }): Hyperswarm.Discovery;
    leave(topic: Buffer): Promise<void>;
    joinPeer(publicKey: Buffer): void;
    leavePeer(publicKey: Buffer): void;
    listen(): Promise<void>;
    /** Resolves once every pending discovery and connection attempt has been processed. */
    flush(): Promise<boolean>;
    destroy(opts?: { force?: boolean }): Promise<void>;
    on(event: 'connection', listener: (conn: NoiseSecretStream, info: Hyperswarm.PeerInfo) => void): this;
    on(event: 'update', listener: () => void): this;
    on(event: 'ban', listener: (info: Hyperswarm.PeerInfo, err: Error) => void): this;
    on(event: string, listener: (...args: never[]) => void): this;
  }

  export = Hyperswarm;
}
