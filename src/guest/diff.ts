/**
 * The guest-aware diff of one disk between two states: partitions as the guest sees them, then per
 * partition the files (ext2/3/4), the installed packages and the configuration under /etc. Problems
 * inside the guest (an unsupported or damaged filesystem, a bad partition entry) become messages on
 * the partition they concern; the rest of the disk is still compared.
 */
import { checkAborted } from '../abort.js';
import type { Run } from './blocks.js';
import { type ByteSource, DiskView, GuestFormatError, type GuestReader, Window } from './disk.js';
import { ExtFs, type Inode, S_IFMT, S_IFREG } from './ext.js';
import { diffFiles, type FileChange } from './files.js';
import { diffPackages, type PackageChange, type PackageManager, parseApkInstalled, parseDpkgStatus } from './packages.js';
import { type Partition, readPartitions } from './partitions.js';
import { type FsKind, probeFs } from './probe.js';
import { unifiedDiff } from './unidiff.js';

export interface GuestDiffOptions {
  files?: boolean;
  packages?: boolean;
  etc?: boolean;
  /** Largest file (bytes, each side) shown as a unified diff under /etc. */
  maxDiffBytes?: number;
  signal?: AbortSignal;
}

const DEFAULT_MAX_DIFF_BYTES = 64 * 1024;
/** Largest package database read. */
const MAX_DB_BYTES = 64 * 1024 * 1024;

interface FilesSummary {
  added: number;
  removed: number;
  modified: number;
  metadata: number;
  renamed: number;
  bytes_added: number;
  bytes_removed: number;
}

interface PackagesResult {
  manager: PackageManager;
  path: string;
  changes: PackageChange[];
}

interface EtcChange extends FileChange {
  /** Unified diff of a text file; absent for binary files, directories and files above the limit. */
  diff?: string;
  binary?: boolean;
  too_large?: boolean;
}

interface PartitionDiff {
  index: number;
  start: number;
  size: number;
  type: string;
  filesystem: FsKind;
  /** compared; unchanged (no changed byte inside it: not read); unsupported; error (see message). */
  status: 'compared' | 'unchanged' | 'unsupported' | 'error';
  message?: string;
  warnings: string[];
  summary?: FilesSummary;
  files?: FileChange[];
  packages?: PackagesResult[];
  etc?: EtcChange[];
  stats?: { changed_blocks: number; inodes_compared: number; owner_scan: boolean; dirs_searched: number; dirs_walked: number; bytes_read: number };
}

export interface GuestDiff {
  scheme: 'mbr' | 'gpt' | 'none';
  warnings: string[];
  partitions: PartitionDiff[];
}

const EXT: FsKind[] = ['ext2', 'ext3', 'ext4'];

export async function diffGuest(
  ra: GuestReader,
  sizeA: number,
  rb: GuestReader,
  sizeB: number,
  changed: readonly { offset: number; length: number }[],
  opts: GuestDiffOptions,
): Promise<GuestDiff> {
  const da = new DiskView(ra, sizeA);
  const db = new DiskView(rb, sizeB);
  const [ta, tb] = await Promise.all([readPartitions(da), readPartitions(db)]);
  const warnings = [...new Set([...ta.warnings, ...tb.warnings])];
  const out: PartitionDiff[] = [];
  for (const p of tb.partitions) {
    checkAborted(opts.signal);
    const before = ta.partitions.find((q) => q.start === p.start && q.size === p.size);
    const base = { index: p.index, start: p.start, size: p.size, type: p.type, warnings: [] as string[] };
    const wb = new Window(db, p.start, p.size);
    const fsKind = await probeFs(wb).catch(() => 'unknown' as const);
    if (!before) {
      out.push({ ...base, filesystem: fsKind, status: 'error', message: `partition ${p.index}: new or moved since the first state; files not compared` });
      continue;
    }
    const inside = changed
      .filter((r) => r.offset < p.start + p.size && r.offset + r.length > p.start)
      .map((r): Run => {
        const s = Math.max(r.offset, p.start);
        return { start: s - p.start, count: Math.min(r.offset + r.length, p.start + p.size) - s };
      });
    if (inside.length === 0) {
      out.push({ ...base, filesystem: fsKind, status: 'unchanged' });
      continue;
    }
    if (!EXT.includes(fsKind)) {
      const what = fsKind === 'unknown' ? 'an unknown filesystem' : fsKind;
      out.push({ ...base, filesystem: fsKind, status: 'unsupported', message: `partition ${p.index}: ${what} is not supported; files not compared` });
      continue;
    }
    out.push(await diffExtPartition(p, new Window(da, p.start, p.size), wb, fsKind, inside, opts, da, db));
  }
  for (const q of ta.partitions) {
    if (!tb.partitions.some((p) => p.start === q.start && p.size === q.size)) {
      out.push({
        index: q.index,
        start: q.start,
        size: q.size,
        type: q.type,
        filesystem: 'unknown',
        status: 'error',
        warnings: [],
        message: `partition ${q.index}: removed or moved since the first state; files not compared`,
      });
    }
  }
  return { scheme: tb.scheme, warnings, partitions: out };
}

