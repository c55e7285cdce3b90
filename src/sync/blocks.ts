/**
 * Block exchange on the `clonebox/blocks` Protomux channel (messages in messages.ts; the choice of this
 * transport over Hypercore entries is measured in docs/sync.md). One BlockChannel per proven peer
 * plays both roles:
 *
 * - serving: Requests are answered in arrival order from a BlockSource (frames of blocks it has,
 *   Missing for the rest), up to SERVE_AHEAD frames prepared ahead (across requests) and sent in
 *   order, waiting for the stream to drain when it is full; a Cancel drops what is still queued or
 *   prepared for that request. A source that fails closes the channel (the peer's fetch ends).
 * - fetching: `fetch(hashes)` asks for blocks in requests of about 1 MiB (at most 4096 hashes) with a
 *   bounded number of bytes in flight, decodes each frame, checks every block's SHA-256 against the
 *   hash asked for, and hands only good blocks to `onBlock`. A frame is decoded only when every block
 *   in it was asked for, is not answered or being decoded already, and is no larger than expected:
 *   so what a peer can make us decompress is bounded by what we asked for (the window), whatever it
 *   sends.
 *
 * Limits (limits.ts): a peer with more than MAX_QUEUED_REQUESTS requests queued has its channel closed
 * (`onAbuse` says why); a Cancel counts only for a request queued or being served. Blocks that fail the check, that the peer lacks, or that
 *   did not arrive before the deadline or the end of the connection are reported, never written.
 *
 * What to ask for (what is missing locally), from whom, and what to do with a corrupt block (ask
 * another peer) is the puller's business.
 */
import type Protomux from 'protomux';
import { decodeFrame, hashFrame } from '../content/codec.js';
import { MAX_QUEUED_REQUESTS } from './limits.js';
import {
  BLOCKS_PROTOCOL,
  type BlockCancel,
  type BlockFrame,
  type BlockMissing,
  type BlockRequest,
  blockCancel,
  blockFrame,
  blockMissing,
  blockRequest,
  CODEC_RAW,
  CODEC_ZSTD,
  MAX_FRAME_RAW,
  MAX_HASHES_PER_REQUEST,
} from './messages.js';
import { FramePace, fixedLevelFromEnv } from './pace.js';

/**
 * One answer to a request: a frame of blocks the source has, or the hashes it lacks. A frame says the
 * zstd level it was made with (0: raw) and how long compressing it took, for the channel's pace, and
 * may give its buffers back once sent.
 */
export type SourcePart = { frame: Omit<BlockFrame, 'id'>; level?: number; compressMs?: number; release?: () => void } | { missing: Buffer[] };

/**
 * What a sharer serves from: parts in the order of the request. A part may be a promise (work started
 * ahead, e.g. compression on a worker thread): the channel then keeps up to SERVE_AHEAD parts under way,
 * across requests, and sends them in order.
 */
export interface BlockSource {
  /** `pace`: the channel's compression pace (pace.ts): the level to make each frame with. */
  read(hashes: Buffer[], pace?: FramePace): AsyncIterable<SourcePart | Promise<SourcePart>>;
}

/** Parts (frames) a serving channel prepares ahead of the one it sends. */
const SERVE_AHEAD = 4;

/**
 * Frame decoding: the raw bytes of all its blocks and the SHA-256 of each (n × 32 bytes), or null when
 * the frame is damaged. The default runs the bundle's decodeFrame on this thread; a puller may pass
 * one that runs on the bundle's worker pool.
 */
export type FrameDecoder = (frame: BlockFrame) => Promise<DecodedFrame | null> | DecodedFrame | null;
interface DecodedFrame {
  raw: Buffer;
  shas: Buffer;
}

