/**
 * Push records (snapshots/<id>): a container with one entry, the record as JSON (format.ts PushRecord),
 * and the trailer `{"version":1,"entries":1}`. A push or an import writes its record last, after every
 * pack, index file and layer map it names is in place: a snapshot is in the archive exactly when a
 * record names it. Records are never changed; what forget and gc do with them is theirs to define
 * (docs/archive-format.md §8).
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { NAME_RE } from '../names.js';
import { archiveCorrupt, ContainerReader, ContainerWriter } from './container.js';
import { FileType, ID_RE, MAX_RECORD_ENTRY, NAME_RE64, type PushRecord, type RecordDisk, type RecordSnapshot } from './format.js';
import type { Repo } from './repo.js';

const TARGET_RE = /^[a-z][a-z0-9]{0,31}$/;
const MAX_SNAPSHOTS = 100_000;
const MAX_DISKS = 64;

export async function writeRecord(repo: Repo, rec: PushRecord): Promise<void> {
  const file = path.join(repo.snapshotsDir, rec.id);
  const w = await ContainerWriter.create(file, FileType.Snapshots, repo.sealer(FileType.Snapshots, rec.id));
  try {
    await w.add(Buffer.from(JSON.stringify(rec)));
    if (!(await w.finish(Buffer.from(JSON.stringify({ version: 1, entries: 1 }))))) throw new CloneboxError('INTERNAL', `record id ${rec.id} was taken`);
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/**
 * Reads and checks one record.
 * @public archive check and gc (branch archive-ops) read records one by one.
 */
export async function readRecord(repo: Repo, id: string): Promise<PushRecord> {
  const c = await ContainerReader.open(path.join(repo.snapshotsDir, id), FileType.Snapshots, repo.sealer(FileType.Snapshots, id), 1024);
  try {
    const t = safeJson(c.trailer, c.file, 'record trailer') as { version?: unknown; entries?: unknown } | null;
    if (t?.version !== 1 || t.entries !== 1) throw archiveCorrupt('record trailer is not {version 1, entries 1}', c.file);
    const parts: Buffer[] = [];
    for await (const e of c.entries(MAX_RECORD_ENTRY)) parts.push(e);
    if (parts.length !== 1) throw archiveCorrupt(`record holds ${parts.length} entries, not 1`, c.file);
    return checkRecord(safeJson(parts[0]!, c.file, 'record'), id, c.file);
  } finally {
    await c.close();
  }
}

/**
 * Ids of every record in the repository (sorted by id; created_at gives the order of pushes).
 * @public archive check, forget and gc (branch archive-ops) list records.
 */
export async function listRecordIds(repo: Repo): Promise<string[]> {
  try {
    return (await readdir(repo.snapshotsDir)).filter((n) => ID_RE.test(n)).sort();
  } catch (err) {
    throw ioError(err, 'cannot read archive snapshots directory', repo.snapshotsDir);
  }
}

/** Every record, oldest push first. */
export async function readAllRecords(repo: Repo): Promise<PushRecord[]> {
  const out: PushRecord[] = [];
  for (const id of await listRecordIds(repo)) out.push(await readRecord(repo, id));
  return out.sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id < b.id ? -1 : 1));
}

function safeJson(b: Buffer, file: string, what: string): unknown {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch {
    throw archiveCorrupt(`${what} is not JSON`, file);
  }
}

type Obj = Record<string, unknown>;

