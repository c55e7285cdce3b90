/**
 * Group operations (docs/groups.md): the group records (create, add, remove, delete, list, show) and the
 * group snapshot operations (create, list, show, restore, delete). Every changing operation:
 *   1. takes the group's lock, then every member's VM lock in sorted order of their names,
 *   2. finishes or rolls back an interrupted group operation, then each member's own,
 *   3. prepares every member's change in ONE group journal and commits them together, with the group
 *      snapshot record, so that a crash leaves every member before or after, never a mix.
 * The member snapshots themselves are made, restored and deleted by the SnapshotManager's plan*
 * functions, exactly as a single VM's are.
 */
import { now as clockNow, nowIso } from '../clock.js';
import { driverFor, driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { pathExists } from '../fsutil.js';
import { checkName, closestName, NAME_RE } from '../names.js';
import { appendEvents } from '../store/events.js';
import {
  checkGroupName,
  type GroupConsistency,
  type GroupRecord,
  type GroupSnapshotRecord,
  groupFile,
  groupJournalPath,
  groupSnapshotFile,
  listGroupNames,
  listGroupSnapshotRecords,
  loadGroup,
  lockGroup,
  removeGroupDir,
  saveGroup,
} from '../store/groups.js';
import type { Home } from '../store/home.js';
import { type Action, Journal, recover, recoverGroup } from '../store/journal.js';
import type { Lock } from '../store/lock.js';
import { listVmNames, loadVm, lockVm, type VmRecord, vmExists, vmFile } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord, snapshotsDir } from '../store/snapshots.js';
import type { ConfigGroup } from './config-file.js';
import type { BeforeOpOptions, CreateOptions, OpResult, SnapshotManager } from './manager.js';
import { autoSnapshotName, newestFirst } from './model.js';
import { canonicalPolicy, type Policy, planPrune, validatePolicy } from './policy.js';
import { autoSettingsOf, beforePolicy, type NamedPolicy, namedPoliciesOf, policyOf, retentionKey, snapshotsBefore, withAutoSettings } from './settings.js';

export interface GroupView {
  name: string;
  description: string | null;
  created_at: string;
  members: string[];
  missing: string[];
  snapshot_count: number;
  latest: string | null;
}

export interface GroupSnapshotView {
  name: string;
  group: string;
  state: GroupSnapshotRecord['state'];
  created_at: string;
  description: string | null;
  tags: string[];
  type: 'disk' | 'full';
  members: { vm: string; snapshot: string }[];
  consistency: GroupConsistency;
  pause_ms: number | null;
  quiesced: boolean;
  auto_created: boolean;
  auto_policy: string | null;
}

/** What a locked group operation sees: the group, its members' records and snapshots (sorted by VM). */
interface Locked {
  group: GroupRecord;
  vms: Map<string, VmRecord>;
  snaps: Map<string, SnapshotRecord[]>;
  groupSnaps: GroupSnapshotRecord[];
}

/** What ties a VM to a group: membership of the group record, and the group snapshots that name it. */
export interface GroupTie {
  group: string;
  member: boolean;
  snapshots: string[];
}

/** What `vm remove --leave-groups` changed in one group. */
export interface LeftGroup {
  group: string;
  /** The group had no other member and no group snapshot left: it was deleted. */
  group_deleted: boolean;
  /** Group snapshots that named the VM and keep their other members. */
  snapshots_changed: string[];
  /** Group snapshots that named the VM alone: deleted. */
  snapshots_deleted: string[];
}

/** VM_IN_GROUP for `vm remove` of a VM with ties: names each group and what to do. */
export function inGroupError(vm: string, ties: GroupTie[]): CloneboxError {
  const what = ties.map(
    (t) => `${t.group} (${[t.member ? 'member' : null, t.snapshots.length ? `group snapshots ${t.snapshots.join(', ')}` : null].filter(Boolean).join('; ')})`,
  );
  const member = ties.find((t) => t.member);
  return CloneboxError.VM_IN_GROUP(`VM ${vm} belongs to group${ties.length === 1 ? '' : 's'} ${what.join(', ')}`, {
    hint: member
      ? `remove it from the group first (\`clonebox group remove ${member.group} --vm ${vm}\`), or pass --leave-groups to take it out of its groups and their group snapshots`
      : `its group snapshots name it: pass --leave-groups to take it out of them, or delete them first (\`clonebox snapshot delete --group ${ties[0]!.group} --name ${ties[0]!.snapshots[0]}\`)`,
  });
}

export class GroupManager {
  constructor(
    readonly home: Home,
    private readonly m: SnapshotManager,
  ) {}

  // ---------------------------------------------------------------- the group records

