/**
 * Pack payloads: the records that rebuild layers (frames of new blocks, data placements, zero extents),
 * in the order an importer applies them. Record layouts are in format.ts (RecordType).
 *
 * The writer coalesces: consecutive placements of consecutive block numbers become one Data record,
 * adjacent zero extents one Zero record. The parser checks every count and length against the bytes
 * that are really there before it slices anything; meaning (layer order, offsets) is the decoder's job.
 */
import { createHash } from 'node:crypto';
import { CloneboxError } from '../errors.js';
import {
  BLOCK_SIZE,
  Codec,
  DATA_RECORD_BYTES,
  FRAME_BLOCK_BYTES,
  FRAME_HEAD_BYTES,
  MAX_FRAME_BLOCKS,
  MAX_FRAME_RAW,
  RecordType,
  ZERO_RECORD_BYTES,
} from './format.js';

function writeU64(b: Buffer, v: number, off: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32BE(off);
  if (hi >= 0x200000) return Number.MAX_SAFE_INTEGER + 1; // beyond 2^53: callers' range checks refuse it
  return hi * 0x100000000 + b.readUInt32BE(off + 4);
}

export interface FrameBlock {
  length: number;
  id: Buffer;
}

/**
 * Builds one pack payload at a time, straight into a buffer (no list of parts to join). Two buffers
 * take turns: while one pack is being written out, the next is built in the other.
 */
export class PackWriter {
  private buf: Buffer;
  private spare: Buffer | null;
  private readonly gates = new Map<ArrayBufferLike, Promise<void>>();
  private len = 0;
  private openData: { layer: number; offset: number; first: number; count: number; end: number } | null = null;
  private openZero: { layer: number; offset: number; length: number } | null = null;

  constructor(capacity = 20 * 1024 * 1024) {
    this.buf = Buffer.allocUnsafe(capacity);
    this.spare = Buffer.allocUnsafe(capacity);
  }

  get size(): number {
    return this.len + (this.openData ? DATA_RECORD_BYTES : 0) + (this.openZero ? ZERO_RECORD_BYTES : 0);
  }

  get empty(): boolean {
    return this.size === 0;
  }

