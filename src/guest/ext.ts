/**
 * A read-only ext2/ext3/ext4 reader over a ByteSource: superblock, group descriptors (32- and 64-bit,
 * meta_bg), inodes, block maps (extent trees and ext2/3 indirect blocks), directories (linear blocks,
 * which also covers htree directories, whose index nodes read as empty entries; inline data),
 * symlinks and file bytes. Checksums are not verified; every number taken from the image is checked
 * against the filesystem's geometry before it is used, and every walk has a bound, so a damaged
 * image yields a GuestFormatError and never a hang or an unbounded allocation.
 */
import { type ByteSource, GuestFormatError } from './disk.js';
import { type JournalHost, JournalOverlay, scanJournal } from './journal.js';

export const S_IFMT = 0xf000;
export const S_IFDIR = 0x4000;
export const S_IFREG = 0x8000;
export const S_IFLNK = 0xa000;

const EXTENTS_FL = 0x80000;
const INLINE_DATA_FL = 0x10000000;
const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_RECOVER = 0x4;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_INLINE_DATA = 0x8000;
/** Incompatible features this reader handles (see the header of this file). */
const INCOMPAT_KNOWN = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x20000;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const GDT_CSUM = 0x10;
const METADATA_CSUM = 0x400;
const BG_INODE_UNINIT = 0x1;
const BG_BLOCK_UNINIT = 0x2;

/** Extents of one file at most; a file past this is named in a warning, not compared. */
const MAX_EXTENTS = 1 << 18;
/** Extent-tree or indirect nodes read for one file at most. */
const MAX_MAP_NODES = 1 << 16;
/** Largest directory read (bytes); a bigger one is named in a warning. */
const MAX_DIR_BYTES = 256 * 1024 * 1024;

export interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  links: number;
  flags: number;
  /** Seconds since the epoch. */
  mtime: number;
  fileAcl: number;
  blocks512: number;
  /** In use: a mode, a link and no deletion time. */
  inUse: boolean;
  raw: Buffer;
}

export interface Extent {
  logical: number;
  physical: number;
  length: number;
  /** Unwritten (preallocated) extent: reads as zeros. */
  uninit: boolean;
}

export interface FileMap {
  /** Sorted by logical block. */
  extents: Extent[];
  /** Blocks of the map itself (extent tree nodes, indirect blocks) and the xattr block. */
  meta: number[];
}

export interface DirEntry {
  name: string;
  ino: number;
  /** The entry's file type (2: directory) when the filesystem records it (feature filetype), else 0. */
  ftype: number;
}

interface GroupDesc {
  blockBitmap: number;
  inodeBitmap: number;
  inodeTable: number;
  flags: number;
  itableUnused: number;
}

/** What became of the journal when the filesystem was opened. */
export interface JournalState {
  /** Its committed transactions were replayed (the filesystem reads through them). */
  replayed: boolean;
  transactions: number;
  /** Blocks whose content came from the journal (sorted). */
  blocks: readonly number[];
  /** What was not replayed, and why. */
  warnings: string[];
}

const NO_JOURNAL: JournalState = { replayed: false, transactions: 0, blocks: [], warnings: [] };

export class ExtFs {
  readonly blockSize: number;
  readonly inodeSize: number;
  readonly inodesPerGroup: number;
  readonly blocksPerGroup: number;
  readonly inodesCount: number;
  readonly blocksCount: number;
  readonly firstDataBlock: number;
  readonly groups: number;
  readonly descSize: number;
  readonly incompat: number;
  readonly roCompat: number;
  readonly journalInode: number;
  readonly firstMetaBg: number;
  readonly reservedGdtBlocks: number;
  readonly uuid: string;
  private readonly gdCache = new Map<number, GroupDesc>();
  journal: JournalState = NO_JOURNAL;

