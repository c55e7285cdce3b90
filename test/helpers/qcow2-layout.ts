/**
 * A deliberately independent, minimal qcow2 structure parser for tests: finds where the header fields,
 * L1 table, L2 tables and data clusters of a (valid) image are, so that tests can patch precise bytes.
 * It trusts its input: only use it on images made by qemu-img or by clonebox's writer.
 */

/** Byte offsets of header fields (docs/interop/qcow2.rst). */
export const HDR = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  compressionType: 104,
} as const;

const OFFSET_MASK = 0x00fffffffffffe00n;
const COMPRESSED = 1n << 62n;

interface L2Entry {
  /** Index in the L1 table and in the L2 table; guest offset of the cluster. */
  l1Index: number;
  l2Index: number;
  guest: number;
  /** File offset of the entry (and of its subcluster bitmap, +8, with extended L2). */
  at: number;
  value: bigint;
  bitmap: bigint;
  kind: 'data' | 'zero' | 'compressed' | 'unallocated';
  /** Host offset for data / preallocated zero clusters; compressed clusters: the compressed data offset. */
  host: number;
}

export interface Layout {
  buf: Buffer;
  version: number;
  clusterBits: number;
  cs: number;
  virtualSize: number;
  l1Offset: number;
  l1Size: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  headerLength: number;
  extendedL2: boolean;
  /** L2 table host offsets by L1 index (0 = unallocated). */
  l2Tables: number[];
  /** Every non-zero L2 entry (within the L1 entries that are allocated). */
  entries: L2Entry[];
  /** File offset of the header extension of `type`, or -1. */
  extension(type: number): number;
}

export function parseLayout(buf: Buffer): Layout {
  const version = buf.readUInt32BE(HDR.version);
  const clusterBits = buf.readUInt32BE(HDR.clusterBits);
  const cs = 2 ** clusterBits;
  const l1Offset = Number(buf.readBigUInt64BE(HDR.l1TableOffset));
  const l1Size = buf.readUInt32BE(HDR.l1Size);
  const headerLength = version === 2 ? 72 : buf.readUInt32BE(HDR.headerLength);
  const incompat = version === 2 ? 0n : buf.readBigUInt64BE(HDR.incompatibleFeatures);
  const extendedL2 = (incompat & 16n) !== 0n;
  const entryBytes = extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const l2Tables: number[] = [];
  const entries: L2Entry[] = [];
  for (let i = 0; i < l1Size; i++) {
    const off = Number(buf.readBigUInt64BE(l1Offset + i * 8) & OFFSET_MASK);
    l2Tables.push(off);
    if (!off) continue;
    for (let j = 0; j < l2Entries; j++) {
      const at = off + j * entryBytes;
      const value = buf.readBigUInt64BE(at);
      const bitmap = extendedL2 ? buf.readBigUInt64BE(at + 8) : 0n;
      if (value === 0n && bitmap === 0n) continue;
      let kind: L2Entry['kind'];
      let host: number;
      if (value & COMPRESSED) {
        kind = 'compressed';
        const x = BigInt(62 - (clusterBits - 8));
        host = Number(value & ((1n << x) - 1n));
      } else {
        host = Number(value & OFFSET_MASK);
        if (extendedL2) kind = (bitmap & 0xffffffffn) !== 0n ? 'data' : bitmap >> 32n !== 0n ? 'zero' : host ? 'data' : 'unallocated';
        else kind = value & 1n ? 'zero' : host ? 'data' : 'unallocated';
      }
      entries.push({ l1Index: i, l2Index: j, guest: (i * l2Entries + j) * cs, at, value, bitmap, kind, host });
    }
  }
  return {
    buf,
    version,
    clusterBits,
    cs,
    virtualSize: Number(buf.readBigUInt64BE(HDR.size)),
    l1Offset,
    l1Size,
    refcountTableOffset: Number(buf.readBigUInt64BE(HDR.refcountTableOffset)),
    refcountTableClusters: buf.readUInt32BE(HDR.refcountTableClusters),
    headerLength,
    extendedL2,
    l2Tables,
    entries,
    extension(type: number): number {
      let off = headerLength;
      while (off + 8 <= cs && off + 8 <= buf.length) {
        const t = buf.readUInt32BE(off);
        const len = buf.readUInt32BE(off + 4);
        if (t === type) return off;
        if (t === 0) return -1;
        off += 8 + ((len + 7) & ~7);
      }
      return -1;
    },
  };
}