  async create(name: string, vms: string[], description: string | null = null): Promise<GroupView> {
    checkGroupName(name);
    const members = await this.checkMembers(vms);
    const lock = await lockGroup(this.home, name, 'group create');
    try {
      if (await pathExists(groupFile(this.home, name)))
        throw CloneboxError.GROUP_EXISTS(`group ${name} already exists`, { hint: 'use `clonebox group add` to add VMs to it' });
      const rec: GroupRecord = { format: 1, name, created_at: nowIso(), description, members };
      await saveGroup(this.home, rec);
      return this.view(rec, []);
    } finally {
      await lock.release();
    }
  }

  /** Adds VMs to the group (already members: no change). */
  async add(name: string, vms: string[]): Promise<GroupView> {
    const added = await this.checkMembers(vms);
    return this.change(name, 'group add', (g) => ({ ...g, members: [...new Set([...g.members, ...added])].sort() }));
  }

  /** Removes VMs from the group; its group snapshots keep naming them (they restore what they took). */
  async remove(name: string, vms: string[]): Promise<GroupView> {
    if (vms.length === 0) throw CloneboxError.USAGE('name at least one VM to remove (--vm)');
    return this.change(name, 'group remove', (g) => {
      const gone = vms.filter((v) => !g.members.includes(v));
      if (gone.length > 0) {
        throw CloneboxError.VM_NOT_FOUND(`${gone.join(', ')} ${gone.length === 1 ? 'is' : 'are'} not in group ${name}`, {
          hint: `its members are ${g.members.join(', ')}`,
        });
      }
      const members = g.members.filter((v) => !vms.includes(v));
      if (members.length === 0) {
        throw CloneboxError.USAGE(`group ${name} would have no member left`, { hint: `delete the group instead: \`clonebox group delete ${name}\`` });
      }
      return { ...g, members };
    });
  }

  /** Deletes the group record; refused while it has group snapshots (their members would lose their group). */
  async delete(name: string): Promise<{ name: string }> {
    await loadGroup(this.home, name);
    const lock = await lockGroup(this.home, name, 'group delete');
    try {
      await this.recoverGroupLocked(name);
      const snaps = await listGroupSnapshotRecords(this.home, name);
      if (snaps.length > 0) {
        throw CloneboxError.GROUP_HAS_SNAPSHOTS(`group ${name} has ${snaps.length} group snapshot(s): ${snaps.map((s) => s.name).join(', ')}`, {
          hint: `delete them first: \`clonebox snapshot delete --group ${name} --name SNAPSHOT\``,
        });
      }
      await removeGroupDir(this.home, name);
      return { name };
    } finally {
      await lock.release();
    }
  }

  async list(): Promise<GroupView[]> {
    const out: GroupView[] = [];
    for (const n of await listGroupNames(this.home)) {
      try {
        out.push(await this.show(n));
      } catch (err) {
        // Its interrupted operation, finished just now, deleted it (`vm remove --leave-groups` of its last member).
        if (!(err instanceof CloneboxError && err.code === 'GROUP_NOT_FOUND')) throw err;
      }
    }
    return out;
  }

  async show(name: string): Promise<GroupView> {
    await loadGroup(this.home, name); // GROUP_NOT_FOUND before any recovery
    const snaps = await this.readGroupSnapshots(name);
    // Read after the recovery: an interrupted operation may have changed the record.
    return this.view(await loadGroup(this.home, name), snaps);
  }

  private async view(g: GroupRecord, snaps: GroupSnapshotRecord[]): Promise<GroupView> {
    const missing: string[] = [];
    for (const v of g.members) if (!(await vmExists(this.home, v))) missing.push(v);
    const newest = [...snaps].sort(newestFirst)[0];
    return {
      name: g.name,
      description: g.description ?? null,
      created_at: g.created_at,
      members: [...g.members],
      missing,
      snapshot_count: snaps.length,
      latest: newest?.name ?? null,
    };
  }

  /** Sorted, distinct, registered VM names; at least one. */
  private async checkMembers(vms: string[]): Promise<string[]> {
    if (vms.length === 0) throw CloneboxError.USAGE('a group needs at least one VM (--vm)');
    const known = await listVmNames(this.home);
    for (const v of vms) {
      checkName('VM', v);
      if (!known.includes(v)) {
        const near = closestName(v, known);
        throw CloneboxError.VM_NOT_FOUND(`no such VM, ${v}`, { hint: near ? `did you mean ${near}?` : `see \`clonebox vm list --home ${this.home.root}\`` });
      }
    }
    return [...new Set(vms)].sort();
  }

  private async change(name: string, command: string, fn: (g: GroupRecord) => GroupRecord): Promise<GroupView> {
    await loadGroup(this.home, name);
    // An interrupted group operation may still write the group record (`vm remove --leave-groups`):
    // finished first, so this change is not overwritten by its roll-forward.
    await this.readGroupSnapshots(name);
    const lock = await lockGroup(this.home, name, command);
    try {
      await this.recoverGroupLocked(name);
      const next = fn(await loadGroup(this.home, name));
      await saveGroup(this.home, next);
      return this.view(next, await listGroupSnapshotRecords(this.home, name));
    } finally {
      await lock.release();
    }
  }

  // ---------------------------------------------------------------- a VM leaving its groups (vm remove)

