/**
 * Reading a bundle, for import, verify and inspect: the entries in their only valid order, the key,
 * every seal, and every record checked against the meta before a sink sees it.
 *
 *   BundleReader   header → key → meta → packs → seal → end of archive (tar.ts does the tar part)
 *   decodeBundle   applies the packs' records in order: checks each map piece (layer order, offsets
 *                  inside the disk and increasing, extents on cluster boundaries, canonical block
 *                  cuts, block numbers that exist), decompresses each frame and checks every block
 *                  against its id, recomputes each layer's digest and finally checks the seal
 *                  (pack count, digests, totals, content ids) — then, and only then, returns.
 * A sink receives the checked pieces: import writes them, verify only counts.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CloneboxError } from '../errors.js';
import { contentId } from '../snapshots/identity.js';
import { LayerDigest, blockEnd } from '../content/digest.js';
import { blockId, deriveMaster, encKey, idKey, keyCheck, Sealer, type KeySource } from './crypto.js';
import {
  BLOCK_SIZE, FRAME_TARGET, ENTRY_HEADER, ENTRY_META, ENTRY_SEAL, EntryKind, HEADER_SIZE, KeyKind, MAX_META_BYTES, MAX_PACK_BYTES, MAX_PACKS,
  MAX_SEAL_BYTES, packEntryName, type Codec, type Meta, type Seal, type SealTotals,
} from './format.js';
import { decodeHeader, decodeMeta, decodeSeal, headerPrefix, type BundleHeader } from './manifest.js';
import { parsePack, type PackRecord } from './packs.js';
import { TarReader } from './tar.js';
import type { WorkerPool } from '../content/workers.js';
import type { WorkerReply } from '../content/worker.js';

export function corrupt(what: string, file: string): CloneboxError {
  return new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or was modified: ${what}, ${file}`, {
    hint: 'the file changed after export (or was cut short); nothing was written; get an intact copy',
  });
}

export class BundleReader {
  header!: BundleHeader;
  meta!: Meta;
  sealer!: Sealer;
  /** Key for block ids (encrypted bundles). */
  idk: Buffer | null = null;
  seal: Seal | null = null;
  packsSeen = 0;
  /** The payload nextPack() returned last (frames' stored bytes are views into it). */
  lastPayload: Buffer | null = null;
  private readonly tar: TarReader;
  private pending: Promise<{ name: string; data: Buffer; offset: number } | null> | null = null;
  /** Where each pack's data starts in the file, and its nonce (encrypted bundles). */
  private readonly packAt: { offset: number; nonce: Buffer | null }[] = [];
  /** Set when the bundle is a file that can be read again (import re-reads frames instead of spooling). */
  private seekable: string | null = null;
  private rereadFh: Promise<import('node:fs/promises').FileHandle> | null = null;

  private constructor(input: Readable | AsyncIterable<Buffer>, readonly file: string) {
    this.tar = new TarReader(input, file);
  }

  /** Declares the input a regular file at `path` (not a pipe): earlier frames can be read again from it. */
  setSeekable(path: string): void {
    this.seekable = path;
  }

  get canReread(): boolean {
    return this.seekable !== null;
  }

  /**
   * Reads bytes [p, p + length) of pack `index`'s payload again from the file. The pack
   * authenticated when it was read; the caller checks what comes back (block ids).
   */
  async reread(index: number, p: number, length: number): Promise<Buffer> {
    const where = this.packAt[index]!;
    const range = this.sealer.rangeOf(p, length);
    const buf = Buffer.allocUnsafe(range.length);
    this.rereadFh ??= open(this.seekable!, 'r');
    const fh = await this.rereadFh;
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, where.offset + range.at + got);
      if (bytesRead === 0) throw new CloneboxError('BUNDLE_CHANGED', `the bundle file was changed or cut while importing, ${this.file}`);
      got += bytesRead;
    }
    return where.nonce ? this.sealer.decryptRange(where.nonce, buf, range) : buf;
  }

  get bytesIn(): number {
    return this.tar.bytesIn;
  }

  /** Reads and checks the header (and key) and the meta. */
  static async open(input: Readable | AsyncIterable<Buffer>, file: string, key: KeySource | null, opts: { lockedOk?: boolean } = {}): Promise<BundleReader> {
    const r = new BundleReader(input, file);
    try {
      await r.start(key, Boolean(opts.lockedOk));
    } catch (err) {
      r.destroy();
      throw err;
    }
    return r;
  }

  /** Set when the bundle is encrypted, no key was given and the caller accepted that (inspect). */
  locked = false;

  private async start(key: KeySource | null, lockedOk: boolean): Promise<void> {
    const first = await this.tar.next((name) => {
      if (name !== ENTRY_HEADER) throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (first entry is ${JSON.stringify(name)}), ${this.file}`);
      return HEADER_SIZE;
    });
    if (!first) throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (empty archive), ${this.file}`);
    const h = decodeHeader(first.data, this.file);
    this.header = h;
    if (!h.encrypted) this.sealer = new Sealer(h.checksum, null);
    else {
      const kind = h.keyKind === KeyKind.Passphrase ? 'passphrase' : 'keyfile';
      if (!key && lockedOk) {
        this.locked = true;
        return;
      }
      if (!key) {
        throw new CloneboxError('KEY_REQUIRED', `bundle is encrypted, ${this.file}`, {
          hint: kind === 'passphrase' ? 'pass its passphrase with --passphrase-file FILE' : 'pass its key with --key-file FILE',
        });
      }
      if (key.kind !== kind) {
        throw new CloneboxError('WRONG_KEY', `bundle is encrypted with a ${kind === 'passphrase' ? 'passphrase' : 'key file'}, not a ${key.kind === 'passphrase' ? 'passphrase' : 'key file'}, ${this.file}`, {
          hint: kind === 'passphrase' ? 'use --passphrase-file' : 'use --key-file',
        });
      }
      const master = await deriveMaster(key, { salt: h.salt, opslimit: h.opslimit, memlimit: h.memlimit });
      if (!keyCheck(master, headerPrefix(h)).equals(h.keyCheck)) {
        master.fill(0);
        throw new CloneboxError('WRONG_KEY', `wrong ${kind === 'passphrase' ? 'passphrase' : 'key'} for this bundle, ${this.file}`, {
          hint: `the bundle is intact; it was encrypted with another ${kind === 'passphrase' ? 'passphrase' : 'key'} (${key.file})`,
        });
      }
      this.sealer = new Sealer(h.checksum, encKey(master, h.bundleId));
      this.idk = idKey(master);
      master.fill(0);
    }
    const m = await this.tar.next((name) => {
      if (name !== ENTRY_META) throw corrupt(`expected the meta entry after the header, found ${JSON.stringify(name)}`, this.file);
      return MAX_META_BYTES;
    });
    if (!m) throw corrupt('the archive ends after the header', this.file);
    const payload = this.sealer.open(EntryKind.Meta, 0, m.data);
    if (!payload) throw corrupt('the meta fails authentication', this.file);
    this.meta = decodeMeta(payload, this.file);
  }

  /**
   * Two buffers take turns for pack entries (and two for decrypted payloads): pack k is read into
   * buffer k % 2 while the caller still works on pack k - 1 in the other one.
   */
  private readonly entryBufs: (Buffer | null)[] = [null, null];
  private readonly plainBufs: (Buffer | null)[] = [null, null];

  private static turn(bufs: (Buffer | null)[], k: number, size: number): Buffer {
    const b = bufs[k % 2];
    if (b && b.length >= size) return b.subarray(0, size);
    // Room to spare: a pack a little larger than the last must not cost a fresh (page-faulting) buffer.
    // Shared memory: the workers decode frames where they lie, nothing is copied or transferred.
    const fresh = Buffer.from(new SharedArrayBuffer(Math.max(Math.ceil(size * 1.25), 12 * 1024 * 1024)));
    bufs[k % 2] = fresh;
    return fresh.subarray(0, size);
  }

  private fetch(): Promise<{ name: string; data: Buffer; offset: number } | null> {
    const want = packEntryName(this.packsSeen);
    const k = this.packsSeen;
    return this.tar.next((name) => {
      if (name === want) return MAX_PACK_BYTES;
      if (name === ENTRY_SEAL) return MAX_SEAL_BYTES;
      throw corrupt(`expected ${want} or seal, found ${JSON.stringify(name)}`, this.file);
    }, (size) => BundleReader.turn(this.entryBufs, k, size));
  }

  /**
   * The next pack's payload (authenticated), or null once the seal has been read and checked to be the
   * last entry. The following entry is read ahead while the caller works on this one.
   */
  async nextPack(): Promise<Buffer | null> {
    if (this.seal) return null;
    const e = await (this.pending ?? this.fetch());
    this.pending = null;
    if (!e) throw corrupt(`the archive ends after ${this.packsSeen} pack(s), without its seal (cut short?)`, this.file);
    if (e.name === ENTRY_SEAL) {
      const payload = this.sealer.open(EntryKind.Seal, 0, e.data);
      if (!payload) throw corrupt('the seal fails authentication', this.file);
      this.seal = decodeSeal(payload, this.meta, this.file);
      if (this.seal.packs !== this.packsSeen) throw corrupt(`the seal counts ${this.seal.packs} packs, the archive holds ${this.packsSeen}`, this.file);
      const after = await this.tar.next((name) => {
        throw corrupt(`unexpected entry ${JSON.stringify(name)} after the seal`, this.file);
      });
      if (after) throw corrupt('unexpected entry after the seal', this.file);
      return null;
    }
    const index = this.packsSeen;
    if (index >= MAX_PACKS) throw corrupt('too many packs', this.file);
    const payload = this.sealer.open(EntryKind.Pack, index, e.data, (size) => BundleReader.turn(this.plainBufs, index, size));
    if (!payload) throw corrupt(`${e.name} fails authentication (changed, damaged, or moved from another position or bundle)`, this.file);
    this.packAt[index] = { offset: e.offset, nonce: this.sealer.encrypted ? Buffer.from(e.data.subarray(0, 24)) : null };
    this.lastPayload = payload;
    this.packsSeen++;
    this.pending = this.fetch();
    this.pending.catch(() => undefined); // surfaces on the next call
    return payload;
  }

  destroy(): void {
    this.tar.destroy();
    this.rereadFh?.then((fh) => fh.close()).catch(() => undefined);
    this.rereadFh = null;
  }
}

