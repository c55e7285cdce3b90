/**
 * Registering a teammate's shared group (docs/groups.md, "Sharing a group"), after its member chains
 * were pulled (pull.ts). A Group record names each member snapshot by VM, name and content id; the
 * group snapshot is registered here only once EVERY member snapshot it names is a complete, ready local
 * snapshot pulled from the same catalog, so a group is never half-pulled. The group's records and the
 * member snapshots' group tags are written in ONE group journal (store/journal.ts, Journal.beginGroup),
 * as `snapshot import --group` does: a crash leaves, after the next command, either none of them or all.
 *
 * Where a member landed: the pull put the teammate's VM `<vm>` here as `<vm>` or `<vm>.<peer>`
 * (pull.ts, place()); the one holding that snapshot with that content id, pulled from this catalog, is
 * the member. A group of that name here is extended when it has the same members or was itself pulled
 * from this catalog (then its member list follows the teammate's newest group snapshot); any other
 * group of that name is left untouched and the pull of the group fails with GROUP_EXISTS.
 */
import path from 'node:path';
import { nowIso } from '../clock.js';
import { driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { pathExists } from '../fsutil.js';
import { NAME_RE } from '../names.js';
import { type GroupRecord, type GroupSnapshotRecord, groupFile, groupSnapshotFile, listGroupSnapshotRecords, loadGroup, lockGroup } from '../store/groups.js';
import type { Home } from '../store/home.js';
import { type Action, Journal, recover, recoverGroup } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { lockVm, vmExists } from '../store/registry.js';
import { listSnapshotRecords, originOf, type SnapshotRecord, snapshotsDir } from '../store/snapshots.js';
import type { CatalogView } from './catalog.js';
import type { GroupRecordEntry } from './catalog-records.js';

/** What a sync did with one teammate's shared group. */
export interface GroupPullReport {
  group: string;
  /** The author of the catalog that shares it. */
  peer: string;
  /** Group snapshots registered by this sync. */
  registered: string[];
  /** Group snapshots not registered: the teammate's member VMs whose member snapshot is not complete here. */
  waiting: { snapshot: string; missing: string[] }[];
}

interface GroupPullContext {
  home: Home;
  peerName: string;
  /** The catalog's key, hex (the pulled snapshots' origin names it). */
  catalogKey: string;
  view: CatalogView;
}

/** Where the group's registration is kept in the group record's `extra` (its provenance). */
const PULLED_KEY = 'pulled_from';

/** A member snapshot found here: the local VM and its record. */
interface Found {
  vm: string;
  rec: SnapshotRecord;
}

/** The local member snapshot a Group record's member names, or null while it is not complete here. */
async function findMember(ctx: GroupPullContext, m: GroupRecordEntry['members'][number]): Promise<Found | null> {
  const id = m.content_id.toString('hex');
  for (const vm of [m.vm, `${m.vm}.${ctx.peerName}`].filter((n) => NAME_RE.test(n))) {
    if (!(await vmExists(ctx.home, vm))) continue;
    const rec = (await listSnapshotRecords(ctx.home, vm)).find((s) => s.name === m.snapshot);
    const o = rec ? originOf(rec) : null;
    if (rec && rec.state === 'ready' && rec.content_id === id && o?.kind === 'pulled' && o.catalog_key === ctx.catalogKey) return { vm, rec };
  }
  return null;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && [...a].sort().every((x, i) => x === [...b].sort()[i]);

/**
 * Registers what can be registered of every group `ctx.view` shares. Groups that cannot be (another
 * group of that name here, a member snapshot already in another group) fail alone: their error is
 * returned beside the reports, the other groups go on.
 */
export async function pullGroups(
  ctx: GroupPullContext,
  log: (l: string) => void,
): Promise<{ reports: GroupPullReport[]; errors: { group: string; error: Error }[] }> {
  const reports: GroupPullReport[] = [];
  const errors: { group: string; error: Error }[] = [];
  for (const [group, recs] of [...ctx.view.groups].sort(([a], [b]) => (a < b ? -1 : 1))) {
    try {
      const r = await pullGroup(ctx, group, recs);
      for (const w of r.waiting) {
        log(`group ${group} from ${ctx.peerName}: group snapshot ${w.snapshot} is not registered yet: ${w.missing.join(', ')} not complete here`);
      }
      reports.push(r);
    } catch (err) {
      errors.push({ group, error: err as Error });
    }
  }
  return { reports, errors };
}

async function pullGroup(ctx: GroupPullContext, group: string, recs: GroupRecordEntry[]): Promise<GroupPullReport> {
  const { home } = ctx;
  const report: GroupPullReport = { group, peer: ctx.peerName, registered: [], waiting: [] };
  // The newest record of a name wins (a group snapshot deleted and made again under its name).
  const byName = new Map<string, GroupRecordEntry>();
  for (const r of recs) byName.set(r.name, r);
  const have = new Map((await listGroupSnapshotRecords(home, group).catch(() => [])).map((g) => [g.name, g]));
  const todo: { rec: GroupRecordEntry; members: Found[] }[] = [];
  for (const rec of byName.values()) {
    const found: Found[] = [];
    const missing: string[] = [];
    for (const m of rec.members) {
      const f = await findMember(ctx, m);
      if (f) found.push(f);
      else missing.push(ctx.view.shares.has(m.vm) ? m.vm : `${m.vm} (not shared)`);
    }
    if (missing.length) {
      if (!have.has(rec.name)) report.waiting.push({ snapshot: rec.name, missing });
      continue;
    }
    const local = have.get(rec.name);
    if (local) {
      // Registered by an earlier sync: the same member snapshots. Anything else is another group snapshot.
      const same = local.members.length === found.length && local.members.every((lm) => found.some((f) => f.vm === lm.vm && f.rec.name === lm.snapshot));
      if (!same) {
        throw CloneboxError.GROUP_EXISTS(`group ${group} here already has a group snapshot ${rec.name} with other member snapshots than ${ctx.peerName}'s`, {
          hint: `rename or delete the local group ${group}, then sync again`,
        });
      }
      continue;
    }
    todo.push({ rec, members: found });
  }
  if (!todo.length) return report;
  todo.sort((a, b) => a.rec.created_at.localeCompare(b.rec.created_at));
  await register(ctx, group, todo);
  report.registered = todo.map((t) => t.rec.name);
  return report;
}

/**
 * Writes the group snapshots of `todo`, the member snapshots' group tags and the group record in one
 * group journal, under the group's lock and then the members' locks in name order (the group lock
 * order), after checking again what was found without them.
 */
async function register(ctx: GroupPullContext, group: string, todo: { rec: GroupRecordEntry; members: Found[] }[]): Promise<void> {
  const { home } = ctx;
  const vms = [...new Set(todo.flatMap((t) => t.members.map((m) => m.vm)))].sort();
  const held: Lock[] = [await lockGroup(home, group, 'snapshot sync')];
  try {
    for (const vm of vms) held.push(await lockVm(home, vm, 'snapshot sync'));
    await recoverGroup(home, group, driverStepHandlers);
    for (const vm of vms) await recover(home, vm, driverStepHandlers);
    const newest = todo[todo.length - 1]!;
    const members = newest.members.map((m) => m.vm).sort();
    let groupRec: GroupRecord;
    if (await pathExists(groupFile(home, group))) {
      const cur = await loadGroup(home, group);
      const from = (cur.extra?.[PULLED_KEY] as { catalog_key?: string } | undefined)?.catalog_key;
      if (from !== ctx.catalogKey && !sameList(cur.members, members)) {
        throw CloneboxError.GROUP_EXISTS(
          `group ${group} here has members ${cur.members.join(', ')}, not ${ctx.peerName}'s ${members.join(', ')}: its group snapshots are not registered`,
          { hint: `rename or delete the local group ${group} (\`clonebox group delete ${group}\`), then sync again` },
        );
      }
      groupRec = from === ctx.catalogKey ? { ...cur, members } : cur;
    } else {
      groupRec = {
        format: 1,
        name: group,
        created_at: nowIso(),
        description: null,
        members,
        extra: { [PULLED_KEY]: { peer: ctx.peerName, catalog_key: ctx.catalogKey } },
      };
    }
    const actions: Action[] = [];
    for (const t of todo) {
      // Checked again under the locks: the member snapshot is still there, the same, and in no group.
      const tagged: SnapshotRecord[] = [];
      for (const m of t.members) {
        const rec = (await listSnapshotRecords(home, m.vm)).find((s) => s.name === m.rec.name);
        if (!rec || rec.content_id !== m.rec.content_id || rec.state !== 'ready') {
          throw new CloneboxError('SYNC_CHAIN', `snapshot ${m.rec.name} of VM ${m.vm} changed while registering group ${group}; sync again`);
        }
        if (rec.group && (rec.group.name !== group || rec.group.snapshot !== t.rec.name)) {
          throw CloneboxError.GROUP_EXISTS(
            `snapshot ${rec.name} of VM ${m.vm} already belongs to group snapshot ${rec.group.snapshot} of group ${rec.group.name}: ${ctx.peerName}'s group snapshot ${t.rec.name} of ${group} is not registered`,
            { hint: `delete group snapshot ${rec.group.snapshot} of ${rec.group.name} here, then sync again` },
          );
        }
        tagged.push({ ...rec, group: { name: group, snapshot: t.rec.name } });
      }
      for (const r of tagged) actions.push({ do: 'write_json', path: path.join(snapshotsDir(home, r.vm_name), `${r.name}.json`), value: r });
      const g: GroupSnapshotRecord = {
        format: 1,
        name: t.rec.name,
        group,
        state: 'ready',
        created_at: t.rec.created_at,
        description: t.rec.description,
        tags: t.rec.tags,
        type: t.rec.type,
        members: t.members.map((m) => ({ vm: m.vm, snapshot: m.rec.name })).sort((a, b) => (a.vm < b.vm ? -1 : 1)),
        consistency: t.rec.consistency,
        pause_ms: t.rec.pause_ms,
        auto_created: t.rec.auto_created,
        auto_policy: t.rec.auto_policy,
      };
      actions.push({ do: 'write_json', path: groupSnapshotFile(home, group, t.rec.name), value: g });
    }
    // The group record last: until it is written the group does not exist (listGroupNames).
    actions.push({ do: 'write_json', path: groupFile(home, group), value: groupRec });
    const j = await Journal.beginGroup(home, group, vms, `snapshot sync: group ${group} from ${ctx.peerName}`, driverStepHandlers);
    try {
      await j.commit(actions);
    } catch (err) {
      await j.rollback().catch(() => undefined);
      throw err;
    }
  } finally {
    for (const l of held.reverse()) await l.release();
  }
}