  private constructor(
    readonly src: ByteSource,
    sb: Buffer,
  ) {
    const logBs = sb.readUInt32LE(24);
    if (logBs > 6) throw new GuestFormatError(`ext superblock: block size 2^(10+${logBs}) is not valid`);
    this.blockSize = 1024 << logBs;
    this.incompat = sb.readUInt32LE(96);
    this.roCompat = sb.readUInt32LE(100);
    const rev = sb.readUInt32LE(76);
    this.inodeSize = rev >= 1 ? sb.readUInt16LE(88) : 128;
    this.inodesCount = sb.readUInt32LE(0);
    const is64 = (this.incompat & INCOMPAT_64BIT) !== 0;
    this.blocksCount = sb.readUInt32LE(4) + (is64 ? sb.readUInt32LE(336) * 2 ** 32 : 0);
    this.firstDataBlock = sb.readUInt32LE(20);
    this.blocksPerGroup = sb.readUInt32LE(32);
    this.inodesPerGroup = sb.readUInt32LE(40);
    this.descSize = is64 ? sb.readUInt16LE(254) : 32;
    this.journalInode = sb.readUInt32LE(224);
    this.firstMetaBg = sb.readUInt32LE(260);
    this.reservedGdtBlocks = sb.readUInt16LE(206);
    this.uuid = sb.subarray(104, 120).toString('hex');
    const bad = (what: string) => new GuestFormatError(`ext superblock: ${what}`);
    if (this.inodeSize < 128 || this.inodeSize > this.blockSize || (this.inodeSize & (this.inodeSize - 1)) !== 0) throw bad(`inode size ${this.inodeSize}`);
    if (this.descSize < 32 || this.descSize > 1024 || (this.descSize & (this.descSize - 1)) !== 0) throw bad(`group descriptor size ${this.descSize}`);
    if (this.blocksPerGroup === 0 || this.blocksPerGroup > 8 * this.blockSize) throw bad(`${this.blocksPerGroup} blocks per group`);
    if (this.inodesPerGroup === 0 || this.inodesPerGroup > 8 * this.blockSize) throw bad(`${this.inodesPerGroup} inodes per group`);
    if (this.blocksCount * this.blockSize > src.size) {
      throw bad(`${this.blocksCount} blocks of ${this.blockSize} bytes do not fit in the partition (${src.size} bytes)`);
    }
    if (this.firstDataBlock >= this.blocksCount) throw bad(`first data block ${this.firstDataBlock}`);
    this.groups = Math.ceil((this.blocksCount - this.firstDataBlock) / this.blocksPerGroup);
    if (this.inodesCount > this.groups * this.inodesPerGroup) throw bad(`${this.inodesCount} inodes in ${this.groups} groups`);
    const unknown = this.incompat & ~INCOMPAT_KNOWN;
    if (unknown) throw new GuestFormatError(`ext filesystem uses incompatible features this reader does not know (0x${unknown.toString(16)})`);
  }

  static async open(src: ByteSource): Promise<ExtFs> {
    if (src.size < 2048) throw new GuestFormatError('too small for an ext superblock');
    const sb = await src.read(1024, 1024);
    if (sb.readUInt16LE(56) !== 0xef53) throw new GuestFormatError('no ext superblock (bad magic)');
    const fs = new ExtFs(src, sb);
    return fs.needsRecovery ? fs.replayed() : fs;
  }

  /**
   * This filesystem as the kernel would mount it: with the journal's committed transactions in place
   * (src/guest/journal.ts). A journal that cannot be read leaves the filesystem as it is on disk,
   * with a warning.
   */
  private async replayed(): Promise<ExtFs> {
    const unseen = 'changes still in the journal are not seen';
    if (this.journalInode === 0) {
      this.journal = { ...NO_JOURNAL, warnings: [`the journal is on another device and is not replayed: ${unseen}`] };
      return this;
    }
    try {
      const replay = await scanJournal(await this.journalHost());
      if (!replay) return this;
      const overlay = new JournalOverlay(this.src, this.blockSize, replay.copies);
      const sb = await overlay.read(1024, 1024);
      if (sb.readUInt16LE(56) !== 0xef53) throw new GuestFormatError('the replayed superblock has a bad magic');
      const fs = new ExtFs(overlay, sb);
      fs.journal = { replayed: true, transactions: replay.transactions, blocks: overlay.blocks, warnings: replay.warnings };
      return fs;
    } catch (err) {
      if (!(err instanceof GuestFormatError)) throw err;
      this.journal = { ...NO_JOURNAL, warnings: [`its journal to replay could not be read (${err.message}): ${unseen}`] };
      return this;
    }
  }