const defaultDecoder: FrameDecoder = (frame) => {
  if (frame.codec !== CODEC_RAW && frame.codec !== CODEC_ZSTD) return null;
  const lengths = Uint32Array.from(frame.blocks.map((b) => b.size));
  const total = frame.blocks.reduce((a, b) => a + b.size, 0);
  if (frame.codec === CODEC_RAW && frame.data.length === total && frame.data.length * 2 >= frame.data.buffer.byteLength) {
    // Hashed where it arrived, and the blocks handed on are views of it: a raw frame's payload is a
    // view of the message it came in, memory of its own that no later read overwrites (Protomux over
    // secret-stream: a message whole in one read of the socket lies in that read's memory, which UDX
    // and framed-socket.ts never refill; a message across reads is reassembled into a new buffer).
    // A small frame in a large read is copied instead, so that a block held for the writer does not
    // keep much more memory alive than its own size.
    return { raw: frame.data, shas: hashFrame(frame.data, lengths) };
  }
  return decodeFrame(frame.codec, frame.data, total, lengths);
};

export interface FetchOptions {
  /** Called once per verified block, in arrival order; the fetch waits for the returned promise. */
  onBlock: (hash: Buffer, data: Buffer) => Promise<void> | void;
  /** Expected raw size of a block, to size the window (default 64 KiB). */
  expectedSize?: (hash: Buffer) => number;
  /** Bytes asked for and not yet received (default 16 MiB). */
  windowBytes?: number;
  /** Epoch ms after which unanswered blocks are given up (reported as `unanswered`). */
  deadline?: number;
}

export interface FetchResult {
  received: number;
  /** Raw bytes of the verified blocks. */
  bytes: number;
  /** Compressed bytes received in frames (what crossed the wire, without framing). */
  wireBytes: number;
  /** The peer said it does not have these. */
  missing: Buffer[];
  /** Arrived but failed the SHA-256 check (or came in a damaged frame): not written. */
  corrupt: Buffer[];
  /** No answer before the deadline or before the connection closed. */
  unanswered: Buffer[];
}

const DEFAULT_WINDOW_BYTES = 16 * 1024 * 1024;
const DEFAULT_BLOCK_SIZE = 64 * 1024;

interface Pending {
  id: number;
  want: Map<string, Buffer>; // hex -> hash, not yet resolved
  asked: Map<string, number>; // hex -> expected bytes, asked and not yet answered
  taken: Set<string>; // hex of blocks in a frame being decoded (answered, not yet settled)
  result: FetchResult;
  onBlock: FetchOptions['onBlock'];
  /** The hash got its answer: free its share of the window. */
  settle(hex: string): void;
  pump(): void;
  finish(err?: Error): void;
  chain: Promise<void>;
}

export class BlockChannel {
  readonly channel: Protomux.Channel;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly queue: BlockRequest[] = [];
  private readonly cancelled = new Set<number>();
  /** Serving: parts under way in sending order, the request being read, the two loops' state. */
  private readonly ahead: { id: number; part: Promise<SourcePart> }[] = [];
  private iter: AsyncIterator<SourcePart | Promise<SourcePart>> | null = null;
  private iterId = 0;
  private producing = false;
  private sending = false;
  private wakeProducer: (() => void) | null = null;
  private drainWaiters: (() => void)[] = [];
  private closed = false;
  /** What the channel's mux runs on: the Hyperswarm connection, or the TCP path (tcp.ts). */
  transport: 'hyperswarm' | 'tcp' = 'hyperswarm';
  /** The compression level of frames served on this channel, from where the sender waits (pace.ts). */
  readonly pace: FramePace;

  private constructor(
    mux: Protomux,
    private readonly source: BlockSource | null,
    private readonly decode: FrameDecoder,
    private readonly onAbuse: ((why: string) => void) | null,
    maxLevel?: number,
  ) {
    this.pace = new FramePace(fixedLevelFromEnv(), maxLevel);
    const channel = mux.createChannel({
      protocol: BLOCKS_PROTOCOL,
      messages: [
        { encoding: blockRequest, onmessage: (m: BlockRequest) => this.onRequest(m) },
        { encoding: blockFrame, onmessage: (m: BlockFrame) => this.onFrame(m) },
        { encoding: blockMissing, onmessage: (m: BlockMissing) => this.onMissing(m) },
        { encoding: blockCancel, onmessage: (m: BlockCancel) => this.onCancel(m) },
      ],
      ondrain: () => this.drained(),
      onclose: () => this.onClose(),
    });
    if (!channel) throw new Error('a blocks channel is already open on this connection');
    this.channel = channel;
  }

