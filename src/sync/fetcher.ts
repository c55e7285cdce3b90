/**
 * The peer fetcher of a sync run: gets the blocks a pull needs from the teammates online — the sharer
 * first, then any other teammate, and a corrupt block asked for once more — handing each verified
 * block to the pull (which places it in a layer, or the spool).
 */
import { abortedError } from '../abort.js';
import type { BlockChannel } from './blocks.js';
import type { CatalogCard } from './cards.js';
import type { Catalog } from './catalog.js';
import type { Fetcher } from './pull.js';
import { shortKey, type TeamPeer } from './swarm.js';
import { trace } from './trace.js';

/** What a sync run knows of one proven teammate connection. */
export interface PeerState {
  peer: TeamPeer;
  channel: BlockChannel | null;
  catalog: Catalog | null;
  /**
   * Settles once the TCP path to the peer (tcp.ts) is up or given up (bounded): true when `channel` is
   * then the one on TCP. Null: no TCP path tried.
   */
  tcp: Promise<boolean> | null;
  /** The catalog cards the peer handed us (resolves with none if it never opens the channel). */
  cards: Promise<CatalogCard[]> | null;
}

export interface PeerFetcherOptions {
  /** Every peer state of the run (the fetcher tries the others after the sharer). */
  peers: () => Iterable<PeerState>;
  deadline: number;
  log: (line: string) => void;
  /** True once the run is stopping: no further teammate is asked. */
  stopping: () => boolean;
  /** Aborts the pull: a block arriving after it fails the fetch, before the pull registers anything. */
  signal?: AbortSignal | undefined;
}

export class PeerFetcher {
  constructor(private readonly opts: PeerFetcherOptions) {}

  /** A Fetcher for a pull whose chain `st` shares; `progress` gets the bytes received so far. */
  fetcherFor(st: PeerState, progress: (bytes: number) => void): Fetcher {
    const { log } = this.opts;
    return async (hashes, sizeOf, onArrive) => {
      let todo = hashes;
      let fetched = 0;
      let wireBytes = 0;
      let corrupt = 0;
      let notServed = false;
      // The sharer first, then any other teammate online; a corrupt block is asked for once more.
      const order = [st, ...[...this.opts.peers()].filter((s) => s !== st)];
      const tries = [...order, st];
      for (const s of tries) {
        if (!todo.length || this.opts.stopping()) break;
        // Blocks go on TCP when it comes up: a LAN or one machine answers within milliseconds.
        if (s.tcp) await s.tcp;
        if (!s.channel || s.peer.stream.destroyed) continue;
        trace(`fetch ${todo.length} blocks from ${s.peer.name} over ${s.channel.transport === 'tcp' ? 'TCP' : 'the Hyperswarm connection'}`);
        let bytes = 0;
        const r = await s.channel.fetch(todo, {
          onBlock: async (h, data) => {
            if (this.opts.signal?.aborted) throw abortedError(); // the pull fails before it registers anything
            await onArrive?.(h, data); // keeps `data` (frames are decoded into fresh buffers); the writer's backpressure
            bytes += data.length;
            progress(bytes);
          },
          expectedSize: sizeOf,
          deadline: this.opts.deadline,
        });
        fetched += r.received;
        wireBytes += r.wireBytes;
        if (r.corrupt.length) {
          corrupt += r.corrupt.length;
          log(`peer ${s.peer.name} (${shortKey(s.peer.publicKey)}) sent ${r.corrupt.length} corrupt block(s); not written, asking again`);
        }
        todo = [...r.corrupt, ...r.missing, ...r.unanswered];
        // The sharer, asked last, said plainly that it does not have them (no timeout, no corruption).
        notServed = s === st && r.corrupt.length === 0 && r.unanswered.length === 0;
      }
      return { fetched, wireBytes, failed: todo, corrupt, notServed: notServed && todo.length > 0 };
    };
  }
}