  /**
   * The groups that name `vm` (as a member, or in a group snapshot), sorted. Unless `locked`, an
   * interrupted group operation is finished first (under its own locks); with `locked` (the caller
   * holds the group locks) one still there is VM_BUSY.
   */
  async tiesOf(vm: string, locked = false): Promise<GroupTie[]> {
    const out: GroupTie[] = [];
    for (const g of await listGroupNames(this.home)) {
      if (locked) await this.recoverGroupLocked(g);
      let snaps: GroupSnapshotRecord[];
      let rec: GroupRecord;
      try {
        snaps = locked ? await listGroupSnapshotRecords(this.home, g) : await this.readGroupSnapshots(g);
        rec = await loadGroup(this.home, g);
      } catch (err) {
        // Its interrupted operation, finished just now, deleted it.
        if (err instanceof CloneboxError && err.code === 'GROUP_NOT_FOUND') continue;
        throw err;
      }
      const named = snaps.filter((s) => s.members.some((mb) => mb.vm === vm)).map((s) => s.name);
      if (rec.members.includes(vm) || named.length > 0) out.push({ group: g, member: rec.members.includes(vm), snapshots: named });
    }
    return out;
  }

  /**
   * Takes `vm` out of every group of `ties` and unregisters it: the caller holds those groups' locks
   * (sorted) and the VM's lock, and has checked everything else. One group journal per group (its
   * member: `vm`), so the group's own recovery and the VM's (through its redirect) finish it; the last
   * one also removes the VM's record (first) and snapshot records (last). A crash between two groups leaves the VM
   * registered and out of the first groups only: every state on the way is a valid one, and running
   * `vm remove --leave-groups` again finishes. Each group snapshot that named the VM keeps its other
   * members (one with no member left is deleted); a group with no member and no group snapshot left
   * is deleted. Returns what changed per group.
   */
  async leaveAndUnregister(vm: string, ties: GroupTie[]): Promise<LeftGroup[]> {
    const plans: { group: string; actions: Action[]; deleted: boolean; changed: string[]; gone: string[] }[] = [];
    for (const t of ties) {
      const g = await loadGroup(this.home, t.group);
      const actions: Action[] = [];
      const changed: string[] = [];
      const gone: string[] = [];
      let left = 0;
      for (const s of await listGroupSnapshotRecords(this.home, t.group)) {
        const rest = s.members.filter((mb) => mb.vm !== vm);
        if (rest.length === s.members.length) left++;
        else if (rest.length === 0) {
          actions.push({ do: 'unlink', path: groupSnapshotFile(this.home, t.group, s.name) });
          gone.push(s.name);
        } else {
          actions.push({ do: 'write_json', path: groupSnapshotFile(this.home, t.group, s.name), value: { ...s, members: rest } });
          changed.push(s.name);
          left++;
        }
      }
      const members = g.members.filter((m) => m !== vm);
      let deleted = false;
      if (members.length === 0) {
        if (left > 0) {
          throw CloneboxError.VM_IN_GROUP(`VM ${vm} is the last member of group ${t.group}, which keeps group snapshots of other VMs`, {
            hint: `delete the group's snapshots first (\`clonebox snapshot list --group ${t.group}\`), then the group; nothing was changed`,
          });
        }
        // The record goes last: the group exists until everything of it is gone.
        actions.push({ do: 'unlink', path: groupFile(this.home, t.group) });
        deleted = true;
      } else if (members.length !== g.members.length) {
        actions.push({ do: 'write_json', path: groupFile(this.home, t.group), value: { ...g, members } });
      }
      plans.push({ group: t.group, actions, deleted, changed, gone });
    }
    const out: LeftGroup[] = [];
    for (const [i, p] of plans.entries()) {
      const last = i === plans.length - 1;
      // vm.json first: the VM stops existing at once, as a plain `vm remove` does, and from then on its
      // directory (a journal, no vm.json) is finished by the home sweep of whatever command runs next.
      const actions: Action[] = last
        ? [{ do: 'unlink', path: vmFile(this.home, vm) }, ...p.actions, { do: 'remove_dir', path: snapshotsDir(this.home, vm) }]
        : p.actions;
      const j = await Journal.beginGroup(this.home, p.group, [vm], `vm remove ${vm} --leave-groups`, driverStepHandlers);
      try {
        await j.commit(actions);
      } catch (err) {
        await j.rollback();
        throw err;
      }
      if (p.deleted) await removeGroupDir(this.home, p.group);
      out.push({ group: p.group, group_deleted: p.deleted, snapshots_changed: p.changed, snapshots_deleted: p.gone });
    }
    return out;
  }

  // ---------------------------------------------------------------- .clonebox.yaml (config apply)