  /**
   * Creates and opens the channel on a proven peer's mux (call it from a TeamSwarm service, so that
   * the peer's open is never refused). `source`: what to serve (null: serve nothing, answer Missing).
   */
  static attach(
    mux: Protomux,
    opts: {
      source?: BlockSource | null;
      decode?: FrameDecoder;
      onAbuse?: (why: string) => void;
      maxLevel?: number;
      transport?: 'hyperswarm' | 'tcp';
    } = {},
  ): BlockChannel {
    const bc = new BlockChannel(mux, opts.source ?? null, opts.decode ?? defaultDecoder, opts.onAbuse ?? null, opts.maxLevel);
    if (opts.transport) bc.transport = opts.transport;
    bc.channel.open();
    return bc;
  }

  close(): void {
    this.channel.close();
  }

  // ---- serving ------------------------------------------------------------------------------------

  private onRequest(req: BlockRequest): void {
    if (this.closed) return;
    if (this.queue.length >= MAX_QUEUED_REQUESTS) {
      this.onAbuse?.(`more than ${MAX_QUEUED_REQUESTS} block requests queued at once`);
      this.channel.close();
      return;
    }
    this.queue.push(req);
    this.kickProducer();
  }

  /** A Cancel of a request that is neither queued nor being served is ignored (the set stays bounded). */
  private onCancel(m: BlockCancel): void {
    const live = this.queue.some((q) => q.id === m.id) || (this.iter !== null && this.iterId === m.id) || this.ahead.some((a) => a.id === m.id);
    if (live) this.cancelled.add(m.id);
  }

