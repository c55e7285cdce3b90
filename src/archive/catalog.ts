/**
 * What the archive holds, as users name it: per VM, the union of its records' snapshots
 * (docs/archive-format.md §7). The same snapshot (name and content id) in several records is one; a
 * name with several content ids is shown by the newest record under its name and the others by their
 * content ids. A snapshot is restored with the line root..it of the newest record holding it.
 */
import { CloneboxError } from '../errors.js';
import type { PushRecord, RecordSnapshot } from './format.js';

export interface ArchivedSnapshot {
  vm: string;
  name: string;
  content_id: string;
  /** The newest record holding it, and when that was written. */
  record: string;
  pushed_at: string;
  /** Records holding it. */
  records: number;
  /** True when a newer snapshot of the same name (another content id) hides this one's name. */
  shadowed: boolean;
  snap: RecordSnapshot;
  /** root..this, from the newest record holding it. */
  line: RecordSnapshot[];
}

function lineOf(rec: PushRecord, name: string): RecordSnapshot[] {
  const byName = new Map(rec.snapshots.map((s) => [s.name, s]));
  const out: RecordSnapshot[] = [];
  for (let cur: string | null = name; cur !== null; cur = byName.get(cur)?.parent ?? null) out.push(byName.get(cur)!);
  return out.reverse();
}

/** Every archived snapshot of every VM (or of `vm`), oldest first per VM. Records are given oldest first. */
export function catalog(records: PushRecord[], vm?: string): ArchivedSnapshot[] {
  const byKey = new Map<string, ArchivedSnapshot>();
  for (const r of records) {
    if (vm !== undefined && r.vm !== vm) continue;
    for (const s of r.snapshots) {
      const key = `${r.vm}\0${s.content_id}`;
      const prev = byKey.get(key);
      byKey.set(key, {
        vm: r.vm,
        name: s.name,
        content_id: s.content_id,
        record: r.id,
        pushed_at: r.created_at,
        records: (prev?.records ?? 0) + 1,
        shadowed: false,
        snap: s,
        line: lineOf(r, s.name),
      });
    }
  }
  const all = [...byKey.values()];
  const newestByName = new Map<string, ArchivedSnapshot>();
  for (const a of all) {
    const k = `${a.vm}\0${a.name}`;
    const n = newestByName.get(k);
    if (!n || n.pushed_at < a.pushed_at || (n.pushed_at === a.pushed_at && n.record < a.record)) newestByName.set(k, a);
  }
  for (const a of all) a.shadowed = newestByName.get(`${a.vm}\0${a.name}`) !== a;
  return all.sort((a, b) =>
    a.vm !== b.vm ? (a.vm < b.vm ? -1 : 1) : a.snap.created_at < b.snap.created_at ? -1 : a.snap.created_at > b.snap.created_at ? 1 : 0,
  );
}

/** The archived snapshot `snap` of `vm`: by name (the newest of that name), or by a content id prefix of 8+ hex digits. */
export function findArchived(records: PushRecord[], vm: string, snap: string): ArchivedSnapshot {
  const all = catalog(records, vm);
  if (all.length === 0) {
    throw new CloneboxError('ARCHIVE_SNAPSHOT_NOT_FOUND', `the archive holds no snapshot of VM ${vm}`, { hint: 'see `clonebox archive list`' });
  }
  const byName = all.find((a) => a.name === snap && !a.shadowed);
  if (byName) return byName;
  if (/^[0-9a-f]{8,64}$/.test(snap)) {
    const m = all.filter((a) => a.content_id.startsWith(snap));
    if (m.length === 1) return m[0]!;
    if (m.length > 1) throw new CloneboxError('USAGE', `content id prefix ${snap} names ${m.length} snapshots of VM ${vm}`, { hint: 'give more digits' });
  }
  throw new CloneboxError('ARCHIVE_SNAPSHOT_NOT_FOUND', `the archive holds no snapshot ${snap} of VM ${vm}`, { hint: `see \`clonebox archive list ${vm}\`` });
}