  /**
   * Makes group `c.name` match an entry of a file's `groups:`: creates it, or replaces its members,
   * description (when the file gives one) and automatic-snapshot settings, in one atomic write of its
   * record under its lock. Idempotent: `changed` false when it already matched. Group snapshots are
   * not touched (they name their own members).
   */
  async applyConfig(c: ConfigGroup, file: string): Promise<{ name: string; created: boolean; changed: boolean }> {
    checkGroupName(c.name);
    const members = await this.checkMembers(c.members);
    const { sameSettings, settingsFromSpec } = await import('./auto-config.js');
    if (await pathExists(groupFile(this.home, c.name))) await this.readGroupSnapshots(c.name);
    const lock = await lockGroup(this.home, c.name, 'config apply');
    try {
      const exists = await pathExists(groupFile(this.home, c.name));
      if (exists) await this.recoverGroupLocked(c.name);
      const old: GroupRecord = exists
        ? await loadGroup(this.home, c.name)
        : { format: 1, name: c.name, created_at: nowIso(), description: c.description ?? null, members };
      const was = autoSettingsOf(old);
      const settings = settingsFromSpec(c, file, was);
      const description = c.description !== undefined ? c.description : (old.description ?? null);
      if (exists && sameSettings(settings, was) && JSON.stringify(old.members) === JSON.stringify(members) && description === (old.description ?? null)) {
        return { name: c.name, created: false, changed: false };
      }
      await saveGroup(this.home, withAutoSettings({ ...old, members, description }, settings));
      return { name: c.name, created: !exists, changed: true };
    } finally {
      await lock.release();
    }
  }

  // ---------------------------------------------------------------- policies

  /**
   * The group's named policies (what `schedule run` takes for the group), after setting or removing
   * one: `spec` null removes policy `policy`; otherwise it replaces it. A named policy keeps the time
   * its schedule was first set while the schedule stays the same, so changing only its retention
   * never shifts its runs.
   */
  async setNamedPolicy(
    name: string,
    policy: string | null,
    spec: { policy: Policy; when: string[]; timezone: string | null } | null,
  ): Promise<Record<string, NamedPolicy>> {
    if (policy === null) return namedPoliciesOf(await loadGroup(this.home, name));
    if (!NAME_RE.test(policy) || ['run', 'backup'].includes(policy) || policy.startsWith('before-')) {
      throw CloneboxError.BAD_NAME(`invalid policy name ${JSON.stringify(policy)}`, { hint: 'letters, digits, ".", "_", "-"; not run, backup or before-*' });
    }
    let next: NamedPolicy | null = null;
    if (spec !== null) {
      // The cron engine loads only here and in the scheduler.
      const { checkTimezone, cronOf } = await import('./schedule.js');
      validatePolicy(spec.policy);
      if (spec.timezone !== null) checkTimezone(spec.timezone);
      const when = spec.when.map((w) => cronOf(w, spec.timezone));
      next = { policy: canonicalPolicy(spec.policy), when, timezone: spec.timezone, since: nowIso() };
    }
    let out: Record<string, NamedPolicy> = {};
    await this.change(name, 'group policy', (g) => {
      const policies = { ...namedPoliciesOf(g) };
      const prev = policies[policy];
      if (next === null) {
        if (!prev) throw CloneboxError.USAGE(`group ${name} has no policy ${policy}`, { hint: `its policies: ${Object.keys(policies).join(', ') || 'none'}` });
        delete policies[policy];
      } else {
        const same = prev && JSON.stringify(prev.when) === JSON.stringify(next.when) && prev.timezone === next.timezone;
        policies[policy] = same ? { ...next, since: prev.since } : next;
      }
      out = policies;
      return withAutoSettings(g, { policies });
    });
    return out;
  }

  /**
   * Applies retention to the group's auto group snapshots: each named policy over the group snapshots
   * it made, the group's default policy (none: keep all) over the others; the newest group snapshot
   * is always kept. A removed group snapshot is deleted as a whole, its data merged into what stands
   * on its member snapshots. Returns what was removed.
   */
  async prune(name: string): Promise<{ snapshot: string; reason: string }[]> {
    const g = await loadGroup(this.home, name);
    const snaps = await this.readGroupSnapshots(name);
    const newest = [...snaps].sort(newestFirst)[0]?.name ?? null;
    const named = namedPoliciesOf(g);
    const byKey = new Map<string, GroupSnapshotRecord[]>();
    for (const s of snaps) {
      if (!s.auto_created || s.state !== 'ready') continue;
      const key = retentionKey(g, s.auto_policy);
      byKey.set(key, [...(byKey.get(key) ?? []), s]);
    }
    const removed: { snapshot: string; reason: string }[] = [];
    for (const [key, members] of byKey) {
      const policy = key ? named[key]!.policy : policyOf(g);
      const plan = planPrune(
        members.map((c) => ({ name: c.name, created_at: c.created_at, size_bytes: 0 })),
        policy,
        { current: newest, now: clockNow().getTime() },
      );
      for (const r of plan.remove) {
        await this.deleteSnapshot(name, r.name, { keepChildren: true, noAutoSnapshot: true });
        removed.push({ snapshot: r.name, reason: key ? `${key}: ${r.reason}` : r.reason });
      }
    }
    return removed;
  }