function checkRecord(v: unknown, id: string, file: string): PushRecord {
  const fail = (what: string): never => {
    throw archiveCorrupt(`record: ${what}`, file);
  };
  const obj = (x: unknown, at: string): Obj => (typeof x === 'object' && x !== null && !Array.isArray(x) ? (x as Obj) : fail(`${at} is not an object`));
  const str = (x: unknown, at: string, max = 4096): string => (typeof x === 'string' && x.length <= max ? x : fail(`${at} is not a string`));
  const strOrNull = (x: unknown, at: string, max = 65536): string | null => (x === null ? null : str(x, at, max));
  const int = (x: unknown, at: string, min = 0, max = Number.MAX_SAFE_INTEGER): number =>
    typeof x === 'number' && Number.isSafeInteger(x) && x >= min && x <= max ? x : fail(`${at} is not an integer in ${min}..${max}`);
  const name = (x: unknown, at: string): string => {
    const s = str(x, at, 128);
    return NAME_RE.test(s) ? s : fail(`${at} is not a valid name`);
  };
  const time = (x: unknown, at: string): string => {
    const s = str(x, at, 64);
    return Number.isNaN(Date.parse(s)) ? fail(`${at} is not a time`) : s;
  };
  const hex64 = (x: unknown, at: string): string => {
    const s = str(x, at, 64);
    return NAME_RE64.test(s) ? s : fail(`${at} is not 64 hex digits`);
  };
  const arr = (x: unknown, at: string, max: number): unknown[] => (Array.isArray(x) && x.length <= max ? x : fail(`${at} is not an array of at most ${max}`));
  const r = obj(v, 'record');
  if (r.format !== 'clonebox-archive-snapshots' || r.version !== 1) fail('not a version 1 record');
  if (r.id !== id) fail(`its id ${JSON.stringify(r.id)} is not its file name`);
  const source = r.source === 'push' || r.source === 'import' ? r.source : fail('source is not push or import');
  const st = obj(r.stats, 'stats');
  const snaps: RecordSnapshot[] = arr(r.snapshots, 'snapshots', MAX_SNAPSHOTS).map((x, i) => {
    const s = obj(x, `snapshots[${i}]`);
    const at = `snapshot ${i}`;
    const disks: RecordDisk[] = arr(s.disks, `${at} disks`, MAX_DISKS).map((y, k) => {
      const d = obj(y, `${at} disk ${k}`);
      const target = str(d.target, `${at} disk ${k} target`, 32);
      if (!TARGET_RE.test(target)) fail(`${at} disk ${k} target is not a disk target`);
      const vs = int(d.virtual_size, `${at} disk ${k} virtual_size`, 1);
      return {
        target,
        layer: hex64(d.layer, `${at} disk ${k} layer`),
        digest: hex64(d.digest, `${at} disk ${k} digest`),
        virtual_size: vs,
        cluster_size: int(d.cluster_size, `${at} disk ${k} cluster_size`, 512, 2 * 1024 * 1024),
        data_bytes: int(d.data_bytes, `${at} disk ${k} data_bytes`, 0, vs),
      };
    });
    if (disks.length === 0) fail(`${at} has no disks`);
    const type = s.type === 'disk' || s.type === 'full' ? s.type : fail(`${at} type is not disk or full`);
    return {
      name: name(s.name, `${at} name`),
      parent: s.parent === null ? null : name(s.parent, `${at} parent`),
      type,
      created_at: time(s.created_at, `${at} created_at`),
      description: strOrNull(s.description, `${at} description`),
      tags: arr(s.tags, `${at} tags`, 1000).map((t, k) => str(t, `${at} tag ${k}`, 256)),
      auto_created: typeof s.auto_created === 'boolean' ? s.auto_created : fail(`${at} auto_created is not a boolean`),
      auto_policy: strOrNull(s.auto_policy, `${at} auto_policy`, 256),
      expires_at: s.expires_at === null ? null : time(s.expires_at, `${at} expires_at`),
      content_id: hex64(s.content_id, `${at} content_id`),
      disks,
    };
  });
  // Parents come first: each parent is an earlier snapshot of the record (or none for a root).
  const seen = new Set<string>();
  for (const s of snaps) {
    if (seen.has(s.name)) fail(`snapshot ${s.name} appears twice`);
    if (s.parent !== null && !seen.has(s.parent)) fail(`snapshot ${s.name}'s parent ${s.parent} is not before it`);
    seen.add(s.name);
  }
  const current = r.current === null ? null : name(r.current, 'current');
  if (current !== null && !seen.has(current)) fail(`current ${current} is not one of its snapshots`);
  return {
    format: 'clonebox-archive-snapshots',
    version: 1,
    id,
    created_at: time(r.created_at, 'created_at'),
    vm: name(r.vm, 'vm'),
    source,
    host: str(r.host, 'host', 256),
    current,
    snapshots: snaps,
    stats: {
      read_bytes: int(st.read_bytes, 'stats read_bytes'),
      new_blocks: int(st.new_blocks, 'stats new_blocks'),
      new_raw_bytes: int(st.new_raw_bytes, 'stats new_raw_bytes'),
      new_stored_bytes: int(st.new_stored_bytes, 'stats new_stored_bytes'),
      pack_bytes: int(st.pack_bytes, 'stats pack_bytes'),
    },
  };
}
