/**
 * The file-level diff of one ext filesystem between two states, driven by the blocks that changed.
 *
 * Only blocks whose bytes differ are looked at: changed inode-table blocks give the inodes that
 * changed; changed blocks in use that no such inode owns (a file or directory written in place with
 * its inode untouched) are attributed by one scan of the inode tables, which happens only when such
 * blocks exist. Changed directories give the names added and removed; changed inodes are compared
 * field by field, and their bytes only where their blocks changed or their block maps differ. Paths
 * come from `..` for directories; a file no changed directory names (rewritten in place) is looked
 * for in the directories whose inodes lie nearest to its own in its group's inode table (where both
 * Linux and libext2fs put a file's directory: see nameNearby), and only what that does not find is
 * left to one breadth-first walk from the root that stops as soon as every wanted inode has been
 * seen. Files whose blocks did not change are never read.
 */
import { checkAborted } from '../abort.js';
import { BlockRuns, type Run } from './blocks.js';
import { GuestFormatError } from './disk.js';
import { type DirEntry, type ExtFs, type FileMap, type Inode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from './ext.js';

type FileType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'unknown';

export interface FileChange {
  path: string;
  change: 'added' | 'removed' | 'modified' | 'metadata' | 'renamed';
  /** `renamed`: the path before (the same file: same inode and birth, one link). */
  path_before?: string;
  type: FileType;
  /** Set when the type changed (a file replaced by a symlink, ...). */
  type_before?: FileType;
  size_before: number | null;
  size_after: number | null;
  mtime_before: string | null;
  mtime_after: string | null;
  /** What differs for `modified` and `metadata`: content, type, mode, owner, target, size. */
  fields?: string[];
  mode_before?: string;
  mode_after?: string;
  owner_before?: string;
  owner_after?: string;
  target_before?: string;
  target_after?: string;
  /** Names of a file with more than one (hard links). */
  links?: number;
  /** A directory added or removed with all its content: the entries beneath it and their bytes. */
  entries?: number;
  bytes?: number;
}

export interface FilesDiff {
  changes: FileChange[];
  warnings: string[];
  /** What it cost: changed blocks, inodes compared, whether the inode tables were scanned. */
  stats: { changed_blocks: number; inodes_compared: number; owner_scan: boolean; dirs_searched: number; dirs_walked: number };
}

/** Entries visited when summarising an added or removed directory, or walking for paths. */
const MAX_WALK = 10_000_000;
/** Bytes compared per read when whole files are compared. */
const COMPARE_SLICE = 1024 * 1024;
const ROOT = 2;
const FT_DIR = 2;
/** Path depth at most (a deeper chain of `..` is a loop). */
const MAX_DEPTH = 2048;
/** Directories read when looking for one inode's name near it, before it is left to the walk from the root. */
const NEARBY_DIRS = 64;
/** Bytes of inode table read at a time when looking for directories near an inode. */
const NEARBY_CHUNK = 64 * 1024;

function typeOf(mode: number): FileType {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 'file';
    case S_IFDIR:
      return 'dir';
    case S_IFLNK:
      return 'symlink';
    case 0x2000:
      return 'char';
    case 0x6000:
      return 'block';
    case 0x1000:
      return 'fifo';
    case 0xc000:
      return 'socket';
    default:
      return 'unknown';
  }
}

const iso = (s: number) => new Date(s * 1000).toISOString();
const perm = (m: number) => (m & 0o7777).toString(8).padStart(4, '0');
const join = (dir: string, name: string) => (dir === '/' ? `/${name}` : `${dir}/${name}`);

interface Side {
  fs: ExtFs;
  inodes: Map<number, Inode>;
  dirPaths: Map<number, string>;
}