  // ---------------------------------------------------------------- locking and recovery

  /**
   * Runs `fn` with the group's lock and the lock of every VM the group names (its members, the members
   * of its group snapshots and of an interrupted operation), taken in that order, sorted by VM name;
   * any interrupted group operation, then each VM's own, recovered first.
   */
  async withGroup<T>(name: string, command: string, fn: (l: Locked) => Promise<T>): Promise<T> {
    await loadGroup(this.home, name);
    const glock = await lockGroup(this.home, name, command);
    const held: Lock[] = [];
    try {
      const group = await loadGroup(this.home, name);
      const names = new Set(group.members);
      for (const s of await listGroupSnapshotRecords(this.home, name)) for (const mb of s.members) names.add(mb.vm);
      for (const v of await this.journalMembers(name)) names.add(v);
      const existing: string[] = [];
      for (const v of [...names].sort()) if (await vmExists(this.home, v)) existing.push(v);
      for (const v of existing) held.push(await lockVm(this.home, v, command));
      await recoverGroup(this.home, name, driverStepHandlers);
      // The recovered operation may have unregistered a VM (`vm remove --leave-groups`).
      const present: string[] = [];
      for (const v of existing) if (await vmExists(this.home, v)) present.push(v);
      for (const v of present) await recover(this.home, v, driverStepHandlers);
      const vms = new Map<string, VmRecord>();
      const snaps = new Map<string, SnapshotRecord[]>();
      for (const v of present) {
        vms.set(v, await loadVm(this.home, v));
        snaps.set(v, await listSnapshotRecords(this.home, v));
      }
      return await fn({ group: await loadGroup(this.home, name), vms, snaps, groupSnaps: await listGroupSnapshotRecords(this.home, name) });
    } finally {
      for (const l of held.reverse()) await l.release();
      await glock.release();
    }
  }

  /** The members named by an interrupted group operation's journal, if any. */
  private async journalMembers(name: string): Promise<string[]> {
    try {
      const { readFile } = await import('node:fs/promises');
      const doc = JSON.parse(await readFile(groupJournalPath(this.home, name), 'utf8')) as { members?: unknown };
      return Array.isArray(doc.members) ? doc.members.filter((m): m is string => typeof m === 'string') : [];
    } catch {
      return [];
    }
  }

  private async recoverGroupLocked(name: string): Promise<void> {
    if (await pathExists(groupJournalPath(this.home, name))) {
      // Only reached with the group lock held and no member lock: recover under the full set of locks.
      throw CloneboxError.VM_BUSY(`group ${name} has an interrupted operation`, {
        hint: `run \`clonebox snapshot list --group ${name}\` to finish it, then try again`,
      });
    }
  }

  /** The group snapshot records, after recovering an interrupted operation (which needs every lock). */
  private async readGroupSnapshots(name: string): Promise<GroupSnapshotRecord[]> {
    if (await pathExists(groupJournalPath(this.home, name))) return this.withGroup(name, 'snapshot list --group', async (l) => l.groupSnaps);
    return listGroupSnapshotRecords(this.home, name);
  }

  // ---------------------------------------------------------------- group snapshots

  views(snaps: GroupSnapshotRecord[], memberSnaps?: Map<string, SnapshotRecord[]>): GroupSnapshotView[] {
    return [...snaps].sort(newestFirst).map((s) => ({
      name: s.name,
      group: s.group,
      state: s.state,
      created_at: s.created_at,
      description: s.description,
      tags: [...s.tags],
      type: s.type,
      members: s.members.map((mb) => ({ vm: mb.vm, snapshot: mb.snapshot })),
      consistency: s.consistency,
      pause_ms: s.pause_ms,
      quiesced:
        memberSnaps !== undefined &&
        s.members.length > 0 &&
        s.members.every((mb) => memberSnaps.get(mb.vm)?.find((r) => r.name === mb.snapshot)?.quiesced === true),
      auto_created: s.auto_created,
      auto_policy: s.auto_policy,
    }));
  }

  async listSnapshots(name: string): Promise<GroupSnapshotView[]> {
    await loadGroup(this.home, name);
    const snaps = await this.readGroupSnapshots(name);
    return this.views(snaps, await this.memberRecords(snaps));
  }

  async showSnapshot(name: string, snapshot: string): Promise<GroupSnapshotView> {
    const all = await this.listSnapshots(name);
    const s = all.find((v) => v.name === snapshot);
    if (!s)
      throw this.notFound(
        name,
        snapshot,
        all.map((v) => v.name),
      );
    return s;
  }

  private async memberRecords(snaps: GroupSnapshotRecord[]): Promise<Map<string, SnapshotRecord[]>> {
    const out = new Map<string, SnapshotRecord[]>();
    for (const v of new Set(snaps.flatMap((s) => s.members.map((mb) => mb.vm)))) {
      if (await vmExists(this.home, v)) out.set(v, await listSnapshotRecords(this.home, v));
    }
    return out;
  }

