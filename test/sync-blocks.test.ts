/**
 * The block channel between two proven workstations on a local testnet: frames (raw and zstd) and
 * Missing answers, every block checked before it is handed on, damaged blocks and frames reported and
 * never written, the window respected, and a fetch that ends cleanly when the peer goes away.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compressBound, compressInto } from '../src/content/codec.js';
import type { BlockChannel, BlockSource } from '../src/sync/blocks.js';
import { CODEC_RAW, CODEC_ZSTD } from '../src/sync/messages.js';
import { type FramePace, LEVELS } from '../src/sync/pace.js';
import type { TeamSwarm } from '../src/sync/swarm.js';
import { type BlockPair, openBlockPair } from './helpers/block-pair.js';
import { rng } from './helpers/random.js';
import { cleanupTempDirs } from './helpers/temp.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest();
const hex = (b: Buffer) => b.toString('hex');

let pair: BlockPair;
let sharer: TeamSwarm;
let fetcher: BlockChannel;
/** What the sharer serves; tests swap it. */
let source: BlockSource | null = null;

const store = new Map<string, Buffer>();
const r = rng(42);
const blocks: Buffer[] = [];
for (let i = 0; i < 300; i++) {
  // Half random, half compressible (text-like), 64 KiB each, and a few short tail blocks.
  const size = i % 50 === 49 ? 4096 + i : 65536;
  const b = i % 2 ? r.bytes(size) : Buffer.from(`block ${i} `.repeat(size).slice(0, size));
  blocks.push(b);
  store.set(hex(sha(b)), b);
}

/** Frames of up to `per` blocks, zstd when it helps. */
function frameSource(opts: { per?: number } = {}): BlockSource {
  return {
    async *read(hashes) {
      const missing = hashes.filter((h) => !store.has(hex(h)));
      if (missing.length) yield { missing };
      const have = hashes.filter((h) => store.has(hex(h)));
      for (let i = 0; i < have.length; i += opts.per ?? 4) {
        const group = have.slice(i, i + (opts.per ?? 4)).map((h) => store.get(hex(h))!);
        const raw = Buffer.concat(group);
        const out = Buffer.alloc(compressBound(raw.length));
        const c = compressInto(raw, out, 3);
        const frame = {
          codec: c.codec === 1 ? CODEC_ZSTD : CODEC_RAW,
          blocks: group.map((b) => ({ hash: sha(b), size: b.length })),
          data: c.codec === 1 ? Buffer.from(out.subarray(0, c.length)) : Buffer.from(raw),
        };
        yield { frame };
      }
    },
  };
}

beforeAll(async () => {
  const serving: BlockSource = { read: (hashes, pace) => (source ?? frameSource()).read(hashes, pace) };
  pair = await openBlockPair('clonebox-sync-blocks-', { serve: { source: serving } });
  sharer = pair.sharer;
  fetcher = pair.fetcher;
});

afterAll(async () => {
  await pair?.close();
  await cleanupTempDirs();
});

/** Frames the sharer's channel has counted so far (its pace lives as long as the channel). */
let servingPace: FramePace | null = null;
const fetcherPaceFrames = () => servingPace?.snapshot().frames ?? 0;