export async function diffFiles(fa: ExtFs, fb: ExtFs, changedBytes: readonly Run[], signal?: AbortSignal): Promise<FilesDiff> {
  const warnings: string[] = [];
  if (fa.blockSize !== fb.blockSize || fa.inodeSize !== fb.inodeSize || fa.inodesPerGroup !== fb.inodesPerGroup || fa.uuid !== fb.uuid) {
    throw new GuestFormatError('the filesystem was re-created between the two states (different UUID or geometry)');
  }
  const bs = fb.blockSize;
  const blocksCount = Math.min(fa.blocksCount, fb.blocksCount);
  if (fa.blocksCount !== fb.blocksCount)
    warnings.push(`the filesystem was resized (${fa.blocksCount} -> ${fb.blocksCount} blocks); only the common part is compared`);
  for (const [s, f] of [
    ['before', fa],
    ['after', fb],
  ] as const) {
    for (const w of f.journal.warnings) warnings.push(`the ${s} state: ${w}`);
  }

  // 1. Blocks whose bytes differ: where the disk changed, and where either state reads a journal
  // copy (a replayed block may differ from the other state's while its place on disk did not).
  const toCompare = BlockRuns.of([
    ...changedBytes.map((r) => {
      const first = Math.floor(r.start / bs);
      return { start: first, count: Math.min(blocksCount, Math.ceil((r.start + r.count) / bs)) - first };
    }),
    ...[fa, fb].flatMap((f) => f.journal.blocks.filter((b) => b < blocksCount).map((b) => ({ start: b, count: 1 }))),
  ]);
  const changed = new BlockRuns();
  for (const r of toCompare.list) {
    const first = r.start;
    const end = r.start + r.count;
    const step = Math.max(1, Math.floor(COMPARE_SLICE / bs));
    for (let blk = first; blk < end; blk += step) {
      checkAborted(signal);
      const n = Math.min(step, end - blk);
      const [da, db] = await Promise.all([fa.readBlocks(blk, n), fb.readBlocks(blk, n)]);
      for (let k = 0; k < n; k++) if (da.compare(db, k * bs, (k + 1) * bs, k * bs, (k + 1) * bs) !== 0) changed.append(blk + k, 1);
    }
  }
  const stats = { changed_blocks: changed.blocks, inodes_compared: 0, owner_scan: false, dirs_searched: 0, dirs_walked: 0 };
  if (changed.size === 0) return { changes: [], warnings, stats };

  // 2. What the changed blocks are: inode tables (-> changed inodes), other metadata, or data.
  const unexplained = BlockRuns.of([...changed.list]);
  const candidates = new Set<number>();
  const sideA: Side = { fs: fa, inodes: new Map(), dirPaths: new Map([[2, '/']]) };
  const sideB: Side = { fs: fb, inodes: new Map(), dirPaths: new Map([[2, '/']]) };
  const itb = fb.inodeTableBlocks;
  const ipb = fb.inodesPerBlock;
  for (let g = 0; g < Math.min(fa.groups, fb.groups); g++) {
    const [ga, gb] = await Promise.all([fa.group(g), fb.group(g)]);
    for (const d of [ga, gb]) {
      unexplained.remove(d.blockBitmap, 1);
      unexplained.remove(d.inodeBitmap, 1);
    }
    if (ga.inodeTable !== gb.inodeTable) throw new GuestFormatError(`group ${g}'s inode table moved between the two states`);
    for (const r of changed.intersect(gb.inodeTable, itb)) {
      for (let blk = r.start; blk < r.start + r.count; blk++) {
        const firstIno = g * fb.inodesPerGroup + (blk - gb.inodeTable) * ipb + 1;
        for (let k = 0; k < ipb; k++) candidates.add(firstIno + k);
      }
    }
    unexplained.remove(gb.inodeTable, itb);
  }
  removeGroupHeaders(fb, unexplained);
  // Reserved inodes (journal, resize inode, ...) but the root: their blocks are filesystem metadata.
  for (const side of [sideA, sideB]) {
    for (let ino = 1; ino < 11; ino++) {
      if (ino === ROOT) continue;
      try {
        const i = await side.fs.inode(ino);
        if (i.mode === 0 && ino !== side.fs.journalInode) continue;
        const m = await side.fs.map(i);
        for (const e of m.extents) unexplained.remove(e.physical, e.length);
        for (const b of m.meta) unexplained.remove(b, 1);
      } catch (err) {
        if (!(err instanceof GuestFormatError)) throw err;
        warnings.push(`reserved inode ${ino}: ${err.message}`);
      }
    }
  }
  for (let ino = 1; ino < 11; ino++) if (ino !== ROOT) candidates.delete(ino);

  // 3. Changed inodes, and the blocks they explain.
  const pairs = new Map<number, [Inode, Inode]>();
  const explain = async (ino: number): Promise<void> => {
    if (ino > fa.inodesCount || ino > fb.inodesCount) return;
    const [ia, ib] = await Promise.all([fa.inode(ino), fb.inode(ino)]);
    if (!ia.inUse && !ib.inUse) return;
    stats.inodes_compared++;
    pairs.set(ino, [ia, ib]);
    for (const [side, i] of [
      [sideA, ia],
      [sideB, ib],
    ] as const) {
      if (!i.inUse) continue;
      side.inodes.set(ino, i);
      try {
        const m = await side.fs.map(i);
        for (const e of m.extents) unexplained.remove(e.physical, e.length);
        for (const b of m.meta) unexplained.remove(b, 1);
      } catch (err) {
        if (!(err instanceof GuestFormatError)) throw err;
        warnings.push(err.message);
      }
    }
  };
  for (const ino of candidates) {
    checkAborted(signal);
    const same = await sameRawInode(fa, fb, ino);
    if (!same) await explain(ino);
  }

  // 4. Changed blocks in use that no changed inode owns. The first block of a directory names its
  // owner in its `.` entry (small directories are one block); the rest: find their owners in the
  // inode tables.
  await dropFree(fa, fb, unexplained);
  for (const r of [...unexplained.list]) {
    for (let b = r.start; b < r.start + r.count; b++) {
      checkAborted(signal);
      for (const fs of [fb, fa]) {
        if (!unexplained.overlaps(b, 1)) break;
        const ino = dotEntryOwner(await fs.readBlock(b));
        if (ino !== null && ino <= fs.inodesCount && !pairs.has(ino)) await explain(ino);
      }
    }
  }
  if (unexplained.size > 0) {
    stats.owner_scan = true;
    for (const ino of await findOwners(fb, unexplained, signal)) await explain(ino);
    if (unexplained.size > 0) for (const ino of await findOwners(fa, unexplained, signal)) if (!pairs.has(ino)) await explain(ino);
  }

  // 5. Names added, removed and replaced in changed directories.
  const changes: FileChange[] = [];
  const covered = new Set<number>();
  const named = new Map<number, { dir: number; name: string }>();
  const pendingNames: { dir: number; name: string; a: Inode | null; b: Inode | null }[] = [];
  for (const [ino, [ia, ib]] of pairs) {
    checkAborted(signal);
    if (!ia.inUse || !ib.inUse || (ia.mode & S_IFMT) !== S_IFDIR || (ib.mode & S_IFMT) !== S_IFDIR) continue;
    try {
      const [da, db] = await Promise.all([fa.readDir(ia), fb.readDir(ib)]);
      const before = new Map(da.entries.map((e) => [e.name, e.ino]));
      for (const e of db.entries) {
        named.set(e.ino, { dir: ino, name: e.name });
        const old = before.get(e.name);
        before.delete(e.name);
        if (old === e.ino) continue;
        pendingNames.push({ dir: ino, name: e.name, a: old === undefined ? null : await fa.inode(old), b: await fb.inode(e.ino) });
      }
      for (const [name, old] of before) pendingNames.push({ dir: ino, name, a: await fa.inode(old), b: null });
    } catch (err) {
      if (!(err instanceof GuestFormatError)) throw err;
      warnings.push(err.message);
    }
  }
  // A name removed and a name added for one inode that is the same file on both sides: renamed,
  // reported once, under its new path (with what else changed).
  const renames: { from: (typeof pendingNames)[number]; to: (typeof pendingNames)[number] }[] = [];
  const gone = new Map<number, (typeof pendingNames)[number]>();
  for (const p of pendingNames) if (p.a && !p.b) gone.set(p.a.ino, p);
  const renamed = new Set<(typeof pendingNames)[number]>();
  for (const p of pendingNames) {
    if (p.a || !p.b) continue;
    const from = gone.get(p.b.ino);
    if (!from || renamed.has(from) || !sameFile(fa, from.a!, p.b)) continue;
    renames.push({ from, to: p });
    renamed.add(from);
    renamed.add(p);
  }
  // An inode that lost a name and gained another (freed and reused) is described by those names.
  const lostName = new Set(pendingNames.filter((p) => p.a).map((p) => p.a!.ino));
  for (const p of pendingNames) if (p.b && lostName.has(p.b.ino)) covered.add(p.b.ino);
  const reported = new Set<string>();
  for (const { from, to } of renames) {
    checkAborted(signal);
    const [da, db] = [await dirPath_(sideA, from.dir, warnings), await dirPath_(sideB, to.dir, warnings)];
    if (da === null || db === null) continue;
    const path = join(db, to.name);
    const a = from.a!;
    const b = to.b!;
    try {
      const ch = await compareNamed(path, a, b, fa, fb, changed, covered, stats);
      const base: FileChange = ch ?? {
        path,
        change: 'renamed',
        type: typeOf(b.mode),
        size_before: a.size,
        size_after: b.size,
        mtime_before: iso(a.mtime),
        mtime_after: iso(b.mtime),
      };
      changes.push({ ...base, change: 'renamed', path_before: join(da, from.name) });
      reported.add(path);
    } catch (err) {
      if (!(err instanceof GuestFormatError)) throw err;
      warnings.push(`${path}: ${err.message}`);
    }
  }
  for (const p of pendingNames) {
    checkAborted(signal);
    if (renamed.has(p)) continue;
    const dirPath = await dirPath_(sideB, p.dir, warnings);
    if (dirPath === null) continue;
    const path = join(dirPath, p.name);
    try {
      const ch = await compareNamed(path, p.a, p.b, fa, fb, changed, covered, stats);
      if (ch) {
        changes.push(ch);
        reported.add(path);
      }
    } catch (err) {
      if (!(err instanceof GuestFormatError)) throw err;
      warnings.push(`${path}: ${err.message}`);
    }
  }

  // 6. Changed inodes under names that did not change: find their paths, compare them.
  const rest: [Inode, Inode][] = [];
  for (const [ino, [ia, ib]] of pairs) if (ia.inUse && ib.inUse && !covered.has(ino)) rest.push([ia, ib]);
  const wanted = new Set(rest.filter(([, ib]) => (ib.mode & S_IFMT) !== S_IFDIR && !named.has(ib.ino)).map(([, ib]) => ib.ino));
  if (wanted.size > 0) {
    const near = await nameNearby(fb, wanted, named, signal);
    stats.dirs_searched = near.dirs;
    if (near.left.size > 0) stats.dirs_walked = await walkForNames(fb, near.left, named, signal);
  }
  for (const [ia, ib] of rest) {
    checkAborted(signal);
    let path: string | null;
    if ((ib.mode & S_IFMT) === S_IFDIR) path = await dirPath_(sideB, ib.ino, warnings);
    else {
      const n = named.get(ib.ino);
      const dp = n ? await dirPath_(sideB, n.dir, warnings) : null;
      path = n && dp !== null ? join(dp, n.name) : null;
    }
    if (path === null) continue; // an inode in use that no directory names (an orphan being deleted)
    if (reported.has(path)) continue;
    try {
      const ch = await compareNamed(path, ia, ib, fa, fb, changed, covered, stats);
      if (ch) changes.push(ch);
    } catch (err) {
      if (!(err instanceof GuestFormatError)) throw err;
      warnings.push(`${path}: ${err.message}`);
    }
  }
  changes.sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
  return { changes, warnings, stats };
}

