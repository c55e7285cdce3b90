/**
 * Replay of an ext3/ext4 journal (jbd2) in memory, for a state taken while the filesystem was mounted.
 *
 * A running guest's filesystem holds its latest metadata (new inodes, directory entries, bitmaps) in
 * the journal until the kernel writes it to its place; a snapshot of a running VM catches that
 * moment. Reading the blocks at their place would miss those changes, so the reader does what the
 * kernel does at mount (and e2fsck at check): scan the log from its start, keep the transactions
 * that have a commit block, drop the blocks a later revoke record cancels, and let each remaining
 * journal copy stand in for its block. Nothing is written: the copies are an overlay on the
 * partition (JournalOverlay), so the guest's disk is read as the kernel would see it after mounting.
 *
 * The log format (big-endian), as jbd2 writes it (Documentation/filesystems/ext4/journal.rst):
 *   every log block but data starts with magic 0xC03B3998, block type, transaction sequence;
 *   superblock (type 3 or 4): block size @12, log length @16, first log block @20, sequence of the
 *     first transaction @24, start of the log @28 (0: nothing to replay), incompatible features @40,
 *     fast-commit blocks @84;
 *   descriptor (1): tags from byte 12, each naming the filesystem block of the data block that follows
 *     in the log (flags: 1 the copy's first 4 bytes were the magic, escaped to 0; 2 same UUID as the
 *     previous tag, else 16 bytes of UUID follow; 8 last tag); with checksums v2/v3 the last 4 bytes
 *     of the block are a checksum tail;
 *   commit (2): the transaction is complete;
 *   revoke (5): bytes used @12, then block numbers (8 bytes with the 64-bit feature, else 4).
 * The log wraps from its last block to its first.
 *
 * Not done, and said in a warning: fast-commit records (ext4's fast_commit feature keeps them in an
 * area after the log; replaying them needs the kernel's inode-level logic) and external journals.
 * Checksums are not verified, as elsewhere in the guest reader: the content decides. Every number
 * from the log is checked before use, and the scan visits each log block at most once.
 */
import { type ByteSource, GuestFormatError } from './disk.js';

const MAGIC = 0xc03b3998;
const DESCRIPTOR = 1;
const COMMIT = 2;
const SUPERBLOCK_V1 = 3;
const SUPERBLOCK_V2 = 4;
const REVOKE = 5;

const FEATURE_64BIT = 0x2;
const FEATURE_CSUM_V2 = 0x8;
const FEATURE_CSUM_V3 = 0x10;
const FEATURE_FAST_COMMIT = 0x20;
/** Incompatible journal features this reader knows: revoke, 64bit, async commit, csum v2/v3, fast commit. */
const FEATURES_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20;
/** The kernel's fast-commit area when the superblock leaves it at 0 (JBD2_DEFAULT_FAST_COMMIT_BLOCKS). */
const DEFAULT_FC_BLOCKS = 256;

const TAG_ESCAPE = 0x1;
const TAG_SAME_UUID = 0x2;
const TAG_LAST = 0x8;

/** Where the current copy of one filesystem block is: a block of the journal, possibly escaped. */
export interface JournalCopy {
  /** The filesystem block that holds the journal's copy. */
  from: number;
  /** The copy's first 4 bytes were the journal magic; the log holds zeros there. */
  escaped: boolean;
}

export interface JournalReplay {
  /** Filesystem block -> its newest committed, unrevoked copy in the journal. */
  copies: Map<number, JournalCopy>;
  /** Committed transactions replayed. */
  transactions: number;
  /** Things not replayed (fast-commit records, ...). */
  warnings: string[];
}

/** What the replay needs of the filesystem: its block size and count, and where the journal lives. */
export interface JournalHost {
  readonly blockSize: number;
  readonly blocksCount: number;
  /** The journal's logical block -> filesystem block (throws GuestFormatError past the journal). */
  journalBlock(logical: number): number;
  /** The journal's length in blocks (from its inode). */
  readonly journalBlocks: number;
  readBlock(block: number): Promise<Buffer>;
}

interface Pending {
  seq: number;
  tags: { target: number; copy: JournalCopy }[];
  revoked: number[];
}