// ------------------------------------------------------------------------------------ decoding

/** What a decoder hands over, in bundle order. Offsets and lengths are checked; data is verified. */
export interface BundleSink {
  /** Layers start in order; every layer starts (and ends) exactly once, even an empty one. */
  beginLayer?(layer: number): Promise<void>;
  endLayer?(layer: number): Promise<void>;
  /** A verified frame: its stored bytes and its raw bytes (all blocks concatenated). */
  frame?(frame: number, codec: Codec, stored: Buffer, raw: Buffer): Promise<void>;
  /** Block `block` (bytes `data`, when the sink asked for data) goes at `offset` of `layer`. */
  data?(layer: number, offset: number, block: number, length: number, data: Buffer | null): Promise<void>;
  zero?(layer: number, offset: number, length: number): Promise<void>;
  /**
   * The stored bytes of an earlier frame, when the decoder needs its blocks again and the bundle is not
   * a file it can read again (import from a pipe spools them).
   */
  storedBytes?(frame: number): Promise<Buffer>;
  /**
   * Block `block`'s `length` bytes read back from where the sink already wrote them (synchronously;
   * the buffer is valid until the next call), or null when they are not readable there yet. Cheaper
   * than decoding the block's frame again; the decoder checks them against the block's hash.
   */
  readBack?(block: number, length: number): Buffer | null;
  /** Whether the sink has placed `block` somewhere it may read it back from (for read-ahead). */
  canReadBack?(block: number): boolean;
}