/**
 * Is inode `a` (before) the same file as `b` (after), not one freed and reused for another? Same
 * type, one link on both sides for a non-directory (a second name is a hard link, not a rename),
 * and the same birth: the
 * creation time with its nanoseconds, the generation number and the block map (ext4's large inodes;
 * without them, or when the map changed too, no rename is claimed and the names are reported as
 * removed and added), and for a non-directory the same size and modification time.
 */
function sameFile(fs: ExtFs, a: Inode, b: Inode): boolean {
  if (!a.inUse || !b.inUse || (a.mode & S_IFMT) !== (b.mode & S_IFMT)) return false;
  if ((b.mode & S_IFMT) !== S_IFDIR && (a.links !== 1 || b.links !== 1)) return false; // a directory has one name
  // i_crtime (0x90) and i_crtime_extra (0x94) lie in the extra part when i_extra_isize covers them.
  const birth = (i: Inode) => (fs.inodeSize >= 160 && i.raw.readUInt16LE(128) >= 24 ? i.raw.subarray(0x90, 0x98) : null);
  const [ba, bb] = [birth(a), birth(b)];
  if (!ba || !bb || !ba.equals(bb) || ba.readUInt32LE(0) === 0) return false;
  // The same generation, and the same block map root (i_block): libext2fs writes creation times
  // without nanoseconds, so an inode freed and reused within the same second for another file
  // would pass the birth check; it would not also have the same blocks.
  if (a.raw.readUInt32LE(100) !== b.raw.readUInt32LE(100) || !a.raw.subarray(40, 100).equals(b.raw.subarray(40, 100))) return false;
  // A file freed and its inode and blocks reused within that second for a new file passes all of the
  // above (seen with debugfs: `rm` then `write`). rename(2) keeps the size and the modification time,
  // so a file whose size (i_size_lo at 4, i_size_high at 108) or mtime (16) changed is not claimed as
  // renamed. A directory keeps the looser rule: its size and mtime follow its entries.
  if ((b.mode & S_IFMT) === S_IFDIR) return true;
  return (
    a.raw.readUInt32LE(4) === b.raw.readUInt32LE(4) && a.raw.readUInt32LE(108) === b.raw.readUInt32LE(108) && a.raw.readUInt32LE(16) === b.raw.readUInt32LE(16)
  );
}

