/**
 * The CPU-heavy work on blocks, as plain functions: hashing a batch, compressing the new blocks of a
 * batch into one frame, decompressing and hashing a frame. They run in worker threads (workers.ts) and,
 * where no worker can be started, on the calling thread. zstd-napi is loaded on first use.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { CloneboxError } from '../errors.js';
import { Codec } from './format.js';

/** The parts of zstd-napi's native binding used here (see node_modules/zstd-napi/binding.d.ts). */
interface ZstdBinding {
  CCtx: new () => { compress(dst: Uint8Array, src: Uint8Array, level: number): number };
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  compressBound(size: number): number;
}

let zstd: ZstdBinding | null = null;
let cctx: InstanceType<ZstdBinding['CCtx']> | null = null;
let dctx: InstanceType<ZstdBinding['DCtx']> | null = null;

function binding(): ZstdBinding {
  if (!zstd) {
    try {
      zstd = createRequire(import.meta.url)('zstd-napi/binding') as ZstdBinding;
    } catch (err) {
      throw new CloneboxError('INTERNAL', `zstd support is not available (${(err as Error).message})`, {
        hint: 'reinstall clonebox with `npm ci` so that zstd-napi builds',
      });
    }
  }
  return zstd;
}

/** SHA-256 of each block: `blocks` holds (offset, length) pairs into `buf`. Returns n × 32 bytes. */
export function hashBlocks(buf: Uint8Array, blocks: Uint32Array): Buffer {
  const n = blocks.length / 2;
  const out = Buffer.from(new ArrayBuffer(n * 32));
  for (let i = 0; i < n; i++) {
    const at = blocks[2 * i]!;
    const len = blocks[2 * i + 1]!;
    createHash('sha256').update(buf.subarray(at, at + len)).digest().copy(out, i * 32);
  }
  return out;
}

export interface FrameOut {
  codec: Codec;
  rawLength: number;
  /** The stored bytes, in a buffer of their own (transferable). */
  stored: Buffer;
}

/**
 * Compresses the selected blocks (indices into `blocks`) as one frame; keeps them raw when zstd does
 * not make them smaller.
 */
export function compressFrame(buf: Uint8Array, blocks: Uint32Array, select: Uint32Array, level: number): FrameOut {
  let raw = 0;
  let contiguous = true;
  let next = -1;
  for (const i of select) {
    const at = blocks[2 * i]!;
    const len = blocks[2 * i + 1]!;
    if (next >= 0 && at !== next) contiguous = false;
    next = at + len;
    raw += len;
  }
  let input: Uint8Array;
  if (contiguous && select.length) {
    const first = blocks[2 * select[0]!]!;
    input = buf.subarray(first, first + raw);
  } else {
    const tmp = Buffer.allocUnsafe(raw);
    let o = 0;
    for (const i of select) {
      const at = blocks[2 * i]!;
      const len = blocks[2 * i + 1]!;
      tmp.set(buf.subarray(at, at + len), o);
      o += len;
    }
    input = tmp;
  }
  const z = binding();
  cctx ??= new z.CCtx();
  const dst = Buffer.from(new ArrayBuffer(z.compressBound(raw)));
  const n = cctx.compress(dst, input, level);
  if (n < raw) return { codec: Codec.Zstd, rawLength: raw, stored: dst.subarray(0, n) };
  const copy = Buffer.from(new ArrayBuffer(raw));
  copy.set(input);
  return { codec: Codec.Raw, rawLength: raw, stored: copy };
}

/**
 * Decompresses a frame into exactly `rawLength` bytes and hashes its blocks. Returns null when the
 * stored bytes are not a zstd frame of that size (damage the caller reports with context).
 */
export function decodeFrame(codec: Codec, stored: Uint8Array, rawLength: number, lengths: Uint32Array): { raw: Buffer; shas: Buffer } | null {
  let raw: Buffer;
  if (codec === Codec.Raw) {
    if (stored.length !== rawLength) return null;
    raw = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
  } else {
    const z = binding();
    dctx ??= new z.DCtx();
    raw = Buffer.from(new ArrayBuffer(rawLength));
    let n: number;
    try {
      // The destination is exactly the promised size: a frame that would produce more fails here.
      n = dctx.decompress(raw, stored);
    } catch {
      dctx = new z.DCtx(); // a failed call may leave the context mid-frame
      return null;
    }
    if (n !== rawLength) return null;
  }
  const blocks = new Uint32Array(lengths.length * 2);
  let at = 0;
  for (let i = 0; i < lengths.length; i++) {
    blocks[2 * i] = at;
    blocks[2 * i + 1] = lengths[i]!;
    at += lengths[i]!;
  }
  return { raw, shas: hashBlocks(raw, blocks) };
}