/** Recently used raw frames, newest last, within a byte budget. */
class FrameCache {
  private readonly map = new Map<number, Buffer>();
  private bytes = 0;
  constructor(private readonly budget: number, private readonly evicted: (raw: Buffer) => void) {}
  get(n: number): Buffer | undefined {
    const b = this.map.get(n);
    if (b) {
      this.map.delete(n);
      this.map.set(n, b);
    }
    return b;
  }
  has(n: number): boolean {
    return this.map.has(n);
  }
  put(n: number, raw: Buffer): void {
    this.map.set(n, raw);
    this.bytes += raw.length;
    while (this.bytes > this.budget && this.map.size > 1) {
      const [k, v] = this.map.entries().next().value!;
      this.map.delete(k);
      this.bytes -= v.length;
      this.evicted(v);
    }
  }
}

export interface DecodeResult {
  seal: Seal;
  digests: Buffer[];
  totals: SealTotals;
  contentIds: string[];
}

/** Growable table of 32-byte rows. */
class Rows32 {
  b = Buffer.alloc(32 * 1024);
  n = 0;
  push(v: Uint8Array): void {
    if ((this.n + 1) * 32 > this.b.length) {
      const c = Buffer.alloc(this.b.length * 2);
      this.b.copy(c);
      this.b = c;
    }
    this.b.set(v, this.n * 32);
    this.n++;
  }
  row(i: number): Buffer {
    return this.b.subarray(i * 32, i * 32 + 32);
  }
}