async function sameRawInode(fa: ExtFs, fb: ExtFs, ino: number): Promise<boolean> {
  if (ino > fa.inodesCount || ino > fb.inodesCount) return true;
  const [ia, ib] = await Promise.all([fa.inode(ino), fb.inode(ino)]);
  if (!ia.inUse && !ib.inUse) return true;
  return ia.raw.equals(ib.raw);
}

/** Superblock and group descriptor copies at the start of groups (and meta_bg descriptor blocks). */
function removeGroupHeaders(fs: ExtFs, runs: BlockRuns): void {
  const perBlock = fs.blockSize / fs.descSize;
  const metaBg = (fs.incompat & 0x10) !== 0;
  const gdtBlocks = metaBg ? fs.firstMetaBg : Math.ceil(fs.groups / perBlock);
  for (let g = 0; g < fs.groups; g++) {
    const start = fs.firstDataBlock + g * fs.blocksPerGroup;
    const sup = fs.hasSuper(g);
    // group 0 also holds the boot block(s) before the superblock
    if (sup) runs.remove(g === 0 ? 0 : start, (g === 0 ? start : 0) + 1 + gdtBlocks + fs.reservedGdtBlocks);
    const inMeta = g % perBlock;
    if (metaBg && Math.floor(g / perBlock) >= fs.firstMetaBg && (inMeta === 0 || inMeta === 1 || inMeta === perBlock - 1))
      runs.remove(start + (sup ? 1 : 0), 1);
  }
}