  private notFound(group: string, snapshot: string, names: string[]): CloneboxError {
    const near = closestName(snapshot, names);
    return CloneboxError.SNAPSHOT_NOT_FOUND(`no such group snapshot ${snapshot}, group ${group}`, {
      hint: near ? `did you mean ${near}?` : `see \`clonebox snapshot list --group ${group}\``,
    });
  }

  /**
   * Snapshots every member at one point (see docs/groups.md for how libvirt members are held); the
   * member snapshots carry the group snapshot's name and become each VM's current snapshot.
   */
  async createSnapshot(name: string, opts: CreateOptions = {}): Promise<OpResult<GroupSnapshotView>> {
    return this.withGroup(name, 'snapshot create --group', async (l) => this.createLocked(name, l, opts));
  }

  /** createSnapshot() with every lock held and `l` read under them. */
  private async createLocked(name: string, l: Locked, opts: CreateOptions): Promise<OpResult<GroupSnapshotView>> {
    {
      const missing = l.group.members.filter((v) => !l.vms.has(v));
      if (missing.length > 0) {
        throw CloneboxError.VM_NOT_FOUND(`group ${name} names VMs that are not registered: ${missing.join(', ')}`, {
          hint: `remove them from the group (\`clonebox group remove ${name} --vm ${missing[0]}\`) or register them again`,
        });
      }
      const taken = new Set<string>(l.groupSnaps.map((s) => s.name));
      for (const v of l.group.members) for (const r of l.snaps.get(v)!) taken.add(r.name);
      const snap = opts.name !== undefined ? checkName('snapshot', opts.name) : autoSnapshotName(taken);
      if (snap === 'current') throw new CloneboxError('BAD_NAME', '"current" is reserved (it names the current state in diff)');
      if (l.groupSnaps.some((s) => s.name === snap)) throw CloneboxError.SNAPSHOT_EXISTS(`group snapshot ${snap} already exists, group ${name}`);
      const clash = l.group.members.find((v) => l.snaps.get(v)!.some((r) => r.name === snap));
      if (clash) {
        throw CloneboxError.SNAPSHOT_EXISTS(`snapshot ${snap} already exists, VM ${clash} (every member snapshot takes the group snapshot's name)`, {
          hint: 'choose another name with --name',
        });
      }
      const tags = [...new Set(opts.tags ?? [])];
      if (opts.autoPolicy && !tags.includes('auto')) tags.unshift('auto');
      const members = l.group.members;
      const j = await Journal.beginGroup(this.home, name, members, `snapshot create --group ${name} ${snap}`, driverStepHandlers);
      try {
        const plans = [];
        for (const v of members) {
          plans.push(await this.m.planCreate(l.vms.get(v)!, snap, tags, { ...opts, group: { name, snapshot: snap } }, j));
        }
        const libvirt = plans.filter((p) => p.newVm.driver === 'libvirt');
        const rec: GroupSnapshotRecord = {
          format: 1,
          name: snap,
          group: name,
          state: 'creating',
          created_at: nowIso(),
          description: opts.description ?? null,
          tags,
          type: plans.every((p) => p.prepared.type === 'full') ? 'full' : 'disk',
          members: members.map((v) => ({ vm: v, snapshot: snap })),
          consistency: 'locks',
          pause_ms: null,
          auto_created: Boolean(opts.autoPolicy),
          auto_policy: opts.autoPolicy ?? null,
        };
        const gp = groupSnapshotFile(this.home, name, snap);
        await j.willCreate(gp);
        // The libvirt members' step first: when libvirt refuses before switching any disk, everything
        // before it only wrote new records, so the journal can undo the whole group snapshot.
        const driverActions: Action[] = [];
        if (libvirt.length > 0) {
          const { groupSnapshotAction } = await import('../drivers/libvirt/driver.js');
          driverActions.push(await groupSnapshotAction(libvirt.flatMap((p) => p.prepared.actions)));
        }
        driverActions.push(...plans.filter((p) => p.newVm.driver !== 'libvirt').flatMap((p) => p.prepared.actions));
        const done = await j.commit([
          { do: 'write_json', path: gp, value: rec },
          ...plans.flatMap((p) => p.head),
          ...driverActions,
          ...plans.flatMap((p) => p.tail),
          { do: 'write_json', path: gp, value: { ...rec, state: 'ready' }, notes: ['pause_ms', 'consistency'] },
        ]);
        const ready: GroupSnapshotRecord = {
          ...rec,
          state: 'ready',
          pause_ms: typeof done.notes.pause_ms === 'number' ? done.notes.pause_ms : null,
          consistency: (done.notes.consistency as GroupConsistency | undefined) ?? 'locks',
        };
        const memberRecs = new Map<string, SnapshotRecord[]>();
        for (const p of plans) {
          const r: SnapshotRecord = { ...p.rec, state: 'ready', quiesced: done.notes.quiesced === true };
          await this.m.addMemorySize(r);
          memberRecs.set(p.rec.vm_name, [r]);
        }
        const warnings = [...plans.flatMap((p) => p.prepared.warnings), ...done.warnings];
        const logged = await appendEvents(
          this.home,
          members.map((v) => ({ vm: v, snapshot: snap, op: 'created' as const })),
        );
        if (logged) warnings.push(logged);
        return { value: this.views([ready], memberRecs)[0]!, warnings };
      } catch (err) {
        await j.rollback();
        throw err;
      }
    }
  }