async function diffExtPartition(
  p: Partition,
  wa: ByteSource,
  wb: ByteSource,
  kind: FsKind,
  changed: Run[],
  opts: GuestDiffOptions,
  da: DiskView,
  db: DiskView,
): Promise<PartitionDiff> {
  const res: PartitionDiff = { index: p.index, start: p.start, size: p.size, type: p.type, filesystem: kind, status: 'compared', warnings: [] };
  const read0 = da.bytesRead + db.bytesRead;
  try {
    const [fa, fb] = await Promise.all([ExtFs.open(wa), ExtFs.open(wb)]);
    if (opts.files || opts.etc) {
      const d = await diffFiles(fa, fb, changed, opts.signal);
      res.warnings.push(...d.warnings);
      res.stats = { ...d.stats, bytes_read: 0 };
      res.summary = summarise(d.changes);
      if (opts.files) res.files = d.changes;
      if (opts.etc) res.etc = await etcChanges(fa, fb, d.changes, opts.maxDiffBytes ?? DEFAULT_MAX_DIFF_BYTES);
    }
    if (opts.packages) res.packages = await packages(fa, fb, res.warnings);
  } catch (err) {
    if (!(err instanceof GuestFormatError)) throw err;
    res.status = 'error';
    res.message = `partition ${p.index}: ${err.message}; files not compared`;
    delete res.summary;
    delete res.files;
    delete res.etc;
    delete res.packages;
  }
  if (res.stats) res.stats.bytes_read = da.bytesRead + db.bytesRead - read0;
  return res;
}

function summarise(changes: FileChange[]): FilesSummary {
  const s: FilesSummary = { added: 0, removed: 0, modified: 0, metadata: 0, renamed: 0, bytes_added: 0, bytes_removed: 0 };
  for (const c of changes) {
    s[c.change]++;
    const before = c.change === 'removed' && c.bytes !== undefined ? c.bytes : (c.size_before ?? 0);
    const after = c.change === 'added' && c.bytes !== undefined ? c.bytes : (c.size_after ?? 0);
    if (c.type === 'dir' && c.bytes === undefined) continue;
    if (after > before) s.bytes_added += after - before;
    else s.bytes_removed += before - after;
  }
  return s;
}

/** The file at `path` if it is a regular file of at most `max` bytes (else why not). */
async function textOf(fs: ExtFs, path: string, max: number): Promise<Buffer | 'none' | 'large' | 'special'> {
  const i: Inode | null = await fs.lookup(path);
  if (!i) return 'none';
  if ((i.mode & S_IFMT) !== S_IFREG) return 'special';
  if (i.size > max) return 'large';
  return fs.read(i, null, 0, i.size);
}

function isBinary(b: Buffer): boolean {
  if (b.includes(0)) return true;
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(b);
    return false;
  } catch {
    return true;
  }
}

async function etcChanges(fa: ExtFs, fb: ExtFs, changes: FileChange[], max: number): Promise<EtcChange[]> {
  const out: EtcChange[] = [];
  for (const c of changes) {
    if (c.path !== '/etc' && !c.path.startsWith('/etc/')) continue;
    const e: EtcChange = { ...c };
    out.push(e);
    const contentChanged = c.change === 'added' || c.change === 'removed' || c.fields?.includes('content');
    if (!contentChanged || c.type !== 'file') continue;
    const a = c.change === 'added' ? Buffer.alloc(0) : await textOf(fa, c.path_before ?? c.path, max);
    const b = c.change === 'removed' ? Buffer.alloc(0) : await textOf(fb, c.path, max);
    if (a === 'large' || b === 'large') e.too_large = true;
    else if (!Buffer.isBuffer(a) || !Buffer.isBuffer(b)) continue;
    else if (isBinary(a) || isBinary(b)) e.binary = true;
    else {
      const d = unifiedDiff(c.path, a.toString('utf8'), b.toString('utf8'));
      if (d === null) e.too_large = true;
      else e.diff = d;
    }
  }
  return out;
}

const DATABASES: { manager: PackageManager; path: string; parse: (t: string) => Map<string, string> }[] = [
  { manager: 'dpkg', path: '/var/lib/dpkg/status', parse: parseDpkgStatus },
  { manager: 'apk', path: '/lib/apk/db/installed', parse: parseApkInstalled },
];
const RPM_DIRS = ['/var/lib/rpm', '/usr/lib/sysimage/rpm'];

async function packages(fa: ExtFs, fb: ExtFs, warnings: string[]): Promise<PackagesResult[]> {
  const out: PackagesResult[] = [];
  for (const db of DATABASES) {
    const [a, b] = await Promise.all([textOf(fa, db.path, MAX_DB_BYTES), textOf(fb, db.path, MAX_DB_BYTES)]);
    if (a === 'none' && b === 'none') continue;
    if (a === 'large' || b === 'large') {
      warnings.push(`${db.path} is larger than ${MAX_DB_BYTES} bytes; ${db.manager} packages not compared`);
      continue;
    }
    const parse = (x: typeof a) => (Buffer.isBuffer(x) ? db.parse(x.toString('utf8')) : new Map<string, string>());
    out.push({ manager: db.manager, path: db.path, changes: diffPackages(db.manager, parse(a), parse(b)) });
  }
  for (const dir of RPM_DIRS) {
    if (await fb.lookup(dir)) {
      warnings.push(`${dir}: rpm databases are not supported; rpm packages not compared`);
      break;
    }
  }
  return out;
}