  private async journalHost(): Promise<JournalHost> {
    const i = await this.inode(this.journalInode);
    const { extents } = await this.map(i);
    const journalBlocks = Math.floor(i.size / this.blockSize);
    const journalBlock = (logical: number): number => {
      let lo = 0;
      let hi = extents.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        const e = extents[mid]!;
        if (e.logical + e.length <= logical) lo = mid + 1;
        else hi = mid;
      }
      const e = extents[lo];
      if (logical >= journalBlocks || !e || e.logical > logical || e.uninit) throw new GuestFormatError(`ext journal: its block ${logical} is not mapped`);
      return e.physical + (logical - e.logical);
    };
    return { blockSize: this.blockSize, blocksCount: this.blocksCount, journalBlocks, journalBlock, readBlock: (b) => this.readBlock(b) };
  }

  /** The journal holds transactions not yet written to their place (a state taken while mounted). */
  get needsRecovery(): boolean {
    return (this.incompat & INCOMPAT_RECOVER) !== 0;
  }

  get inodesPerBlock(): number {
    return this.blockSize / this.inodeSize;
  }

  get inodeTableBlocks(): number {
    return Math.ceil((this.inodesPerGroup * this.inodeSize) / this.blockSize);
  }

  async readBlock(block: number): Promise<Buffer> {
    this.checkBlock(block, 1, 'block');
    return this.src.read(block * this.blockSize, this.blockSize);
  }

  async readBlocks(block: number, count: number): Promise<Buffer> {
    this.checkBlock(block, count, 'block');
    return this.src.read(block * this.blockSize, count * this.blockSize);
  }

  checkBlock(block: number, count: number, what: string): void {
    if (!Number.isSafeInteger(block) || block < 0 || count < 0 || block + count > this.blocksCount) {
      throw new GuestFormatError(`${what} ${block} (+${count}) is past the end of the filesystem (${this.blocksCount} blocks)`);
    }
  }

  /** Does group `group` hold a superblock copy (sparse_super: 0, 1 and powers of 3, 5, 7)? */
  hasSuper(group: number): boolean {
    if (!(this.roCompat & RO_COMPAT_SPARSE_SUPER) || group <= 1) return true;
    for (const p of [3, 5, 7]) {
      let x = p;
      while (x < group) x *= p;
      if (x === group) return true;
    }
    return false;
  }

  /** The block holding group `g`'s descriptor and the descriptor's offset in it. */
  private descLocation(g: number): [number, number] {
    const perBlock = this.blockSize / this.descSize;
    const metaGroup = Math.floor(g / perBlock);
    const off = (g % perBlock) * this.descSize;
    if (this.incompat & INCOMPAT_META_BG && metaGroup >= this.firstMetaBg) {
      const first = metaGroup * perBlock;
      const start = this.firstDataBlock + first * this.blocksPerGroup;
      return [start + (this.hasSuper(first) ? 1 : 0), off];
    }
    return [this.firstDataBlock + 1 + metaGroup, off];
  }

  async group(g: number): Promise<GroupDesc> {
    if (!Number.isInteger(g) || g < 0 || g >= this.groups) throw new GuestFormatError(`group ${g} does not exist (${this.groups} groups)`);
    const hit = this.gdCache.get(g);
    if (hit) return hit;
    const [block, off] = this.descLocation(g);
    const b = await this.readBlock(block);
    const wide = this.descSize >= 64;
    const hi = (o: number) => (wide ? b.readUInt32LE(off + o) * 2 ** 32 : 0);
    const d: GroupDesc = {
      blockBitmap: b.readUInt32LE(off) + hi(32),
      inodeBitmap: b.readUInt32LE(off + 4) + hi(36),
      inodeTable: b.readUInt32LE(off + 8) + hi(40),
      flags: b.readUInt16LE(off + 18),
      itableUnused: b.readUInt16LE(off + 28) + (wide ? b.readUInt16LE(off + 50) * 65536 : 0),
    };
    this.checkBlock(d.inodeTable, this.inodeTableBlocks, `inode table of group ${g} at block`);
    if (this.gdCache.size > 4096) this.gdCache.clear();
    this.gdCache.set(g, d);
    return d;
  }

  /** Inodes of group g that may be in use (the rest are uninitialised and read as free). */
  async usableInodes(g: number): Promise<number> {
    const d = await this.group(g);
    if (!(this.roCompat & (GDT_CSUM | METADATA_CSUM))) return this.inodesPerGroup;
    if (d.flags & BG_INODE_UNINIT) return 0;
    return Math.max(0, this.inodesPerGroup - d.itableUnused);
  }

  /** Is block `b` marked in use in its group's bitmap? (an uninitialised bitmap: no) */
  async blockInUse(b: number): Promise<boolean> {
    if (b < this.firstDataBlock || b >= this.blocksCount) return false;
    const g = Math.floor((b - this.firstDataBlock) / this.blocksPerGroup);
    const d = await this.group(g);
    if (this.roCompat & (GDT_CSUM | METADATA_CSUM) && d.flags & BG_BLOCK_UNINIT) return false;
    const bit = (b - this.firstDataBlock) % this.blocksPerGroup;
    const bm = await this.readBlock(d.blockBitmap);
    return ((bm[bit >> 3]! >> (bit & 7)) & 1) === 1;
  }

  async inode(ino: number): Promise<Inode> {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.inodesCount) throw new GuestFormatError(`inode ${ino} does not exist`);
    const g = Math.floor((ino - 1) / this.inodesPerGroup);
    const idx = (ino - 1) % this.inodesPerGroup;
    const d = await this.group(g);
    const byte = idx * this.inodeSize;
    const raw = await this.src.read((d.inodeTable + Math.floor(byte / this.blockSize)) * this.blockSize + (byte % this.blockSize), this.inodeSize);
    return this.parseInode(ino, raw, idx < (await this.usableInodes(g)));
  }

  parseInode(ino: number, raw: Buffer, usable = true): Inode {
    const mode = raw.readUInt16LE(0);
    const links = raw.readUInt16LE(26);
    let mtime = raw.readInt32LE(16);
    if (this.inodeSize > 128) {
      const extra = raw.readUInt16LE(128);
      if (extra >= 12 && 128 + extra <= this.inodeSize) mtime += (raw.readUInt32LE(136) & 3) * 2 ** 32;
    }
    return {
      ino,
      mode,
      uid: raw.readUInt16LE(2) | (raw.readUInt16LE(120) << 16),
      gid: raw.readUInt16LE(24) | (raw.readUInt16LE(122) << 16),
      size: raw.readUInt32LE(4) + raw.readUInt32LE(108) * 2 ** 32,
      links,
      flags: raw.readUInt32LE(32),
      mtime,
      fileAcl: raw.readUInt32LE(104) + raw.readUInt16LE(118) * 2 ** 32,
      blocks512: raw.readUInt32LE(28) + raw.readUInt16LE(116) * 2 ** 32,
      inUse: usable && mode !== 0 && links > 0 && raw.readUInt32LE(20) === 0,
      raw,
    };
  }

  isInline(i: Inode): boolean {
    return (this.incompat & INCOMPAT_INLINE_DATA) !== 0 && (i.flags & INLINE_DATA_FL) !== 0;
  }

  /** A symlink whose target lives in i_block itself. */
  isFastSymlink(i: Inode): boolean {
    if ((i.mode & S_IFMT) !== S_IFLNK || this.isInline(i)) return false;
    const aclBlocks = i.fileAcl ? this.blockSize / 512 : 0;
    return i.size < 60 && !(i.flags & EXTENTS_FL) && i.blocks512 - aclBlocks <= 0;
  }

  /** Has data blocks (not inline, not a fast symlink, not a device). */
  hasBlocks(i: Inode): boolean {
    const t = i.mode & S_IFMT;
    if (t !== S_IFREG && t !== S_IFDIR && t !== S_IFLNK) return false;
    return !this.isInline(i) && !this.isFastSymlink(i);
  }

  /** The file's block map. Throws GuestFormatError when it cannot be right or is past the limits. */
  async map(i: Inode): Promise<FileMap> {
    const extents: Extent[] = [];
    const meta: number[] = [];
    if (i.fileAcl) {
      this.checkBlock(i.fileAcl, 1, `xattr block of inode ${i.ino} at`);
      meta.push(i.fileAcl);
    }
    if (!this.hasBlocks(i)) return { extents, meta };
    const budget = { nodes: 0 };
    const iblock = i.raw.subarray(40, 100);
    if (i.flags & EXTENTS_FL) await this.walkExtents(i.ino, iblock, -1, extents, meta, budget);
    else await this.walkIndirect(i, iblock, extents, meta, budget);
    extents.sort((a, b) => a.logical - b.logical);
    return { extents, meta };
  }

  /**
   * The block map without any read when it lives in the inode (no blocks, or an extent tree of depth
   * 0: most files), else null. Same checks as map().
   */
  mapInInode(i: Inode): FileMap | null {
    const meta: number[] = [];
    if (i.fileAcl) {
      this.checkBlock(i.fileAcl, 1, `xattr block of inode ${i.ino} at`);
      meta.push(i.fileAcl);
    }
    if (!this.hasBlocks(i)) return { extents: [], meta };
    const node = i.raw.subarray(40, 100);
    if (!(i.flags & EXTENTS_FL) || node.readUInt16LE(0) !== 0xf30a || node.readUInt16LE(6) !== 0) return null;
    const extents: Extent[] = [];
    this.leafExtents(i.ino, node, extents);
    return { extents: extents.sort((a, b) => a.logical - b.logical), meta };
  }

  private leafExtents(ino: number, node: Buffer, out: Extent[]): void {
    const entries = node.readUInt16LE(2);
    const max = node.readUInt16LE(4);
    if (max > (node.length - 12) / 12 || entries > max) throw new GuestFormatError(`inode ${ino}: extent tree node claims ${entries} of ${max} entries`);
    for (let e = 0; e < entries; e++) {
      const o = 12 + e * 12;
      let len = node.readUInt16LE(o + 4);
      const uninit = len > 32768;
      if (uninit) len -= 32768;
      const physical = node.readUInt32LE(o + 8) + node.readUInt16LE(o + 6) * 2 ** 32;
      this.checkBlock(physical, len, `inode ${ino}: extent at block`);
      if (out.length >= MAX_EXTENTS) throw new GuestFormatError(`inode ${ino}: extent tree has more than ${MAX_EXTENTS} extents`);
      if (len > 0) out.push({ logical: node.readUInt32LE(o), physical, length: len, uninit });
    }
  }

  private async walkExtents(ino: number, node: Buffer, wantDepth: number, out: Extent[], meta: number[], budget: { nodes: number }): Promise<void> {
    const bad = (what: string) => new GuestFormatError(`inode ${ino}: extent tree ${what}`);
    if (node.readUInt16LE(0) !== 0xf30a) throw bad('node has a bad magic');
    const entries = node.readUInt16LE(2);
    const max = node.readUInt16LE(4);
    const depth = node.readUInt16LE(6);
    if (max > (node.length - 12) / 12 || entries > max) throw bad(`node claims ${entries} of ${max} entries`);
    if (depth > 5 || (wantDepth >= 0 && depth !== wantDepth)) throw bad(`depth ${depth} where ${wantDepth < 0 ? '0-5' : wantDepth} is expected`);
    if (depth === 0) {
      this.leafExtents(ino, node, out);
      return;
    }
    for (let e = 0; e < entries; e++) {
      const o = 12 + e * 12;
      const child = node.readUInt32LE(o + 4) + node.readUInt16LE(o + 8) * 2 ** 32;
      if (++budget.nodes > MAX_MAP_NODES) throw bad(`has more than ${MAX_MAP_NODES} nodes`);
      meta.push(child);
      await this.walkExtents(ino, await this.readBlock(child), depth - 1, out, meta, budget);
    }
  }

  private async walkIndirect(i: Inode, iblock: Buffer, out: Extent[], meta: number[], budget: { nodes: number }): Promise<void> {
    const ptrs = this.blockSize / 4;
    const nblocks = Math.ceil(i.size / this.blockSize);
    let logical = 0;
    const push = (phys: number) => {
      const last = out[out.length - 1];
      if (last && last.logical + last.length === logical && last.physical + last.length === phys) last.length++;
      else {
        if (out.length >= MAX_EXTENTS) throw new GuestFormatError(`inode ${i.ino}: more than ${MAX_EXTENTS} extents`);
        out.push({ logical, physical: phys, length: 1, uninit: false });
      }
    };
    const visit = async (ptr: number, level: number): Promise<void> => {
      const span = ptrs ** level;
      if (ptr === 0) {
        logical += span; // a hole
        return;
      }
      this.checkBlock(ptr, 1, `inode ${i.ino}: block pointer`);
      if (level === 0) {
        push(ptr);
        logical++;
        return;
      }
      if (++budget.nodes > MAX_MAP_NODES) throw new GuestFormatError(`inode ${i.ino}: more than ${MAX_MAP_NODES} indirect blocks`);
      meta.push(ptr);
      const b = await this.readBlock(ptr);
      for (let k = 0; k < ptrs && logical < nblocks; k++) await visit(b.readUInt32LE(k * 4), level - 1);
    };
    for (let k = 0; k < 15 && logical < nblocks; k++) await visit(iblock.readUInt32LE(k * 4), k < 12 ? 0 : k - 11);
  }

  /** The value of in-inode extended attribute `system.data` (inline data beyond i_block). */
  private inlineXattr(i: Inode): Buffer {
    const raw = i.raw;
    if (this.inodeSize <= 128) return Buffer.alloc(0);
    const extra = raw.readUInt16LE(128);
    const base = 128 + extra;
    if (extra < 4 || base + 4 > raw.length || raw.readUInt32LE(base) !== 0xea020000) return Buffer.alloc(0);
    const first = base + 4;
    let o = first;
    while (o + 16 <= raw.length && raw.readUInt32LE(o) !== 0) {
      const nameLen = raw[o]!;
      const index = raw[o + 1]!;
      const voff = raw.readUInt16LE(o + 2);
      const vsize = raw.readUInt32LE(o + 8);
      const name = raw.toString('latin1', o + 16, o + 16 + nameLen);
      if (index === 7 && name === 'data') {
        if (first + voff + vsize > raw.length) throw new GuestFormatError(`inode ${i.ino}: inline data runs past the inode`);
        return raw.subarray(first + voff, first + voff + vsize);
      }
      o += (16 + nameLen + 3) & ~3;
    }
    return Buffer.alloc(0);
  }

  /** Bytes [pos, pos+len) of the file (holes and unwritten extents read as zeros; clipped to its size). */
  async read(i: Inode, m: FileMap | null, pos: number, len: number): Promise<Buffer> {
    const end = Math.min(i.size, pos + len);
    if (end <= pos) return Buffer.alloc(0);
    const out = Buffer.alloc(end - pos);
    if (this.isInline(i) || this.isFastSymlink(i)) {
      const all = Buffer.concat([i.raw.subarray(40, 100), this.inlineXattr(i)]);
      all.copy(out, 0, pos, Math.min(all.length, end));
      return out;
    }
    const map = m ?? (await this.map(i));
    const bs = this.blockSize;
    const first = Math.floor(pos / bs);
    const last = Math.floor((end - 1) / bs);
    for (const e of map.extents) {
      if (e.logical + e.length <= first || e.logical > last || e.uninit) continue;
      const s = Math.max(e.logical, first);
      const t = Math.min(e.logical + e.length - 1, last);
      const data = await this.readBlocks(e.physical + (s - e.logical), t - s + 1);
      const from = s * bs;
      const a = Math.max(from, pos);
      const b = Math.min((t + 1) * bs, end);
      data.copy(out, a - pos, a - from, b - from);
    }
    return out;
  }

  async readLink(i: Inode): Promise<string> {
    if (i.size > 4096) throw new GuestFormatError(`inode ${i.ino}: symlink target of ${i.size} bytes`);
    return (await this.read(i, null, 0, i.size)).toString('utf8');
  }

  /** The entries of a directory (without `.` and `..`) and its parent (from `..`). */
  async readDir(i: Inode): Promise<{ entries: DirEntry[]; parent: number }> {
    if ((i.mode & S_IFMT) !== S_IFDIR) throw new GuestFormatError(`inode ${i.ino} is not a directory`);
    if (i.size > MAX_DIR_BYTES) throw new GuestFormatError(`directory inode ${i.ino} is ${i.size} bytes, above the ${MAX_DIR_BYTES}-byte limit`);
    const entries: DirEntry[] = [];
    let parent = 0;
    const parse = (b: Buffer, where: string) => {
      let o = 0;
      while (o + 8 <= b.length) {
        const ino = b.readUInt32LE(o);
        const rec = b.readUInt16LE(o + 4);
        const nameLen = this.incompat & INCOMPAT_FILETYPE ? b[o + 6]! : b.readUInt16LE(o + 6);
        // rec_len 0 means 65536 in a 64 KiB block
        const recLen = rec === 0 && b.length === 65536 ? 65536 : rec;
        if (recLen < 8 || o + recLen > b.length || nameLen + 8 > recLen) {
          throw new GuestFormatError(`directory inode ${i.ino}: corrupt entry at byte ${o} of ${where}`);
        }
        if (ino !== 0) {
          if (ino > this.inodesCount) throw new GuestFormatError(`directory inode ${i.ino}: entry names inode ${ino}, which does not exist`);
          const name = b.toString('utf8', o + 8, o + 8 + nameLen);
          if (name === '..') parent = ino;
          else if (name !== '.' && nameLen > 0) entries.push({ name, ino, ftype: this.incompat & INCOMPAT_FILETYPE ? b[o + 7]! : 0 });
        }
        o += recLen;
      }
    };
    if (this.isInline(i)) {
      parent = i.raw.readUInt32LE(40);
      parse(i.raw.subarray(44, 100), 'inline data');
      const more = this.inlineXattr(i);
      if (more.length) parse(more, 'inline data');
      return { entries, parent };
    }
    const m = await this.map(i);
    const bs = this.blockSize;
    for (const e of m.extents) {
      if (e.uninit) continue;
      for (let k = 0; k < e.length; k++) {
        if ((e.logical + k) * bs >= i.size) break;
        parse(await this.readBlock(e.physical + k), `block ${e.logical + k}`);
      }
    }
    return { entries, parent };
  }

  /** The inode at an absolute path (symlinks not followed), or null. */
  async lookup(p: string): Promise<Inode | null> {
    let cur = await this.inode(2);
    for (const part of p.split('/').filter(Boolean)) {
      if ((cur.mode & S_IFMT) !== S_IFDIR) return null;
      const { entries } = await this.readDir(cur);
      const e = entries.find((x) => x.name === part);
      if (!e) return null;
      cur = await this.inode(e.ino);
    }
    return cur.inUse ? cur : null;
  }
}