describe('block channel', () => {
  it('fetches verified blocks in frames and reports the missing ones', async () => {
    source = frameSource();
    const unknown = Array.from({ length: 10 }, (_, i) => sha(Buffer.from(`nobody has ${i}`)));
    const got = new Map<string, Buffer>();
    const res = await fetcher.fetch([...blocks.map(sha), ...unknown], {
      onBlock: (h, data) => {
        got.set(hex(h), Buffer.from(data));
      },
      windowBytes: 1, // clamped to one frame's worth: still completes, just with less in flight
    });
    expect(res.received).toBe(blocks.length);
    expect(res.corrupt).toEqual([]);
    expect(res.unanswered).toEqual([]);
    expect(res.missing.map(hex).sort()).toEqual(unknown.map(hex).sort());
    expect(res.bytes).toBe(blocks.reduce((a, b) => a + b.length, 0));
    expect(res.wireBytes).toBeLessThan(res.bytes * 0.6); // the compressible half shrank
    for (const b of blocks) expect(got.get(hex(sha(b)))!.equals(b)).toBe(true);
  });

  it('takes frames at any level the sharer picks (raw and every zstd level of the pace), each block verified', async () => {
    const paces: FramePace[] = [];
    let k = 0;
    const before = fetcherPaceFrames();
    source = {
      async *read(hashes, pace) {
        if (pace) paces.push(pace);
        servingPace ??= pace ?? null;
        for (let i = 0; i < hashes.length; i += 3) {
          const group = hashes.slice(i, i + 3).map((h) => store.get(hex(h))!);
          const raw = Buffer.concat(group);
          // Every level in turn (what an adaptive sharer may send), or the pace's own when asked.
          const level = k++ % 2 ? LEVELS[k % LEVELS.length]! : (pace?.level() ?? 3);
          const out = Buffer.alloc(compressBound(raw.length));
          const c = level === 0 ? { codec: 0, length: raw.length } : compressInto(raw, out, level);
          const data = c.codec === 1 ? Buffer.from(out.subarray(0, c.length)) : Buffer.from(raw);
          yield { frame: { codec: c.codec === 1 ? CODEC_ZSTD : CODEC_RAW, blocks: group.map((b) => ({ hash: sha(b), size: b.length })), data }, level };
        }
      },
    };
    const got = new Map<string, Buffer>();
    const res = await fetcher.fetch(blocks.map(sha), { onBlock: (h, data) => void got.set(hex(h), Buffer.from(data)) });
    expect(res.received).toBe(blocks.length);
    expect(res.corrupt).toEqual([]);
    for (const b of blocks) expect(got.get(hex(sha(b)))?.equals(b)).toBe(true);
    // The serving channel handed its pace to the source and counted every frame it sent.
    expect(paces.length).toBeGreaterThan(0);
    expect(paces[0]!.snapshot().frames - before).toBe(k);
    expect(new Set(paces).size).toBe(1); // one pace per channel (per peer's link)
  });

  it('hands on the blocks of a raw frame as views of the frame as it arrived (no copy), intact after later frames', async () => {
    source = {
      async *read(hashes) {
        for (let i = 0; i < hashes.length; i += 4) {
          const group = hashes.slice(i, i + 4).map((h) => store.get(hex(h))!);
          yield { frame: { codec: CODEC_RAW, blocks: group.map((b) => ({ hash: sha(b), size: b.length })), data: Buffer.concat(group) } };
        }
      },
    };
    const got = new Map<string, Buffer>();
    const res = await fetcher.fetch(blocks.map(sha), { onBlock: (h, data) => void got.set(hex(h), data) });
    expect(res.received).toBe(blocks.length);
    for (const b of blocks) expect(got.get(hex(sha(b)))?.equals(b)).toBe(true);
    // A decoded copy would be memory of exactly the frame's raw size; these lie in the received
    // message, which also holds the frame's header.
    const first = got.get(hex(sha(blocks[0]!)))!;
    const frameBytes = blocks.slice(0, 4).reduce((a, b) => a + b.length, 0);
    expect(first.buffer.byteLength).toBeGreaterThan(frameBytes);
    expect(got.get(hex(sha(blocks[1]!)))!.buffer).toBe(first.buffer);
  });

  it('never hands on a damaged block: a bad byte in a raw frame, a spoiled zstd frame', async () => {
    // Blocks 1 and 3 are random (a raw frame), 0 and 2 text (a zstd frame), 4 and 6 text (a good frame).
    const pick = (i: number) => blocks[i]!;
    const rawFrame = Buffer.concat([pick(1), pick(3)]);
    rawFrame[pick(1).length + 100]! ^= 1; // inside block 3
    const text = Buffer.concat([pick(0), pick(2)]);
    const z = Buffer.alloc(compressBound(text.length));
    const zl = compressInto(text, z, 3).length;
    const spoiled = Buffer.from(z.subarray(0, zl));
    spoiled[Math.floor(zl / 2)]! ^= 0xff;
    const good = Buffer.concat([pick(4), pick(6)]);
    const gz = Buffer.alloc(compressBound(good.length));
    const gl = compressInto(good, gz, 3).length;
    const meta = (...ix: number[]) => ix.map((i) => ({ hash: sha(pick(i)), size: pick(i).length }));
    source = {
      async *read() {
        yield { frame: { codec: CODEC_RAW, blocks: meta(1, 3), data: rawFrame } };
        yield { frame: { codec: CODEC_ZSTD, blocks: meta(0, 2), data: spoiled } };
        yield { frame: { codec: CODEC_ZSTD, blocks: meta(4, 6), data: Buffer.from(gz.subarray(0, gl)) } };
      },
    };
    const wanted = [0, 1, 2, 3, 4, 6].map((i) => sha(pick(i)));
    const handed: string[] = [];
    const res = await fetcher.fetch(wanted, {
      onBlock: (h, data) => {
        expect(sha(data).equals(h)).toBe(true);
        handed.push(hex(h));
      },
      deadline: Date.now() + 10_000,
    });
    expect(res.corrupt.map(hex).sort()).toEqual([0, 2, 3].map((i) => hex(sha(pick(i)))).sort());
    expect(handed.sort()).toEqual([1, 4, 6].map((i) => hex(sha(pick(i)))).sort());
    expect(res.received).toBe(3);
    expect(res.unanswered).toEqual([]);
  });

  it('gives up unanswered blocks at the deadline, and a new fetch still works', async () => {
    source = {
      async *read(hashes) {
        yield* frameSource().read(hashes.slice(0, 2));
        await new Promise((r) => setTimeout(r, 3000)); // then stalls
      },
    };
    const wanted = blocks.slice(0, 6).map(sha);
    const t0 = Date.now();
    const res = await fetcher.fetch(wanted, { onBlock: () => undefined, deadline: Date.now() + 800 });
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(res.received).toBe(2);
    expect(res.unanswered.map(hex).sort()).toEqual(wanted.slice(2).map(hex).sort());
    source = frameSource();
    const again = await fetcher.fetch(wanted, { onBlock: () => undefined, deadline: Date.now() + 10_000 });
    expect(again.received).toBe(6);
  });

  it('ends a fetch cleanly when the connection goes away mid-way (last: it breaks the pair)', async () => {
    source = {
      async *read(hashes) {
        yield* frameSource().read(hashes.slice(0, 2));
        await new Promise((r) => setTimeout(r, 5000));
      },
    };
    const wanted = blocks.slice(10, 20).map(sha);
    const t0 = Date.now();
    const fetching = fetcher.fetch(wanted, { onBlock: () => undefined });
    setTimeout(() => {
      for (const c of sharer.swarm.connections) c.destroy();
    }, 300);
    const res = await fetching;
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(res.received).toBe(2);
    expect(res.unanswered).toHaveLength(8);
  });
});