/** The inode a block names in a leading `.` entry (the first block of a directory), or null. */
function dotEntryOwner(b: Buffer): number | null {
  if (b.length < 24) return null;
  const ino = b.readUInt32LE(0);
  // "." : rec_len 12, name_len 1, name '.', followed by "..": name_len 2, name '..'
  if (ino < 2 || b.readUInt16LE(4) !== 12 || b[6] !== 1 || b[8] !== 0x2e || b[18] !== 2 || b[20] !== 0x2e || b[21] !== 0x2e) return null;
  return ino;
}

/** Keeps only blocks in use on at least one side (a change in free space is no change). */
async function dropFree(fa: ExtFs, fb: ExtFs, runs: BlockRuns): Promise<void> {
  for (const r of [...runs.list]) {
    for (let b = r.start; b < r.start + r.count; b++) {
      if (!(await fa.blockInUse(b)) && !(await fb.blockInUse(b))) runs.remove(b, 1);
    }
  }
}

/**
 * Inodes of `fs` whose blocks overlap `runs` (which shrinks as owners are found): one pass over the
 * in-use part of every inode table, read a few blocks at a time.
 */
async function findOwners(fs: ExtFs, runs: BlockRuns, signal?: AbortSignal): Promise<number[]> {
  const owners: number[] = [];
  const isz = fs.inodeSize;
  const bs = fs.blockSize;
  const chunkBlocks = Math.max(1, Math.floor((256 * 1024) / bs));
  for (let g = 0; g < fs.groups && runs.size > 0; g++) {
    checkAborted(signal);
    const usable = await fs.usableInodes(g);
    const tableBlocks = Math.ceil((usable * isz) / bs);
    const d = await fs.group(g);
    for (let blk = 0; blk < tableBlocks && runs.size > 0; blk += chunkBlocks) {
      const n = Math.min(chunkBlocks, tableBlocks - blk);
      const buf = await fs.readBlocks(d.inodeTable + blk, n);
      for (let o = 0; o + isz <= buf.length; o += isz) {
        const idx = (blk * bs + o) / isz;
        if (idx >= usable) break;
        const ino = g * fs.inodesPerGroup + idx + 1;
        if ((ino < 11 && ino !== ROOT) || ino > fs.inodesCount) continue;
        const i = fs.parseInode(ino, buf.subarray(o, o + isz));
        if (!i.inUse || !fs.hasBlocks(i)) continue;
        let m: FileMap;
        try {
          m = fs.mapInInode(i) ?? (await fs.map(i));
        } catch (err) {
          if (err instanceof GuestFormatError) continue; // reported if this inode is ever compared
          throw err;
        }
        let owns = false;
        for (const e of m.extents) {
          if (runs.overlaps(e.physical, e.length)) {
            owns = true;
            runs.remove(e.physical, e.length);
          }
        }
        for (const b of m.meta) {
          if (runs.overlaps(b, 1)) {
            owns = true;
            runs.remove(b, 1);
          }
        }
        if (owns) owners.push(ino);
        if (runs.size === 0) break;
      }
    }
  }
  return owners;
}