/** Scans the journal; null when there is nothing to replay (a clean log). */
export async function scanJournal(host: JournalHost): Promise<JournalReplay | null> {
  const bs = host.blockSize;
  const sb = await host.readBlock(host.journalBlock(0));
  const bad = (what: string) => new GuestFormatError(`ext journal: ${what}`);
  if (sb.readUInt32BE(0) !== MAGIC) throw bad('bad magic in its superblock');
  const type = sb.readUInt32BE(4);
  if (type !== SUPERBLOCK_V1 && type !== SUPERBLOCK_V2) throw bad(`superblock of type ${type}`);
  if (sb.readUInt32BE(12) !== bs) throw bad(`block size ${sb.readUInt32BE(12)} is not the filesystem's (${bs})`);
  const maxlen = sb.readUInt32BE(16);
  const first = sb.readUInt32BE(20);
  let seq = sb.readUInt32BE(24);
  const start = sb.readUInt32BE(28);
  const incompat = type === SUPERBLOCK_V2 ? sb.readUInt32BE(40) : 0;
  if (start === 0) return null;
  const unknown = incompat & ~FEATURES_KNOWN;
  if (unknown) throw bad(`incompatible features this reader does not know (0x${unknown.toString(16)})`);
  if (maxlen > host.journalBlocks) throw bad(`${maxlen} blocks claimed, the journal inode has ${host.journalBlocks}`);
  const warnings: string[] = [];
  let last = maxlen;
  if (incompat & FEATURE_FAST_COMMIT) {
    const fc = sb.readUInt32BE(84) || DEFAULT_FC_BLOCKS;
    last = maxlen - fc;
    warnings.push('the journal has a fast-commit area, which is not replayed: changes recorded only there are not seen');
  }
  if (first < 1 || first >= last || start < first || start >= last) throw bad(`log [${first}, ${last}) does not hold its start ${start}`);

  const is64 = (incompat & FEATURE_64BIT) !== 0;
  const csum3 = (incompat & FEATURE_CSUM_V3) !== 0;
  const csum2 = (incompat & FEATURE_CSUM_V2) !== 0;
  const tagBytes = csum3 ? 16 : 12 + (csum2 ? 2 : 0) - (is64 ? 0 : 4);
  const descEnd = bs - (csum2 || csum3 ? 4 : 0);
  const logLen = last - first;
  const wrap = (b: number) => (b >= last ? b - logLen : b);

  const committed: Pending[] = [];
  let pos = start;
  let scanned = 0;
  let cur: Pending | null = null;
  const target = (lo: number, hi: number, what: string): number => {
    const b = lo + (is64 ? hi * 2 ** 32 : 0);
    if (b >= host.blocksCount) throw bad(`${what} names block ${b}, past the end of the filesystem (${host.blocksCount} blocks)`);
    return b;
  };
  // Each log block is visited at most once: a log that never ends (a loop of valid-looking blocks)
  // stops when the whole log has been read.
  while (scanned < logLen) {
    const hdr = await host.readBlock(host.journalBlock(pos));
    scanned++;
    if (hdr.readUInt32BE(0) !== MAGIC || hdr.readUInt32BE(8) !== seq) break;
    const btype = hdr.readUInt32BE(4);
    cur ??= { seq, tags: [], revoked: [] };
    if (btype === DESCRIPTOR) {
      let o = 12;
      for (;;) {
        if (o + tagBytes > descEnd) break;
        const lo = hdr.readUInt32BE(o);
        const flags = csum3 ? hdr.readUInt32BE(o + 4) : hdr.readUInt16BE(o + 6);
        const hi = csum3 ? hdr.readUInt32BE(o + 8) : tagBytes >= 12 ? hdr.readUInt32BE(o + 8) : 0;
        pos = wrap(pos + 1);
        if (++scanned > logLen) throw bad('a descriptor names more blocks than the log holds');
        cur.tags.push({ target: target(lo, hi, 'a descriptor tag'), copy: { from: host.journalBlock(pos), escaped: (flags & TAG_ESCAPE) !== 0 } });
        o += tagBytes + (flags & TAG_SAME_UUID ? 0 : 16);
        if (flags & TAG_LAST) break;
      }
    } else if (btype === COMMIT) {
      committed.push(cur);
      cur = null;
      seq = (seq + 1) >>> 0;
    } else if (btype === REVOKE) {
      const used = hdr.readUInt32BE(12);
      if (used < 16 || used > descEnd) throw bad(`a revoke block claims ${used} bytes`);
      const rec = is64 ? 8 : 4;
      for (let o = 16; o + rec <= used; o += rec) {
        cur.revoked.push(is64 ? target(hdr.readUInt32BE(o + 4), hdr.readUInt32BE(o), 'a revoke record') : target(hdr.readUInt32BE(o), 0, 'a revoke record'));
      }
    } else break;
    pos = wrap(pos + 1);
  }

  // A block revoked by a committed transaction is not replayed from that or any earlier transaction.
  const revokedUpTo = new Map<number, number>();
  for (const t of committed) for (const b of t.revoked) revokedUpTo.set(b, t.seq);
  const copies = new Map<number, JournalCopy>();
  for (const t of committed) {
    for (const { target: b, copy } of t.tags) {
      const r = revokedUpTo.get(b);
      if (r !== undefined && seqNotBefore(r, t.seq)) continue;
      copies.set(b, copy);
    }
  }
  return { copies, transactions: committed.length, warnings };
}

/** Is sequence a at or after b, in the journal's wrapping 32-bit order? */
function seqNotBefore(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

/** The partition as it reads after the replay: each replayed block comes from its journal copy. */
export class JournalOverlay implements ByteSource {
  private readonly targets: number[];

  constructor(
    private readonly src: ByteSource,
    private readonly blockSize: number,
    private readonly copies: ReadonlyMap<number, JournalCopy>,
  ) {
    this.targets = [...copies.keys()].sort((a, b) => a - b);
  }

  get size(): number {
    return this.src.size;
  }

  /** The replayed blocks (sorted). */
  get blocks(): readonly number[] {
    return this.targets;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = await this.src.read(offset, length);
    const bs = this.blockSize;
    const end = offset + length;
    for (let i = this.firstAtOrAfter(Math.floor(offset / bs)); i < this.targets.length; i++) {
      const b = this.targets[i]!;
      const bStart = b * bs;
      if (bStart >= end) break;
      const c = this.copies.get(b)!;
      const data = await this.src.read(c.from * bs, bs);
      if (c.escaped) data.writeUInt32BE(MAGIC, 0);
      const s = Math.max(bStart, offset);
      const e = Math.min(bStart + bs, end);
      data.copy(out, s - offset, s - bStart, e - bStart);
    }
    return out;
  }

  private firstAtOrAfter(b: number): number {
    let lo = 0;
    let hi = this.targets.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.targets[mid]! < b) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
