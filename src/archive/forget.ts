/**
 * `archive forget VM --keep-...`: drops a VM's archived snapshots that no retention rule keeps, with
 * the rules of `snapshot policy` (src/snapshots/policy.ts's planPrune: the same evaluation, not a copy).
 * It removes records only; the blocks and layers only they held go at the next gc.
 *
 * The candidates are the VM's snapshots in the archive: one per content id (the same snapshot pushed
 * twice is one), labelled by name, or name@<content id prefix> for an older snapshot of a name pushed
 * again with other content. A snapshot that a kept one descends from is kept too (reason "ancestor of
 * X"): its layer is part of every descendant's disk, as a qcow2 backing file is.
 *
 * Records are never changed (docs/archive-format.md §1, §8): a record holding both kept and forgotten
 * snapshots is replaced by a new record with the kept ones, written before the old one is deleted. A
 * crash in between leaves both, which name the same snapshots (the same content ids): forget run again
 * finishes the job, and nothing kept is ever without a record.
 */
import { unlink } from 'node:fs/promises';
import path from 'node:path';
import type { KeySource } from '../bundle/crypto.js';
import { crashPoint } from '../crash.js';
import { CloneboxError, ioError } from '../errors.js';
import { fsyncDir } from '../fsutil.js';
import { type Candidate, type Policy, planPrune, validatePolicy } from '../snapshots/policy.js';
import { requireDeleteKey } from './append-only.js';
import { lockExclusive } from './exclusive-lock.js';
import type { PushRecord } from './format.js';
import { readAllRecords, writeRecord } from './records.js';
import { newFileId, type Repo } from './repo.js';

export interface ForgetOptions {
  policy: Policy;
  /** Only say what would go. */
  dryRun?: boolean | undefined;
  /** The delete key of an append-only repository. */
  deleteKey?: KeySource | null | undefined;
}

export interface ForgetEntry {
  /** The snapshot's name, or name@<12 hex of its content id> for an older one of that name. */
  name: string;
  content_id: string;
  created_at: string;
}

export interface ForgetResult {
  vm: string;
  keep: (ForgetEntry & { reasons: string[] })[];
  remove: (ForgetEntry & { reason: string })[];
  records_removed: number;
  records_written: number;
  dry_run: boolean;
}

interface Version {
  label: string;
  name: string;
  content_id: string;
  created_at: string;
  size_bytes: number;
  parent: string | null;
}

/** The VM's snapshots in these records, one per content id, labelled (newest record's name wins). */
function versionsOf(records: PushRecord[], vm: string): Map<string, Version> {
  const byCid = new Map<string, Version>();
  const newestOfName = new Map<string, string>();
  for (const r of records) {
    if (r.vm !== vm) continue;
    const cidOf = new Map(r.snapshots.map((s) => [s.name, s.content_id]));
    for (const s of r.snapshots) {
      newestOfName.set(s.name, s.content_id); // records come oldest first
      if (byCid.has(s.content_id)) continue;
      byCid.set(s.content_id, {
        label: s.name,
        name: s.name,
        content_id: s.content_id,
        created_at: s.created_at,
        size_bytes: s.disks.reduce((a, d) => a + d.data_bytes, 0),
        parent: s.parent === null ? null : (cidOf.get(s.parent) ?? null),
      });
    }
  }
  for (const v of byCid.values()) if (newestOfName.get(v.name) !== v.content_id) v.label = `${v.name}@${v.content_id.slice(0, 12)}`;
  return byCid;
}

export async function forgetSnapshots(repo: Repo, vm: string, opts: ForgetOptions): Promise<ForgetResult> {
  const policy = validatePolicy(opts.policy);
  if (Object.values(policy).every((v) => v === undefined)) {
    throw CloneboxError.USAGE('archive forget needs at least one rule', { hint: 'e.g. --keep-last 4, --keep-daily 7 --keep-weekly 4' });
  }
  const dryRun = Boolean(opts.dryRun);
  if (!dryRun) await requireDeleteKey(repo, opts.deleteKey ?? null, 'forget');
  const lock = dryRun ? null : await lockExclusive(repo, `archive forget ${vm}`);
  try {
    const records = await readAllRecords(repo);
    const versions = versionsOf(records, vm);
    if (versions.size === 0) {
      throw new CloneboxError('ARCHIVE_SNAPSHOT_NOT_FOUND', `the archive holds no snapshot of VM ${vm}, ${repo.dir}`, {
        hint: '`clonebox archive list` shows what it holds',
      });
    }
    const byLabel = new Map([...versions.values()].map((v) => [v.label, v]));
    const candidates: Candidate[] = [...versions.values()].map((v) => ({ name: v.label, created_at: v.created_at, size_bytes: v.size_bytes }));
    const plan = planPrune(candidates, policy, { current: null });
    const reasons = new Map(plan.keep.map((k) => [k.name, [...k.reasons]]));
    // A kept snapshot keeps its whole line: each ancestor becomes kept, with the reason.
    for (const k of plan.keep) {
      let p = byLabel.get(k.name)!.parent;
      while (p !== null) {
        const a = versions.get(p);
        if (!a) break;
        const rs = reasons.get(a.label);
        if (rs) {
          if (!rs.some((r) => r.startsWith('ancestor of'))) rs.push(`ancestor of ${k.name}`);
        } else reasons.set(a.label, [`ancestor of ${k.name}`]);
        p = a.parent;
      }
    }
    const entry = (v: Version): ForgetEntry => ({ name: v.label, content_id: v.content_id, created_at: v.created_at });
    const ordered = [...versions.values()].sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0));
    const keep = ordered.filter((v) => reasons.has(v.label)).map((v) => ({ ...entry(v), reasons: reasons.get(v.label)! }));
    const planned = new Map(plan.remove.map((r) => [r.name, r.reason]));
    const remove = ordered.filter((v) => !reasons.has(v.label)).map((v) => ({ ...entry(v), reason: planned.get(v.label) ?? 'no rule keeps it' }));
    const result: ForgetResult = { vm, keep, remove, records_removed: 0, records_written: 0, dry_run: dryRun };
    if (dryRun || remove.length === 0) return result;

    const gone = new Set(remove.map((r) => r.content_id));
    for (const r of records) {
      if (r.vm !== vm || !r.snapshots.some((s) => gone.has(s.content_id))) continue;
      const kept = r.snapshots.filter((s) => !gone.has(s.content_id));
      if (kept.length > 0) {
        // Same time as the record it replaces: which record is newest for a name does not change.
        const next: PushRecord = { ...r, id: newFileId(), snapshots: kept, current: kept.some((s) => s.name === r.current) ? r.current : null };
        await writeRecord(repo, next);
        result.records_written++;
        crashPoint('archive.forget.record-written');
      }
      const file = path.join(repo.snapshotsDir, r.id);
      try {
        await unlink(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, 'cannot remove archive record', file);
      }
      await fsyncDir(repo.snapshotsDir);
      result.records_removed++;
      crashPoint('archive.forget.record-deleted');
    }
    return result;
  } finally {
    await lock?.release();
  }
}