/**
 * Names of `wanted` (files no changed directory names) found in the directories nearest to them in
 * their group's inode table: ext4 has no parent pointer in a file's inode, but both allocators put a
 * file in its directory's group — Linux's Orlov allocator starts a file's search there, libext2fs
 * (mke2fs -d, debugfs) takes the first free inode from there, so a directory populated at once has
 * its files right after it. So the directory inodes of the file's group are tried from the file's
 * own number downwards (then those that end the group before: packed inodes run over a group's
 * end), then upwards, NEARBY_DIRS of them at most per file, each read once for all wanted files. The cost follows the number of changed files, not of files; a file not found this
 * way (a hard link, whose names could lie anywhere, or a file far from its directory) is left to the
 * walk from the root (`left`). Any entry found names the file in this state: for a file with one
 * link it is its only name, the one the walk would find.
 */
async function nameNearby(
  fs: ExtFs,
  wanted: Set<number>,
  named: Map<number, { dir: number; name: string }>,
  signal?: AbortSignal,
): Promise<{ left: Set<number>; dirs: number }> {
  const left = new Set<number>();
  const found = new Map<number, { dir: number; name: string }>(); // wanted inodes only: bounded
  const dirsRead = new Set<number>();
  const perChunk = Math.max(1, Math.floor(NEARBY_CHUNK / fs.inodeSize));
  const chunkCache = new Map<string, Inode[]>(); // group/chunk -> its directory inodes, descending
  const dirsOf = async (g: number, c: number, usable: number): Promise<Inode[]> => {
    const key = `${g}/${c}`;
    const hit = chunkCache.get(key);
    if (hit) return hit;
    const first = c * perChunk;
    const n = Math.min(perChunk, usable - first);
    const d = await fs.group(g);
    const startByte = first * fs.inodeSize;
    const firstBlock = Math.floor(startByte / fs.blockSize);
    const blocks = Math.ceil((startByte + n * fs.inodeSize) / fs.blockSize) - firstBlock;
    const buf = await fs.readBlocks(d.inodeTable + firstBlock, blocks);
    const out: Inode[] = [];
    for (let k = n - 1; k >= 0; k--) {
      const o = startByte - firstBlock * fs.blockSize + k * fs.inodeSize;
      const ino = g * fs.inodesPerGroup + first + k + 1;
      if ((ino < 11 && ino !== ROOT) || ino > fs.inodesCount) continue;
      const i = fs.parseInode(ino, buf.subarray(o, o + fs.inodeSize));
      if (i.inUse && (i.mode & S_IFMT) === S_IFDIR) out.push(i);
    }
    chunkCache.set(key, out);
    return out;
  };
  for (const x of [...wanted].sort((p, q) => p - q)) {
    checkAborted(signal);
    const self = await fs.inode(x);
    const g = Math.floor((x - 1) / fs.inodesPerGroup);
    const usable = await fs.usableInodes(g);
    if (self.links !== 1 || usable === 0) {
      left.add(x);
      continue;
    }
    const known = found.get(x);
    if (known) {
      named.set(x, known);
      continue;
    }
    const chunks = Math.ceil(usable / perChunk);
    const c0 = Math.min(Math.floor(((x - 1) % fs.inodesPerGroup) / perChunk), chunks - 1);
    // Nearest first: the directories below the file, descending (and the last ones of the group
    // before: libext2fs packs inodes, so a directory may end one group and its files start the
    // next), then those above it, ascending.
    const order: { g: number; c: number; up: boolean }[] = [];
    for (let c = c0; c >= 0; c--) order.push({ g, c, up: false });
    const prevUsable = g > 0 ? await fs.usableInodes(g - 1) : 0;
    if (prevUsable > 0) order.push({ g: g - 1, c: Math.ceil(prevUsable / perChunk) - 1, up: false });
    for (let c = c0; c < chunks; c++) order.push({ g, c, up: true });
    let budget = NEARBY_DIRS;
    search: for (const o of order) {
      let dirs: Inode[];
      try {
        dirs = await dirsOf(o.g, o.c, o.g === g ? usable : prevUsable);
      } catch (err) {
        if (err instanceof GuestFormatError) break;
        throw err;
      }
      for (const d of o.up ? dirs.filter((i) => i.ino > x).reverse() : dirs.filter((i) => i.ino < x)) {
        if (dirsRead.has(d.ino)) continue;
        if (budget-- <= 0) break search;
        dirsRead.add(d.ino);
        let entries: DirEntry[];
        try {
          entries = (await fs.readDir(d)).entries;
        } catch (err) {
          if (err instanceof GuestFormatError) continue;
          throw err;
        }
        for (const e of entries) if (wanted.has(e.ino) && !found.has(e.ino)) found.set(e.ino, { dir: d.ino, name: e.name });
        if (found.has(x)) break search;
      }
    }
    const hit = found.get(x);
    if (hit) named.set(x, hit);
    else left.add(x);
  }
  return { left, dirs: dirsRead.size };
}