  private room(n: number): Buffer {
    if (this.len + n > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    return this.buf;
  }

  private flushOpen(): void {
    if (this.openData) {
      const d = this.openData;
      const b = this.room(DATA_RECORD_BYTES);
      const o = this.len;
      b.writeUInt8(RecordType.Data, o);
      b.writeUInt32BE(d.layer, o + 1);
      writeU64(b, d.offset, o + 5);
      b.writeUInt32BE(d.first, o + 13);
      b.writeUInt32BE(d.count, o + 17);
      this.len += DATA_RECORD_BYTES;
      this.openData = null;
    }
    if (this.openZero) {
      const z = this.openZero;
      const b = this.room(ZERO_RECORD_BYTES);
      const o = this.len;
      b.writeUInt8(RecordType.Zero, o);
      b.writeUInt32BE(z.layer, o + 1);
      writeU64(b, z.offset, o + 5);
      writeU64(b, z.length, o + 13);
      this.len += ZERO_RECORD_BYTES;
      this.openZero = null;
    }
  }

  frame(codec: Codec, blocks: FrameBlock[], stored: Buffer): void {
    this.flushOpen();
    const b = this.room(FRAME_HEAD_BYTES + blocks.length * FRAME_BLOCK_BYTES + stored.length);
    let o = this.len;
    b.writeUInt8(RecordType.Frame, o);
    b.writeUInt8(codec, o + 1);
    b.writeUInt32BE(blocks.length, o + 2);
    b.writeUInt32BE(stored.length, o + 6);
    o += FRAME_HEAD_BYTES;
    for (const blk of blocks) {
      b.writeUInt32BE(blk.length, o);
      blk.id.copy(b, o + 4);
      o += FRAME_BLOCK_BYTES;
    }
    stored.copy(b, o);
    this.len = o + stored.length;
  }

  data(layer: number, offset: number, block: number, length: number): void {
    const d = this.openData;
    if (d && d.layer === layer && d.end === offset && d.first + d.count === block) {
      d.count++;
      d.end += length;
      return;
    }
    this.flushOpen();
    this.openData = { layer, offset, first: block, count: 1, end: offset + length };
  }

  zero(layer: number, offset: number, length: number): void {
    const z = this.openZero;
    if (z && z.layer === layer && z.offset + z.length === offset) {
      z.length += length;
      return;
    }
    this.flushOpen();
    this.openZero = { layer, offset, length };
  }

  /**
   * The payload so far; the writer starts over in the other buffer. Give the payload back with
   * `release()` and wait for `ready()` before adding records again.
   */
  take(): Buffer {
    this.flushOpen();
    const out = this.buf.subarray(0, this.len);
    this.buf = this.spare ?? Buffer.allocUnsafe(this.buf.length);
    this.spare = null;
    this.len = 0;
    return out;
  }

  /** The buffer behind `payload` may be reused once `free` resolves (its bytes were written out). */
  release(payload: Buffer, free: Promise<void>): void {
    this.spare = Buffer.from(payload.buffer as ArrayBuffer, payload.byteOffset, payload.buffer.byteLength - payload.byteOffset);
    this.gates.set(payload.buffer, free);
  }

  /** Waits until the buffer now in use is free to be written. */
  async ready(): Promise<void> {
    const gate = this.gates.get(this.buf.buffer);
    if (gate) {
      await gate;
      this.gates.delete(this.buf.buffer);
    }
  }
}

export type PackRecord =
  | { type: 'frame'; codec: Codec; lengths: number[]; ids: Buffer[]; rawLength: number; stored: Buffer }
  | { type: 'data'; layer: number; offset: number; first: number; count: number }
  | { type: 'zero'; layer: number; offset: number; length: number };

/** Parses a pack payload; throws BUNDLE_CORRUPT naming the pack and the byte offset of the bad record. */
export function* parsePack(p: Buffer, where: string, file: string): Generator<PackRecord> {
  const bad = (at: number, what: string) =>
    new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or was modified: ${where}, record at byte ${at}: ${what}, ${file}`, {
      hint: 'the file changed after export, or was written by a broken tool; get an intact copy',
    });
  let o = 0;
  while (o < p.length) {
    const at = o;
    const type = p[o]!;
    if (type === RecordType.Frame) {
      if (p.length - o < FRAME_HEAD_BYTES) throw bad(at, 'frame header runs past the end of the pack');
      const codec = p[o + 1]!;
      if (codec !== Codec.Raw && codec !== Codec.Zstd) throw bad(at, `unknown codec ${codec}`);
      const n = p.readUInt32BE(o + 2);
      const storedLen = p.readUInt32BE(o + 6);
      if (n < 1 || n > MAX_FRAME_BLOCKS) throw bad(at, `frame claims ${n} blocks`);
      o += FRAME_HEAD_BYTES;
      if (p.length - o < n * FRAME_BLOCK_BYTES) throw bad(at, 'frame block list runs past the end of the pack');
      const lengths: number[] = new Array(n);
      const ids: Buffer[] = new Array(n);
      let raw = 0;
      for (let i = 0; i < n; i++) {
        const len = p.readUInt32BE(o);
        if (len < 1 || len > BLOCK_SIZE) throw bad(at, `block ${i} claims ${len} bytes`);
        lengths[i] = len;
        ids[i] = p.subarray(o + 4, o + 4 + 32);
        raw += len;
        o += FRAME_BLOCK_BYTES;
      }
      if (raw > MAX_FRAME_RAW) throw bad(at, `frame claims ${raw} raw bytes`);
      if (storedLen > p.length - o) throw bad(at, `frame data (${storedLen} bytes) runs past the end of the pack`);
      if (codec === Codec.Raw && storedLen !== raw) throw bad(at, 'raw frame size differs from its blocks');
      if (storedLen === 0) throw bad(at, 'empty frame data');
      yield { type: 'frame', codec: codec as Codec, lengths, ids, rawLength: raw, stored: p.subarray(o, o + storedLen) };
      o += storedLen;
    } else if (type === RecordType.Data) {
      if (p.length - o < DATA_RECORD_BYTES) throw bad(at, 'data record runs past the end of the pack');
      const rec = {
        type: 'data' as const,
        layer: p.readUInt32BE(o + 1),
        offset: readU64(p, o + 5),
        first: p.readUInt32BE(o + 13),
        count: p.readUInt32BE(o + 17),
      };
      if (rec.count < 1) throw bad(at, 'data record places no blocks');
      o += DATA_RECORD_BYTES;
      yield rec;
    } else if (type === RecordType.Zero) {
      if (p.length - o < ZERO_RECORD_BYTES) throw bad(at, 'zero record runs past the end of the pack');
      const rec = { type: 'zero' as const, layer: p.readUInt32BE(o + 1), offset: readU64(p, o + 5), length: readU64(p, o + 13) };
      if (rec.length < 1) throw bad(at, 'empty zero extent');
      o += ZERO_RECORD_BYTES;
      yield rec;
    } else {
      throw bad(at, `unknown record type ${type}`);
    }
  }
}

/**
 * The digest a plain bundle's pack tag covers: SHA-256 over `prefix` and every byte of the payload
 * except the frames' stored bytes, which need no second hash (every block they hold is checked against
 * its SHA-256 id once decompressed). Throws BUNDLE_CORRUPT when the payload does not parse.
 */
export function packDigest(prefix: Buffer, payload: Buffer, where: string, file: string): Buffer {
  const h = createHash('sha256').update(prefix);
  let pos = 0;
  for (const rec of parsePack(payload, where, file)) {
    if (rec.type !== 'frame') continue;
    const start = rec.stored.byteOffset - payload.byteOffset;
    h.update(payload.subarray(pos, start));
    pos = start + rec.stored.length;
  }
  h.update(payload.subarray(pos));
  return h.digest();
}