  /**
   * The auto group snapshot `before_operations` asks for before group operation `op` (restore,
   * delete): ONE group snapshot of every member at one point, taken under the operation's locks,
   * when the group's settings name `op` or any member's do (a member that wants a snapshot before
   * `op` gets it as its member snapshot; no separate per-VM snapshots are taken). Null when none is
   * asked for, or `noAutoSnapshot`. If it cannot be taken the operation does not run
   * (AUTO_SNAPSHOT_FAILED). `l` is read again afterwards by the caller.
   */
  private async snapshotBefore(name: string, l: Locked, op: string, what: string, opts: BeforeOpOptions): Promise<GroupSnapshotView | null> {
    if (opts.noAutoSnapshot) return null;
    const group = autoSettingsOf(l.group);
    const wants = (group.enabled && group.before_operations.includes(op)) || l.group.members.some((v) => l.vms.has(v) && snapshotsBefore(l.vms.get(v)!, op));
    if (!wants) return null;
    try {
      return (
        await this.createLocked(name, l, {
          autoPolicy: beforePolicy(op),
          tags: ['auto', 'before'],
          description: `automatic group snapshot before ${what}`.slice(0, 500),
        })
      ).value;
    } catch (err) {
      const why = err instanceof CloneboxError ? `${err.code}: ${err.message}` : (err as Error).message;
      throw CloneboxError.AUTO_SNAPSHOT_FAILED(`cannot take the automatic group snapshot before ${what} (${why}); nothing was changed`, {
        hint: `before_operations of group ${name} (or of a member) asks for it; fix the cause, or run again with --no-auto-snapshot`,
        cause: err,
      });
    }
  }

  /** What a locked operation sees, read again (after an auto snapshot changed it). */
  private async reread(name: string, l: Locked): Promise<Locked> {
    const vms = new Map<string, VmRecord>();
    const snaps = new Map<string, SnapshotRecord[]>();
    for (const v of l.vms.keys()) {
      vms.set(v, await loadVm(this.home, v));
      snaps.set(v, await listSnapshotRecords(this.home, v));
    }
    return { group: await loadGroup(this.home, name), vms, snaps, groupSnaps: await listGroupSnapshotRecords(this.home, name) };
  }

  /** Every member of group snapshot `snapshot` back to it, in one journal. */
  async restore(
    name: string,
    snapshot: string,
    opts: { start?: boolean } & BeforeOpOptions = {},
  ): Promise<OpResult<{ restored: string; members: { vm: string; snapshot: string }[]; auto_snapshot: string | null }>> {
    return this.withGroup(name, 'snapshot restore --group', async (l0) => {
      let l = l0;
      this.memberTargets(l, this.findGroupSnapshot(l, name, snapshot));
      const notices: string[] = [];
      const before = await this.snapshotBefore(name, l, 'restore', `restoring group snapshot ${snapshot} of ${name}`, opts);
      if (before) {
        notices.push(`took automatic group snapshot ${before.name} of ${name} before restoring ${snapshot}`);
        l = await this.reread(name, l);
      }
      const gs = this.findGroupSnapshot(l, name, snapshot);
      const targets = this.memberTargets(l, gs);
      const j = await Journal.beginGroup(
        this.home,
        name,
        gs.members.map((mb) => mb.vm),
        `snapshot restore --group ${name} ${snapshot}`,
        driverStepHandlers,
      );
      const gp = groupSnapshotFile(this.home, name, gs.name);
      try {
        const actions: Action[] = [{ do: 'write_json', path: gp, value: { ...gs, state: 'reverting' } }];
        for (const t of targets) actions.push(...(await this.m.planRestore(t.vm, t.snap, j)));
        actions.push({ do: 'write_json', path: gp, value: { ...gs, state: 'ready' } });
        await j.commit(actions);
      } catch (err) {
        await j.rollback();
        throw err;
      }
      const warnings: string[] = [];
      const logged = await appendEvents(
        this.home,
        targets.map((t) => ({ vm: t.vm.name, snapshot: t.snap.name, op: 'restored' as const })),
      );
      if (logged) warnings.push(logged);
      if (opts.start) {
        for (const t of targets) {
          const driver = await driverFor(t.vm);
          if (driver.start) await driver.start(await loadVm(this.home, t.vm.name));
          else warnings.push(`--start ignored: the ${t.vm.driver} driver has no running state, ${t.vm.name}`);
        }
      }
      return {
        value: { restored: gs.name, members: gs.members.map((mb) => ({ vm: mb.vm, snapshot: mb.snapshot })), auto_snapshot: before?.name ?? null },
        warnings,
        notices,
      };
    });
  }