  private drained(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves once the stream takes more (at once unless it asked for a drain). */
  private async send<T>(index: number, value: T): Promise<void> {
    if (this.closed) return;
    if (!this.channel.messages[index]!.send(value) && !this.closed) {
      await new Promise<void>((r) => this.drainWaiters.push(r));
    }
  }

  /**
   * Serving runs as two loops: the producer starts parts (reads the source, request after request)
   * while fewer than SERVE_AHEAD are under way; the sender sends them in order. So a frame being
   * compressed or read never holds up one that is ready, and a slow source part holds up only itself.
   */
  private kickProducer(): void {
    if (this.producing) {
      this.wakeProducer?.();
      return;
    }
    this.producing = true;
    void this.produce();
  }

  private kickSender(): void {
    if (this.sending) return; // the running loop takes it
    this.sending = true;
    void this.sendParts();
  }

  private stopIter(): void {
    const it = this.iter;
    this.iter = null;
    if (it?.return) void Promise.resolve(it.return()).catch(() => undefined);
  }

  private async produce(): Promise<void> {
    try {
      for (;;) {
        if (this.closed) return;
        if (this.ahead.length >= SERVE_AHEAD) {
          await new Promise<void>((r) => {
            this.wakeProducer = r;
          });
          this.wakeProducer = null;
          continue;
        }
        if (this.iter && this.cancelled.has(this.iterId)) this.stopIter();
        if (!this.iter) {
          const req = this.queue.shift();
          if (!req) return;
          if (this.cancelled.delete(req.id)) continue;
          if (!this.source) {
            this.push(req.id, Promise.resolve({ missing: req.hashes }));
            continue;
          }
          this.iter = this.source.read(req.hashes, this.pace)[Symbol.asyncIterator]();
          this.iterId = req.id;
        }
        const id = this.iterId;
        let n: IteratorResult<SourcePart | Promise<SourcePart>>;
        try {
          n = await this.iter.next();
        } catch (err) {
          this.push(id, Promise.reject(err as Error));
          this.stopIter();
          return;
        }
        if (n.done) this.iter = null;
        else this.push(id, Promise.resolve(n.value));
      }
    } finally {
      this.producing = false;
    }
  }

  private push(id: number, part: Promise<SourcePart>): void {
    part.catch(() => undefined); // awaited in its turn by the sender
    this.ahead.push({ id, part });
    this.kickSender();
  }

  private async sendParts(): Promise<void> {
    try {
      while (this.ahead.length && !this.closed) {
        const head = this.ahead.shift()!;
        this.wakeProducer?.();
        let part: SourcePart;
        const asked = performance.now();
        try {
          part = await head.part;
        } catch {
          // A failing source (a layer gone, a read error) ends this channel: the peer sees its fetch
          // end with everything unanswered and can ask elsewhere. The connection stays.
          this.channel.close();
          return;
        }
        if (this.closed) return;
        const cancelled = this.cancelled.has(head.id);
        // A cancelled request is over once no part of it is under way and it is not being read.
        if (cancelled && !(this.iter && this.iterId === head.id) && !this.ahead.some((a) => a.id === head.id)) this.cancelled.delete(head.id);
        if (cancelled) continue;
        if ('missing' in part) {
          for (let i = 0; i < part.missing.length; i += MAX_HASHES_PER_REQUEST) {
            await this.send(2, { id: head.id, hashes: part.missing.slice(i, i + MAX_HASHES_PER_REQUEST) });
          }
        } else {
          const ready = performance.now();
          const sent = this.send(1, { id: head.id, ...part.frame });
          // The message holds its own copy of the data once send() returned.
          part.release?.();
          await sent;
          if (part.level !== undefined) {
            const raw = part.frame.blocks.reduce((a, b) => a + b.size, 0);
            this.pace.sent(part.level, raw, ready - asked, performance.now() - ready, part.compressMs);
          }
        }
      }
    } finally {
      this.sending = false;
    }
  }

  // ---- fetching -----------------------------------------------------------------------------------

  /** Fetches blocks by hash from this peer (see the module comment). Never rejects for peer faults. */
  fetch(hashes: Buffer[], opts: FetchOptions): Promise<FetchResult> {
    const window = Math.max(opts.windowBytes ?? DEFAULT_WINDOW_BYTES, MAX_FRAME_RAW);
    const sizeOf = opts.expectedSize ?? (() => DEFAULT_BLOCK_SIZE);
    const id = this.nextId++;
    const result: FetchResult = { received: 0, bytes: 0, wireBytes: 0, missing: [], corrupt: [], unanswered: [] };
    const want = new Map<string, Buffer>();
    for (const h of hashes) want.set(h.toString('hex'), h);
    const todo = [...want.values()];
    const asked = new Map<string, number>();
    const taken = new Set<string>();
    let inFlight = 0;
    let next = 0;

    return new Promise<FetchResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const p: Pending = {
        id,
        want,
        asked,
        taken,
        result,
        onBlock: opts.onBlock,
        chain: Promise.resolve(),
        settle: (hex: string) => {
          want.delete(hex);
          taken.delete(hex);
          const size = asked.get(hex);
          if (size !== undefined) {
            inFlight -= size;
            asked.delete(hex);
          }
        },
        pump: () => {
          while (next < todo.length && !this.closed) {
            const batch: Buffer[] = [];
            let bytes = 0;
            while (next < todo.length && batch.length < MAX_HASHES_PER_REQUEST) {
              const size = sizeOf(todo[next]!);
              if (inFlight + bytes + size > window && inFlight + bytes > 0) break;
              batch.push(todo[next]!);
              asked.set(todo[next]!.toString('hex'), size);
              bytes += size;
              next++;
              if (bytes >= 1024 * 1024) break; // about 1 MiB per request keeps replies flowing early
            }
            if (batch.length === 0) break;
            inFlight += bytes;
            this.channel.messages[0]!.send({ id, hashes: batch });
          }
          if (want.size === 0) p.finish();
        },
        finish: (err?: Error) => {
          if (!this.pending.has(id)) return;
          this.pending.delete(id);
          if (timer) clearTimeout(timer);
          for (const h of want.values()) result.unanswered.push(h);
          want.clear();
          if (result.unanswered.length && !this.closed) this.channel.messages[3]!.send({ id });
          p.chain.then(() => (err ? reject(err) : resolve(result)), reject);
        },
      };
      this.pending.set(id, p);
      if (opts.deadline !== undefined) timer = setTimeout(() => p.finish(), Math.max(0, opts.deadline - Date.now()));
      if (this.closed) return p.finish();
      p.pump();
    });
  }

  private onFrame(frame: BlockFrame): void {
    const p = this.pending.get(frame.id);
    if (!p) return; // a late answer to a finished fetch
    p.result.wireBytes += frame.data.length;
    // `want` is checked before anything is decoded: every block must be one asked for, not answered or
    // being decoded already, and no larger than expected. Otherwise the frame is dropped undecoded and
    // the blocks of it we did want count as corrupt (asked again elsewhere).
    const hexes = frame.blocks.map((b) => b.hash.toString('hex'));
    const fresh =
      new Set(hexes).size === hexes.length &&
      frame.blocks.every((b, i) => {
        const h = hexes[i]!;
        const size = p.asked.get(h);
        return size !== undefined && !p.taken.has(h) && b.size <= size;
      });
    if (!fresh) {
      const spoilt = hexes.filter((h) => p.asked.has(h) && !p.taken.has(h));
      for (const h of spoilt) p.taken.add(h);
      p.chain = p.chain.then(() => {
        for (const h of spoilt) {
          const hash = p.want.get(h);
          if (!hash) continue;
          p.settle(h);
          p.result.corrupt.push(hash);
        }
        if (this.pending.has(p.id)) p.pump();
      });
      p.chain.catch((err: Error) => p.finish(err));
      return;
    }
    for (const h of hexes) p.taken.add(h);
    // Decoding may be asynchronous (worker threads); blocks are handed on in arrival order.
    p.chain = p.chain.then(async () => {
      const decoded = await this.decode(frame);
      let at = 0;
      for (const [i, b] of frame.blocks.entries()) {
        const hex = b.hash.toString('hex');
        const ok =
          decoded !== null &&
          decoded.shas.length === frame.blocks.length * 32 &&
          at + b.size <= decoded.raw.length &&
          decoded.shas.subarray(i * 32, i * 32 + 32).equals(b.hash);
        const data = ok ? decoded!.raw.subarray(at, at + b.size) : null;
        at += b.size;
        if (!p.want.has(hex)) continue; // not asked for (or already settled): ignore it
        p.settle(hex);
        if (data) {
          await p.onBlock(b.hash, data);
          p.result.received++;
          p.result.bytes += data.length;
        } else {
          p.result.corrupt.push(b.hash);
        }
      }
      if (this.pending.has(p.id)) p.pump();
    });
    p.chain.catch((err: Error) => p.finish(err));
  }

  private onMissing(m: BlockMissing): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    p.chain = p.chain.then(() => {
      for (const h of m.hashes) {
        const hex = h.toString('hex');
        if (!p.want.has(hex)) continue;
        p.settle(hex);
        p.result.missing.push(h);
      }
      if (this.pending.has(p.id)) p.pump();
    });
    p.chain.catch((err: Error) => p.finish(err));
  }

  private onClose(): void {
    this.closed = true;
    this.drained(); // release a server waiting for drain
    this.wakeProducer?.();
    this.stopIter();
    for (const p of [...this.pending.values()])
      p.chain.then(
        () => p.finish(),
        () => undefined,
      );
  }
}
