/**
 * Content addressing: how guest data is cut into blocks and the layer digest those blocks define. The
 * digest is the identity of a layer's content (snapshots/identity.ts) and what a bundle's seal and a
 * sync peer's catalog check a landed layer against; see docs/bundle-format.md.
 */
import { createHash, type Hash } from 'node:crypto';

/**
 * Block: the unit of deduplication. Guest data is cut at multiples of BLOCK_SIZE in guest offsets (and
 * at the ends of data extents), so equal content at equal alignment is one block wherever it is.
 * 64 KiB is QEMU's default cluster size: a layer's delta is made of whole clusters, so a smaller block
 * gains no dedup on default images and a larger one loses it (see docs/bundle-format.md, "Measurements").
 */
export const BLOCK_SIZE = 64 * 1024;

/**
 * SHA-256 over: "clonebox-layer-v1\n", u64 virtual size, u32 cluster size, then per extent in guest
 * order: zero → 'Z' u64 offset u64 length (adjacent zero extents merged), block → 'D' u64 offset
 * u32 length SHA-256(bytes).
 */
export class LayerDigest {
  private readonly h: Hash = createHash('sha256');
  private zero: { offset: number; length: number } | null = null;
  private readonly rec = Buffer.alloc(1 + 8 + 8 + 32);
  dataBytes = 0;
  zeroBytes = 0;
  blocks = 0;

  constructor(virtualSize: number, clusterSize: number) {
    const head = Buffer.alloc(18 + 12);
    head.write('clonebox-layer-v1\n', 0, 'latin1');
    writeU64(head, virtualSize, 18);
    head.writeUInt32BE(clusterSize, 26);
    this.h.update(head);
  }

  private flushZero(): void {
    const z = this.zero;
    if (!z) return;
    this.zero = null;
    const r = this.rec;
    r[0] = 0x5a; // 'Z'
    writeU64(r, z.offset, 1);
    writeU64(r, z.length, 9);
    this.h.update(r.subarray(0, 17));
  }

  addZero(offset: number, length: number): void {
    this.zeroBytes += length;
    if (this.zero && this.zero.offset + this.zero.length === offset) {
      this.zero.length += length;
      return;
    }
    this.flushZero();
    this.zero = { offset, length };
  }

  addBlock(offset: number, length: number, sha: Uint8Array): void {
    this.flushZero();
    this.dataBytes += length;
    this.blocks++;
    const r = this.rec;
    r[0] = 0x44; // 'D'
    writeU64(r, offset, 1);
    r.writeUInt32BE(length, 9);
    r.set(sha, 13);
    this.h.update(r.subarray(0, 45));
  }

  private done: Buffer | null = null;

  /** The digest (the same buffer on every later call; nothing may be added after the first). */
  digest(): Buffer {
    if (!this.done) {
      this.flushZero();
      this.done = this.h.digest();
    }
    return this.done;
  }
}

function writeU64(b: Buffer, v: number, off: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), off);
  b.writeUInt32BE(v >>> 0, off + 4);
}

/** The canonical cut: a block starting at `offset` ends at the next multiple of BLOCK_SIZE (or earlier at the extent's end). */
export function blockEnd(offset: number): number {
  return offset - (offset % BLOCK_SIZE) + BLOCK_SIZE;
}
