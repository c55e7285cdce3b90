/**
 * What `archive list`, `show` and `stats` report, from the records (and, for stats, the sizes of the
 * repository's files). Figures per VM come from its records: its logical size is the data of its
 * distinct snapshots' layers, and the blocks a push stored first are that push's (a later VM whose
 * blocks were all there already is credited with the whole of its data as dedup savings).
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ioError } from '../errors.js';
import { catalog, findArchived } from './catalog.js';
import { DIR_INDEX, DIR_LAYERS, DIR_PACKS, DIR_SNAPSHOTS, type PushRecord, type RecordDisk } from './format.js';
import { readAllRecords } from './records.js';
import type { Repo } from './repo.js';

export interface ArchiveListEntry {
  vm: string;
  name: string;
  parent: string | null;
  content_id: string;
  created_at: string;
  pushed_at: string;
  description: string | null;
  tags: string[];
  data_bytes: number;
  /** True when a newer snapshot of the same name hides this one (name it by content id). */
  shadowed: boolean;
}

export interface ArchiveShowResult extends ArchiveListEntry {
  type: 'disk' | 'full';
  auto_created: boolean;
  auto_policy: string | null;
  expires_at: string | null;
  record: string;
  records: number;
  /** root..this snapshot, as restore rebuilds it. */
  line: string[];
  disks: { target: string; virtual_size: number; cluster_size: number; data_bytes: number; digest: string; layer: string }[];
}

export interface ArchiveVmStats {
  vm: string;
  snapshots: number;
  pushes: number;
  /** Data of its distinct snapshots' layers (what restoring every one would read). */
  logical_bytes: number;
  /** Raw bytes of the blocks its pushes stored first. */
  unique_bytes: number;
  /** Compressed bytes of those blocks. */
  stored_bytes: number;
  dedup_savings_bytes: number;
  compression_savings_bytes: number;
}

export interface ArchiveStats {
  repo: string;
  encrypted: boolean;
  append_only: boolean;
  vms: ArchiveVmStats[];
  total: Omit<ArchiveVmStats, 'vm'> & {
    /** Bytes of every file of the repository (packs, index files, layer maps, records, config). */
    repository_bytes: number;
    pack_bytes: number;
    index_bytes: number;
    layer_bytes: number;
    record_bytes: number;
    packs: number;
    index_files: number;
    layers: number;
  };
}

const dataOf = (disks: RecordDisk[]) => disks.reduce((a, d) => a + d.data_bytes, 0);

export async function listArchive(repo: Repo, vm?: string): Promise<ArchiveListEntry[]> {
  return catalog(await readAllRecords(repo), vm).map((a) => ({
    vm: a.vm,
    name: a.name,
    parent: a.snap.parent,
    content_id: a.content_id,
    created_at: a.snap.created_at,
    pushed_at: a.pushed_at,
    description: a.snap.description,
    tags: a.snap.tags,
    data_bytes: dataOf(a.snap.disks),
    shadowed: a.shadowed,
  }));
}

export async function showArchived(repo: Repo, vm: string, snap: string): Promise<ArchiveShowResult> {
  const a = findArchived(await readAllRecords(repo), vm, snap);
  const s = a.snap;
  return {
    vm: a.vm,
    name: s.name,
    parent: s.parent,
    content_id: s.content_id,
    created_at: s.created_at,
    pushed_at: a.pushed_at,
    description: s.description,
    tags: s.tags,
    data_bytes: dataOf(s.disks),
    shadowed: a.shadowed,
    type: s.type,
    auto_created: s.auto_created,
    auto_policy: s.auto_policy,
    expires_at: s.expires_at,
    record: a.record,
    records: a.records,
    line: a.line.map((x) => x.name),
    disks: s.disks.map((d) => ({
      target: d.target,
      virtual_size: d.virtual_size,
      cluster_size: d.cluster_size,
      data_bytes: d.data_bytes,
      digest: d.digest,
      layer: d.layer,
    })),
  };
}

/** Sizes and counts of the files under `dir` (recursively), hidden temporaries left out. */
async function du(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  let names: import('node:fs').Dirent[];
  try {
    names = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { bytes, files };
    throw ioError(err, 'cannot read directory', dir);
  }
  for (const n of names) {
    if (n.name.startsWith('.') || n.name.startsWith('pending-')) continue;
    const p = path.join(dir, n.name);
    if (n.isDirectory()) {
      const s = await du(p);
      bytes += s.bytes;
      files += s.files;
    } else if (n.isFile()) {
      bytes += (await stat(p)).size;
      files++;
    }
  }
  return { bytes, files };
}

export async function archiveStats(repo: Repo): Promise<ArchiveStats> {
  const records = await readAllRecords(repo);
  const all = catalog(records);
  const byVm = new Map<string, { recs: PushRecord[] }>();
  for (const r of records) {
    const e = byVm.get(r.vm) ?? { recs: [] };
    e.recs.push(r);
    byVm.set(r.vm, e);
  }
  const vms: ArchiveVmStats[] = [...byVm.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([vm, e]) => {
      const snaps = all.filter((a) => a.vm === vm);
      const logical = snaps.reduce((a, s) => a + dataOf(s.snap.disks), 0);
      const unique = e.recs.reduce((a, r) => a + r.stats.new_raw_bytes, 0);
      const stored = e.recs.reduce((a, r) => a + r.stats.new_stored_bytes, 0);
      return {
        vm,
        snapshots: snaps.length,
        pushes: e.recs.length,
        logical_bytes: logical,
        unique_bytes: unique,
        stored_bytes: stored,
        dedup_savings_bytes: Math.max(0, logical - unique),
        compression_savings_bytes: unique - stored,
      };
    });
  const sum = (k: keyof Omit<ArchiveVmStats, 'vm'>) => vms.reduce((a, v) => a + v[k], 0);
  const packs = await du(path.join(repo.dir, DIR_PACKS));
  const index = await du(path.join(repo.dir, DIR_INDEX));
  const layers = await du(path.join(repo.dir, DIR_LAYERS));
  const recs = await du(path.join(repo.dir, DIR_SNAPSHOTS));
  const config = (await stat(path.join(repo.dir, 'config'))).size;
  return {
    repo: repo.dir,
    encrypted: repo.encrypted,
    append_only: repo.appendOnly,
    vms,
    total: {
      snapshots: sum('snapshots'),
      pushes: sum('pushes'),
      logical_bytes: sum('logical_bytes'),
      unique_bytes: sum('unique_bytes'),
      stored_bytes: sum('stored_bytes'),
      dedup_savings_bytes: sum('dedup_savings_bytes'),
      compression_savings_bytes: sum('compression_savings_bytes'),
      repository_bytes: packs.bytes + index.bytes + layers.bytes + recs.bytes + config,
      pack_bytes: packs.bytes,
      index_bytes: index.bytes,
      layer_bytes: layers.bytes,
      record_bytes: recs.bytes,
      packs: packs.files,
      index_files: index.files,
      layers: layers.files,
    },
  };
}
