/**
 * The frame codec of bundles and sync, and the CPU-heavy work on frames as plain functions: compressing
 * the new blocks of a batch as one zstd frame, decompressing and hashing a frame. They run in worker
 * threads (workers.ts) and, where no worker can be started, on the calling thread. zstd is loaded on
 * first use (src/zstd.ts).
 */
import { createHash } from 'node:crypto';
import { type ZstdBinding, type ZstdDCtx, zstdBinding } from '../zstd.js';

/** How a frame's bytes are stored (a bundle's frame record and a sync block frame carry it). */
export const Codec = { Raw: 0, Zstd: 1 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

/**
 * Frame: the unit of compression. The new blocks of one read batch (consecutive in guest order) are
 * compressed together as one zstd frame of at most FRAME_TARGET raw bytes: compressing each 64 KiB
 * block alone loses much of the ratio on real disks, while frames of a few MiB come close to
 * compressing the whole stream (figures: bench/README.md, "Figures behind the code").
 */
export const FRAME_TARGET = 2 * 1024 * 1024;

let cctx: InstanceType<ZstdBinding['CCtx']> | null = null;
let dctx: ZstdDCtx | null = null;

/** SHA-256 of each block of a frame's raw bytes, blocks back to back of the given lengths: n × 32 bytes. */
export function hashFrame(raw: Uint8Array, lengths: Uint32Array): Buffer {
  const out = Buffer.from(new ArrayBuffer(lengths.length * 32));
  let at = 0;
  for (let i = 0; i < lengths.length; i++) {
    const len = lengths[i]!;
    createHash('sha256')
      .update(raw.subarray(at, at + len))
      .digest()
      .copy(out, i * 32);
    at += len;
  }
  return out;
}

/** Bound on zstd's output for `n` input bytes (size output buffers with it). */
export function compressBound(n: number): number {
  return zstdBinding().compressBound(n);
}

/**
 * Compresses `input` as one zstd frame into `output` (at least compressBound(input) bytes). Returns
 * codec raw when zstd does not make it smaller (the caller then stores `input` as it is).
 */
export function compressInto(input: Uint8Array, output: Uint8Array, level: number): { codec: Codec; length: number } {
  const z = zstdBinding();
  cctx ??= new z.CCtx();
  const n = cctx.compress(output, input, level);
  return n < input.length ? { codec: Codec.Zstd, length: n } : { codec: Codec.Raw, length: input.length };
}

/**
 * Decompresses a frame into exactly `rawLength` bytes and hashes its blocks. Returns null when the
 * stored bytes are not a zstd frame of that size (damage the caller reports with context).
 */
export function decodeFrame(
  codec: Codec,
  stored: Uint8Array,
  rawLength: number,
  lengths: Uint32Array,
  out?: ArrayBuffer,
): { raw: Buffer; shas: Buffer } | null {
  // Into `out` when given (at least rawLength bytes), else into new memory; never more than rawLength.
  const raw = out && out.byteLength >= rawLength ? Buffer.from(out, 0, rawLength) : Buffer.from(new ArrayBuffer(rawLength));
  if (codec === Codec.Raw) {
    if (stored.length !== rawLength) return null;
    raw.set(stored);
  } else {
    const z = zstdBinding();
    dctx ??= new z.DCtx();
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
  return { raw, shas: hashFrame(raw, lengths) };
}