  /** Deletes group snapshot `snapshot` and every member snapshot of it, in one journal. */
  async deleteSnapshot(
    name: string,
    snapshot: string,
    opts: { recursive?: boolean; keepChildren?: boolean } & BeforeOpOptions = {},
  ): Promise<OpResult<{ deleted: string; members: { vm: string; deleted: string[]; merged_into: string[] }[]; auto_snapshot: string | null }>> {
    if (opts.recursive && opts.keepChildren) throw CloneboxError.USAGE('--recursive and --keep-children exclude each other');
    return this.withGroup(name, 'snapshot delete --group', async (l0) => {
      let l = l0;
      const recursive = Boolean(opts.recursive);
      const checkAll = async (spare?: string) => {
        const gs = this.findGroupSnapshot(l, name, snapshot);
        const targets = this.memberTargets(l, gs);
        for (const t of targets) {
          const snaps = l.snaps.get(t.vm.name)!;
          const children = snaps.filter((r) => r.parent === t.snap.name && r.name !== spare);
          if (children.length > 0 && !recursive && !opts.keepChildren) {
            throw CloneboxError.SNAPSHOT_HAS_CHILDREN(`snapshot ${t.snap.name} has children: ${children.map((c) => c.name).join(', ')}, VM ${t.vm.name}`, {
              hint: 'use --keep-children to merge it into them, or --recursive to delete them too',
            });
          }
          await this.m.checkDelete(t.vm, snaps, t.snap, recursive, spare, gs.name);
        }
        return { gs, targets };
      };
      await checkAll();
      // The auto snapshot holds the current states: where one stood on the deleted snapshot, its member
      // snapshot is now a child of it, merged into (or with --recursive, spared and rebased) as the
      // current state would have been.
      const before = await this.snapshotBefore(name, l, 'delete', `deleting group snapshot ${snapshot} of ${name}`, opts);
      if (before) l = await this.reread(name, l);
      const spare = before?.name;
      const { gs, targets } = await checkAll(spare);
      const j = await Journal.beginGroup(
        this.home,
        name,
        gs.members.map((mb) => mb.vm),
        `snapshot delete --group ${name} ${snapshot}`,
        driverStepHandlers,
      );
      const gp = groupSnapshotFile(this.home, name, gs.name);
      const result: { vm: string; deleted: string[]; merged_into: string[] }[] = [];
      const events: { vm: string; snapshot: string; op: 'deleted' | 'changed' }[] = [];
      try {
        const actions: Action[] = [{ do: 'write_json', path: gp, value: { ...gs, state: 'deleting' } }];
        for (const t of targets) {
          // The auto snapshot's member snapshots (another group snapshot's) are spared by a recursive delete.
          const plan = await this.m.planDelete(t.vm, l.snaps.get(t.vm.name)!, t.snap, recursive, j, spare);
          actions.push(...plan.actions);
          result.push({ vm: t.vm.name, deleted: plan.deleted, merged_into: plan.merged_into });
          events.push(...plan.events);
        }
        actions.push({ do: 'unlink', path: gp });
        await j.commit(actions);
      } catch (err) {
        await j.rollback();
        throw err;
      }
      await appendEvents(this.home, events);
      return {
        value: { deleted: gs.name, members: result, auto_snapshot: spare ?? null },
        warnings: [],
        notices: spare ? [`took automatic group snapshot ${spare} of ${name} before deleting ${snapshot}`] : [],
      };
    });
  }

  private findGroupSnapshot(l: Locked, name: string, snapshot: string): GroupSnapshotRecord {
    const gs = l.groupSnaps.find((s) => s.name === snapshot);
    if (!gs)
      throw this.notFound(
        name,
        snapshot,
        l.groupSnaps.map((s) => s.name),
      );
    return gs;
  }

  /** Each member's VM and member snapshot; a member that is gone makes the whole operation refuse. */
  private memberTargets(l: Locked, gs: GroupSnapshotRecord): { vm: VmRecord; snap: SnapshotRecord }[] {
    return gs.members.map((mb) => {
      const vm = l.vms.get(mb.vm);
      if (!vm) {
        throw CloneboxError.VM_NOT_FOUND(`VM ${mb.vm} of group snapshot ${gs.name} is not registered, group ${gs.group}`, {
          hint: 'register it again under that name; nothing was changed',
        });
      }
      const snap = l.snaps.get(mb.vm)!.find((r) => r.name === mb.snapshot);
      if (!snap) {
        throw CloneboxError.SNAPSHOT_NOT_FOUND(`VM ${mb.vm} has no snapshot ${mb.snapshot} of group snapshot ${gs.name}, group ${gs.group}`, {
          hint: 'the group snapshot is incomplete; nothing was changed',
        });
      }
      return { vm, snap };
    });
  }
}