/** Breadth-first from the root until every wanted inode has a name; returns the directories read. */
async function walkForNames(fs: ExtFs, wanted: Set<number>, named: Map<number, { dir: number; name: string }>, signal?: AbortSignal): Promise<number> {
  const left = new Set(wanted);
  const seen = new Set<number>([2]);
  const queue = [2];
  let visited = 0;
  let read = 0;
  while (queue.length > 0 && left.size > 0 && visited < MAX_WALK) {
    checkAborted(signal);
    const dirIno = queue.shift()!;
    let entries: DirEntry[];
    try {
      const di = await fs.inode(dirIno);
      if (!di.inUse || (di.mode & S_IFMT) !== S_IFDIR) continue;
      entries = (await fs.readDir(di)).entries;
    } catch (err) {
      if (err instanceof GuestFormatError) continue;
      throw err;
    }
    read++;
    for (const e of entries) {
      visited++;
      if (left.delete(e.ino)) named.set(e.ino, { dir: dirIno, name: e.name });
      // file_type says which entries are directories without reading their inodes (0: not recorded)
      if (!seen.has(e.ino) && (e.ftype === 0 || e.ftype === FT_DIR)) {
        // Only directories are queued; the inode decides.
        const i = await fs.inode(e.ino).catch(() => null);
        if (i?.inUse && (i.mode & S_IFMT) === S_IFDIR) {
          seen.add(e.ino);
          queue.push(e.ino);
        }
      }
    }
  }
  return read;
}

/** The path of a directory, from `..` links up to the root (null if it is not reachable). */
async function dirPath_(side: Side, ino: number, warnings: string[]): Promise<string | null> {
  const known = side.dirPaths.get(ino);
  if (known !== undefined) return known;
  const chain: { ino: number; name: string }[] = [];
  let cur = ino;
  const seen = new Set<number>();
  try {
    while (!side.dirPaths.has(cur)) {
      if (seen.has(cur) || seen.size > MAX_DEPTH) throw new GuestFormatError(`directory inode ${ino}: its parent links loop`);
      seen.add(cur);
      const i = await side.fs.inode(cur);
      if (!i.inUse || (i.mode & S_IFMT) !== S_IFDIR) return null;
      const { parent } = await side.fs.readDir(i);
      if (parent === 0 || parent === cur) return null;
      const p = await side.fs.inode(parent);
      const e = (await side.fs.readDir(p)).entries.find((x) => x.ino === cur);
      if (!e) return null;
      chain.push({ ino: cur, name: e.name });
      cur = parent;
    }
  } catch (err) {
    if (!(err instanceof GuestFormatError)) throw err;
    warnings.push(err.message);
    return null;
  }
  let path = side.dirPaths.get(cur)!;
  for (const c of chain.reverse()) {
    path = join(path, c.name);
    side.dirPaths.set(c.ino, path);
  }
  return path;
}

/** Entries and bytes beneath a directory added or removed whole (each inode counted once). */
async function summarise(fs: ExtFs, root: Inode, covered: Set<number>): Promise<{ entries: number; bytes: number }> {
  let entries = 0;
  let bytes = 0;
  const seen = new Set<number>([root.ino]);
  const queue = [root];
  while (queue.length > 0 && entries < MAX_WALK) {
    const d = queue.shift()!;
    for (const e of (await fs.readDir(d)).entries) {
      if (seen.has(e.ino)) continue;
      seen.add(e.ino);
      covered.add(e.ino);
      entries++;
      const i = await fs.inode(e.ino);
      if ((i.mode & S_IFMT) === S_IFDIR) queue.push(i);
      else bytes += i.size;
    }
  }
  return { entries, bytes };
}