/** Growable u32 column. */
class U32s {
  a = new Uint32Array(1024);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Uint32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
}

export async function decodeBundle(r: BundleReader, pool: WorkerPool, sink: BundleSink, opts: { wantData: boolean; onPack?: () => void }): Promise<DecodeResult> {
  const { meta, file } = r;
  const layers = meta.layers;
  const digests = layers.map((l) => new LayerDigest(l.virtual_size, l.cluster_size));
  // Per block number: its frame, its offset in the frame's raw bytes, its length; its SHA-256 (for digests).
  const blkFrame = new U32s();
  const blkAt = new U32s();
  const blkLen = new U32s();
  const shas = new Rows32();
  let frames = 0;
  const totals: SealTotals = { logical_bytes: 0, unique_bytes: 0, stored_bytes: 0, blocks: 0, unique_blocks: 0, frames: 0 };
  let cur = -1;
  // Map state of the current layer.
  let pos = 0; // end of the last extent piece
  let kind: 'data' | 'zero' | null = null; // kind of the extent ending at pos
  let extentStart = 0;

  const layerName = (li: number) => `layer ${li} (snapshot ${meta.snapshots[layers[li]!.snapshot]!.name}, disk ${layers[li]!.target})`;
  const closeExtent = (li: number) => {
    if (kind === null) return;
    const l = layers[li]!;
    if (pos % l.cluster_size !== 0 && pos !== l.virtual_size) {
      throw corrupt(`${layerName(li)}: ${kind} extent at ${extentStart} ends at ${pos}, inside a cluster`, file);
    }
    kind = null;
  };
  const advance = async (to: number) => {
    while (cur < to) {
      if (cur >= 0) {
        closeExtent(cur);
        await sink.endLayer?.(cur);
      }
      cur++;
      pos = 0;
      kind = null;
      if (cur < layers.length) await sink.beginLayer?.(cur);
    }
  };
  const place = (li: number, offset: number, length: number, k: 'data' | 'zero') => {
    if (li >= layers.length) throw corrupt(`a record names layer ${li}; the bundle has ${layers.length}`, file);
    if (li < cur) throw corrupt(`a record for ${layerName(li)} comes after records of layer ${cur}`, file);
    const l = layers[li]!;
    if (offset < pos) throw corrupt(`${layerName(li)}: ${k} at ${offset} overlaps or precedes the previous piece (ending at ${pos})`, file);
    if (offset + length > l.virtual_size) throw corrupt(`${layerName(li)}: ${k} at ${offset}+${length} runs past the disk's end (${l.virtual_size})`, file);
    if (offset !== pos || k !== kind) {
      closeExtent(li);
      if (offset % l.cluster_size !== 0) throw corrupt(`${layerName(li)}: ${k} extent starts at ${offset}, inside a cluster`, file);
      kind = k;
      extentStart = offset;
    }
  };

  // Stored bytes and raw frames cross to a worker in buffers that come back and are used again.
  const storedSize = 3 * 1024 * 1024;
  const rawSize = FRAME_TARGET + BLOCK_SIZE;
  // Pools as deep as the frames in flight: every fresh buffer costs a page fault per 4 KiB when first
  // touched, and shallow pools made an import fault in a large share of its data again (bench/README.md).
  const POOL_MAX = 12;
  const storedPool: ArrayBuffer[] = [];
  const rawPool: ArrayBuffer[] = [];
  type Decoded = { raw: Buffer; shas: Buffer } | null;
  const decodeFrame = (codec: Codec, stored: Buffer, rawLength: number, lengths: Uint32Array): Promise<Decoded> => {
    // Frames of a pack lie in shared memory (BundleReader.turn) and are decoded in place; the pack's
    // buffer is not reused before every frame of it has come back. Re-read frames are copied over.
    let src: ArrayBuffer | SharedArrayBuffer;
    let offset = 0;
    const transfer: ArrayBuffer[] = [];
    if (stored.buffer instanceof SharedArrayBuffer) {
      src = stored.buffer;
      offset = stored.byteOffset;
    } else {
      const ab = stored.length <= storedSize ? storedPool.pop() ?? new ArrayBuffer(storedSize) : new ArrayBuffer(stored.length);
      stored.copy(Buffer.from(ab));
      src = ab;
      transfer.push(ab);
    }
    // Raw frames decode into pooled memory: given back on eviction (import) or at once (verify).
    const output = rawLength <= rawSize ? rawPool.pop() ?? new ArrayBuffer(rawSize) : undefined;
    if (output) transfer.push(output);
    const msg = { op: 'decode' as const, id: pool.newId(), codec, stored: src, offset, length: stored.length, rawLength, lengths, ...(output ? { output } : {}) };
    return pool.request(pool.pick(), msg, transfer).then((rep) => {
      if ('stored' in rep && rep.stored instanceof ArrayBuffer && rep.stored.byteLength === storedSize && storedPool.length < POOL_MAX) storedPool.push(rep.stored);
      if ('bad' in rep) {
        if (rep.output) rawPool.push(rep.output);
        return null;
      }
      const r = rep as Extract<WorkerReply, { raw: ArrayBuffer }>;
      return { raw: Buffer.from(r.raw, 0, r.rawLength), shas: Buffer.from(r.shas) };
    });
  };

  // Import only: raw frames kept for blocks placed again later, and how to get evicted ones back.
  // Evicted frames' memory is reused, so evictions happen only here in the record loop, never while
  // a sink is still using a block's bytes (reloads land in `reloaded` and enter the cache when used).
  const giveRaw = (raw: Buffer) => {
    if (raw.buffer.byteLength === rawSize && rawPool.length < POOL_MAX) rawPool.push(raw.buffer as ArrayBuffer);
  };
  const cache = new FrameCache(16 * 1024 * 1024, giveRaw);
  const frameInfo: { codec: Codec; rawLength: number; lengths: Uint32Array; first: number; pack: number; at: number; stored: number }[] = [];
  const pending = new Map<number, Promise<Buffer>>();
  const reload = (f: number): Promise<Buffer> => {
    let p = pending.get(f);
    if (!p) {
      const info = frameInfo[f]!;
      // From the bundle file itself when it is one, else from the import's spool; checked by block id.
      const stored = r.canReread ? r.reread(info.pack, info.at, info.stored) : sink.storedBytes!(f);
      p = stored.then((b) => decodeFrame(info.codec, b, info.rawLength, info.lengths)).then((d) => {
        const changed = () => new CloneboxError('BUNDLE_CHANGED', `the bundle (or a temporary file) changed while importing, ${file}`, {
          hint: 'nothing was imported; do not modify the bundle while it is being imported',
        });
        if (!d) throw changed();
        for (let i = 0; i < info.lengths.length; i++) {
          if (!d.shas.subarray(i * 32, i * 32 + 32).equals(shas.row(info.first + i))) throw changed();
        }
        return d.raw;
      });
      p.catch(() => undefined);
      pending.set(f, p);
    }
    return p;
  };
  const frameRaw = async (f: number): Promise<Buffer> => {
    const hit = cache.get(f);
    if (hit) return hit;
    const raw = await reload(f);
    pending.delete(f);
    cache.put(f, raw);
    return raw;
  };
  /** Frames decoded ahead of use, and earlier frames fetched ahead of the records that need them. */
  const DECODE_AHEAD = 2 * pool.size;
  const REFS_AHEAD = 3;

  let packNo = 0;
  for (;;) {
    const payload = await r.nextPack();
    if (payload === null) break;
    const where = packEntryName(packNo);
    const records = [...parsePack(payload, where, file)];
    const frameRecs = records.filter((x): x is Extract<PackRecord, { type: 'frame' }> => x.type === 'frame');
    const decoding: Promise<Decoded>[] = [];
    let consumed = 0;
    const decodeAhead = () => {
      while (decoding.length < frameRecs.length && decoding.length - consumed < DECODE_AHEAD) {
        const rec = frameRecs[decoding.length]!;
        const p = decodeFrame(rec.codec, rec.stored, rec.rawLength, Uint32Array.from(rec.lengths));
        p.catch(() => undefined);
        decoding.push(p);
      }
    };
    decodeAhead();
    // Earlier frames this pack's records use, in order of first use: fetched a few ahead.
    const known = blkLen.n;
    const refOrder: number[] = [];
    const refIndex = new Map<number, number>();
    if (opts.wantData) {
      for (const rec of records) {
        if (rec.type !== 'data') continue;
        const end = Math.min(rec.first + rec.count, known);
        for (let n = rec.first; n < end; n++) {
          const f = blkFrame.a[n]!;
          if (sink.canReadBack?.(n)) continue;
          if (!refIndex.has(f)) {
            refIndex.set(f, refOrder.length);
            refOrder.push(f);
          }
        }
      }
    }
    let refNext = 0;
    const refsAhead = (upTo: number) => {
      for (let i = Math.max(refNext, upTo); i < Math.min(refOrder.length, upTo + REFS_AHEAD); i++) {
        const f = refOrder[i]!;
        if (!cache.has(f)) void reload(f);
      }
      refNext = Math.max(refNext, upTo);
    };
    refsAhead(0);
    for (const rec of records) {
      if (rec.type === 'frame') {
        const d = await decoding[consumed]!;
        consumed++;
        decodeAhead();
        if (!d) throw corrupt(`${where}: frame ${frames} does not decompress to its ${rec.rawLength} bytes`, file);
        const sh = d.shas;
        let at = 0;
        for (let i = 0; i < rec.lengths.length; i++) {
          const sha = sh.subarray(i * 32, i * 32 + 32);
          if (!blockId(sha, r.idk).equals(rec.ids[i]!)) {
            throw corrupt(`${where}: block ${blkLen.n} does not match its id`, file);
          }
          if (blkLen.n >= 0xffffffff) throw corrupt('too many blocks', file);
          blkFrame.push(frames);
          blkAt.push(at);
          blkLen.push(rec.lengths[i]!);
          shas.push(sha);
          at += rec.lengths[i]!;
        }
        await sink.frame?.(frames, rec.codec, rec.stored, d.raw);
        if (opts.wantData) {
          frameInfo[frames] = {
            codec: rec.codec, rawLength: rec.rawLength, lengths: Uint32Array.from(rec.lengths), first: blkLen.n - rec.lengths.length,
            pack: packNo, at: rec.stored.byteOffset - payload.byteOffset, stored: rec.stored.length,
          };
          cache.put(frames, d.raw);
        } else {
          giveRaw(d.raw);
        }
        totals.frames++;
        totals.unique_blocks += rec.lengths.length;
        totals.unique_bytes += rec.rawLength;
        totals.stored_bytes += rec.stored.length;
        frames++;
        continue;
      }
      if (rec.type === 'zero') {
        if (rec.layer >= layers.length) throw corrupt(`a record names layer ${rec.layer}; the bundle has ${layers.length}`, file);
        if (rec.layer < cur) throw corrupt(`a record for layer ${rec.layer} comes after records of layer ${cur}`, file);
        await advance(rec.layer);
        place(rec.layer, rec.offset, rec.length, 'zero');
        pos = rec.offset + rec.length;
        digests[rec.layer]!.addZero(rec.offset, rec.length);
        await sink.zero?.(rec.layer, rec.offset, rec.length);
        continue;
      }
      // data
      if (rec.layer >= layers.length) throw corrupt(`a record names layer ${rec.layer}; the bundle has ${layers.length}`, file);
      if (rec.layer < cur) throw corrupt(`a record for layer ${rec.layer} comes after records of layer ${cur}`, file);
      if (rec.first + rec.count > blkLen.n) throw corrupt(`${where}: a data record places blocks ${rec.first}..${rec.first + rec.count - 1}, only ${blkLen.n} exist so far`, file);
      await advance(rec.layer);
      let o = rec.offset;
      for (let n = rec.first; n < rec.first + rec.count; n++) {
        const len = blkLen.a[n]!;
        // Canonical cut: a block never crosses a BLOCK_SIZE boundary, and data never continues a
        // block that stopped short of its boundary.
        if (len > blockEnd(o) - o) throw corrupt(`${layerName(rec.layer)}: block at ${o} crosses a ${BLOCK_SIZE}-byte boundary`, file);
        if (o === pos && kind === 'data' && pos % BLOCK_SIZE !== 0) throw corrupt(`${layerName(rec.layer)}: data at ${o} continues a short block`, file);
        place(rec.layer, o, len, 'data');
        pos = o + len;
        digests[rec.layer]!.addBlock(o, len, shas.row(n));
        totals.blocks++;
        totals.logical_bytes += len;
        let bytes: Buffer | null = null;
        if (opts.wantData) {
          const f = blkFrame.a[n]!;
          const hit = cache.get(f);
          const back = hit ? null : sink.readBack?.(n, len) ?? null;
          if (hit) {
            bytes = hit.subarray(blkAt.a[n]!, blkAt.a[n]! + len);
          } else if (back) {
            if (!createHash('sha256').update(back).digest().equals(shas.row(n))) {
              throw new CloneboxError('BUNDLE_CHANGED', `a temporary file of this import changed while importing (block ${n} read back differs), ${file}`, {
                hint: 'nothing was imported; check the disk and that nothing else writes to the destination directory',
              });
            }
            bytes = back;
          } else {
            const ri = refIndex.get(f);
            if (ri !== undefined && ri >= refNext) refsAhead(ri);
            const raw = await frameRaw(f);
            const at = blkAt.a[n]!;
            bytes = raw.subarray(at, at + len);
          }
        }
        await sink.data?.(rec.layer, o, n, len, bytes);
        o += len;
      }
    }
    packNo++;
    opts.onPack?.();
  }
  await advance(layers.length);
  // Everything is read: now the seal must agree with what we saw.
  const seal = r.seal!;
  const out: Buffer[] = [];
  for (const [li, d] of digests.entries()) {
    const got = d.digest();
    out.push(got);
    const want = seal.layers[li]!;
    if (want.digest !== got.toString('hex')) throw corrupt(`${layerName(li)}: content digest differs from the seal`, file);
    if (want.data_bytes !== d.dataBytes || want.zero_bytes !== d.zeroBytes || want.blocks !== d.blocks) {
      throw corrupt(`${layerName(li)}: sizes differ from the seal`, file);
    }
  }
  for (const k of Object.keys(totals) as (keyof SealTotals)[]) {
    if (seal.totals[k] !== totals[k]) throw corrupt(`totals: ${k} is ${seal.totals[k]} in the seal, ${totals[k]} in the packs`, file);
  }
  const ids: string[] = [];
  for (const [si, s] of meta.snapshots.entries()) {
    const parentId = si === 0 ? (meta.since ? meta.since.content_id : null) : ids[si - 1]!;
    const sealed = seal.snapshots[si]!.content_id;
    if (s.content_id !== null) {
      if (s.content_id !== sealed) throw corrupt(`snapshot ${s.name}: content id differs between meta and seal`, file);
    } else {
      const derived = contentId(parentId, layers.flatMap((l, li) => (l.snapshot === si ? [{ target: l.target, digest: out[li]! }] : [])));
      if (derived !== sealed) throw corrupt(`snapshot ${s.name}: content id does not match its layers`, file);
    }
    ids.push(sealed);
  }
  return { seal, digests: out, totals, contentIds: ids };
}