/** Are the bytes of two versions of a regular file (or symlink) different? */
async function contentDiffers(fa: ExtFs, ia: Inode, fb: ExtFs, ib: Inode, changed: BlockRuns): Promise<boolean> {
  if (ia.size !== ib.size) return true;
  const size = ib.size;
  const inlineA = !fa.hasBlocks(ia);
  const inlineB = !fb.hasBlocks(ib);
  if (!inlineA && !inlineB) {
    const [ma, mb] = await Promise.all([fa.map(ia), fb.map(ib)]);
    const same =
      ma.extents.length === mb.extents.length &&
      ma.extents.every((e, k) => {
        const f = mb.extents[k]!;
        return e.logical === f.logical && e.physical === f.physical && e.length === f.length && e.uninit === f.uninit;
      });
    if (same) {
      // Same blocks on both sides: only the changed ones can differ (within the file's size).
      for (const e of mb.extents) {
        if (e.uninit) continue;
        for (const r of changed.intersect(e.physical, e.length)) {
          const pos = (e.logical + (r.start - e.physical)) * fa.blockSize;
          const len = r.count * fa.blockSize;
          if (pos >= size) continue;
          const [a, b] = await Promise.all([fa.read(ia, ma, pos, len), fb.read(ib, mb, pos, len)]);
          if (!a.equals(b)) return true;
        }
      }
      return false;
    }
    for (let pos = 0; pos < size; pos += COMPARE_SLICE) {
      const [a, b] = await Promise.all([fa.read(ia, ma, pos, COMPARE_SLICE), fb.read(ib, mb, pos, COMPARE_SLICE)]);
      if (!a.equals(b)) return true;
    }
    return false;
  }
  for (let pos = 0; pos < size; pos += COMPARE_SLICE) {
    const [a, b] = await Promise.all([fa.read(ia, null, pos, COMPARE_SLICE), fb.read(ib, null, pos, COMPARE_SLICE)]);
    if (!a.equals(b)) return true;
  }
  return false;
}

/** The change at one path between inode `a` (before, or null) and `b` (after, or null), or null if none. */
async function compareNamed(
  path: string,
  a: Inode | null,
  b: Inode | null,
  fa: ExtFs,
  fb: ExtFs,
  changed: BlockRuns,
  covered: Set<number>,
  stats: FilesDiff['stats'],
): Promise<FileChange | null> {
  if (a && !a.inUse) a = null;
  if (b && !b.inUse) b = null;
  if (!a && !b) return null;
  const base = (i: Inode) => ({ type: typeOf(i.mode), ...(typeOf(i.mode) === 'file' && i.links > 1 ? { links: i.links } : {}) });
  if (!a || !b) {
    const i = (b ?? a)!;
    const fs = b ? fb : fa;
    const ch: FileChange = {
      path,
      change: b ? 'added' : 'removed',
      ...base(i),
      size_before: a ? a.size : null,
      size_after: b ? b.size : null,
      mtime_before: a ? iso(a.mtime) : null,
      mtime_after: b ? iso(b.mtime) : null,
    };
    if (typeOf(i.mode) === 'symlink') ch[b ? 'target_after' : 'target_before'] = await fs.readLink(i);
    if (typeOf(i.mode) === 'dir') Object.assign(ch, await summarise(fs, i, covered));
    // A new inode (or a freed one) is fully described by this entry.
    if (b && !(await fa.inode(b.ino)).inUse) covered.add(b.ino);
    if (a && !(await fb.inode(a.ino)).inUse) covered.add(a.ino);
    return ch;
  }
  covered.add(a.ino);
  covered.add(b.ino);
  stats.inodes_compared++;
  const ta = typeOf(a.mode);
  const tb = typeOf(b.mode);
  const fields: string[] = [];
  const ch: FileChange = {
    path,
    change: 'modified',
    ...base(b),
    size_before: a.size,
    size_after: b.size,
    mtime_before: iso(a.mtime),
    mtime_after: iso(b.mtime),
  };
  if (ta !== tb) {
    fields.push('type');
    ch.type_before = ta;
  } else if (tb === 'file' && (await contentDiffers(fa, a, fb, b, changed))) fields.push('content');
  else if (tb === 'symlink') {
    const [x, y] = [await fa.readLink(a), await fb.readLink(b)];
    if (x !== y) {
      fields.push('target');
      ch.target_before = x;
      ch.target_after = y;
    }
  } else if ((tb === 'char' || tb === 'block') && !a.raw.subarray(40, 48).equals(b.raw.subarray(40, 48))) fields.push('device');
  if ((a.mode & 0o7777) !== (b.mode & 0o7777)) {
    fields.push('mode');
    ch.mode_before = perm(a.mode);
    ch.mode_after = perm(b.mode);
  }
  if (a.uid !== b.uid || a.gid !== b.gid) {
    fields.push('owner');
    ch.owner_before = `${a.uid}:${a.gid}`;
    ch.owner_after = `${b.uid}:${b.gid}`;
  }
  if (a.size !== b.size && tb !== 'dir') fields.push('size');
  if (fields.length === 0) return null;
  ch.fields = fields;
  if (!fields.includes('type') && !fields.includes('content') && !fields.includes('device')) ch.change = 'metadata';
  return ch;
}
