/**
 * The scheduler: one pass takes every snapshot that is due on every VM and applies retention, then
 * returns. `schedule run` (from cron or a systemd timer, every minute) and `clonebox serve` (in
 * process) run the same pass.
 *
 * - Due: a named policy with a schedule is due when its next run after its last run (or after the
 *   time the schedule was set, before its first run) is at or before now. A pass takes ONE snapshot
 *   per due policy, however many runs were missed while the machine was off (catch-up, never a burst).
 * - Last run: the newer of the policy's newest auto snapshot (`auto_policy`) and the time recorded in
 *   <home>/vms/<vm>/schedule.json after the snapshot. A pass killed at any point therefore never
 *   makes a duplicate: either the snapshot's journal commit happened (the snapshot names the run) or
 *   the next command rolls it back (and the next pass takes it again).
 * - One pass at a time: <home>/schedule.lock (a holder that died is taken over); a pass that finds a
 *   live holder does nothing and says so. VMs are still locked one by one as every command does.
 */
import path from 'node:path';
import { now } from '../clock.js';
import { CloneboxError } from '../errors.js';
import { writeJsonAtomic } from '../fsutil.js';
import { type GroupRecord, listGroupNames, listGroupSnapshotRecords, loadGroup } from '../store/groups.js';
import { groupDir, type Home, vmDir } from '../store/home.js';
import { acquireLock } from '../store/lock.js';
import { listVmNames, loadVm, type VmRecord } from '../store/registry.js';
import { listSnapshotRecords, type SnapshotRecord } from '../store/snapshots.js';
import { GroupManager } from './groups.js';
import type { SnapshotManager } from './manager.js';
import { nextRun } from './schedule.js';
import { autoSettingsOf, type NamedPolicy, snapshotsBefore } from './settings.js';

interface ScheduleState {
  format: 1;
  /** Policy name → ISO time of its last scheduled snapshot. */
  last_run: Record<string, string>;
}

/** `schedule.json` of a VM, or (`group`) of a group. */
function statePath(home: Home, vm: string, group = false): string {
  return path.join(group ? groupDir(home, vm) : vmDir(home, vm), 'schedule.json');
}

async function readState(home: Home, vm: string, group = false): Promise<ScheduleState> {
  const { readFile } = await import('node:fs/promises');
  try {
    const s = JSON.parse(await readFile(statePath(home, vm, group), 'utf8')) as Partial<ScheduleState>;
    // Only well-formed times count; anything else is as if never run (the snapshots still tell).
    const last: Record<string, string> = {};
    for (const [k, v] of Object.entries(s.last_run ?? {})) if (typeof v === 'string' && !Number.isNaN(Date.parse(v))) last[k] = v;
    return { format: 1, last_run: last };
  } catch {
    return { format: 1, last_run: {} };
  }
}

export interface PolicyStatus {
  /** The VM, or for a group's policy the group's name (then `group` is set too). */
  vm: string;
  group: string | null;
  policy: string;
  named: NamedPolicy;
  last_run: string | null;
  next_run: string | null;
  due: boolean;
}

/** Last and next run of one policy at `at` (`vm`: the VM, or a group; `snaps`: its snapshots, or the group's). */
function status(
  vm: { name: string },
  snaps: Pick<SnapshotRecord, 'auto_created' | 'auto_policy' | 'created_at'>[],
  state: ScheduleState,
  name: string,
  p: NamedPolicy,
  enabled: boolean,
  at: Date,
  group: string | null = null,
): PolicyStatus {
  const times = snaps.filter((s) => s.auto_created && s.auto_policy === name).map((s) => s.created_at);
  const recorded = state.last_run[name];
  if (recorded) times.push(recorded);
  const last = times.length ? times.reduce((a, b) => (Date.parse(a) >= Date.parse(b) ? a : b)) : null;
  const from = new Date(Math.max(last ? Date.parse(last) : 0, Date.parse(p.since) || 0));
  const next = enabled ? nextRun(p, from) : null;
  return { vm: vm.name, group, policy: name, named: p, last_run: last, next_run: next ? next.toISOString() : null, due: next !== null && next <= at };
}

/** Every named policy of every VM with its last and next run. */
export async function scheduleStatus(home: Home): Promise<PolicyStatus[]> {
  const at = now();
  const out: PolicyStatus[] = [];
  for (const name of await listVmNames(home)) {
    let vm: VmRecord;
    try {
      vm = await loadVm(home, name);
    } catch {
      continue; // removed meanwhile
    }
    const settings = autoSettingsOf(vm);
    const snaps = await listSnapshotRecords(home, name);
    const state = await readState(home, name);
    for (const [pname, p] of Object.entries(settings.policies)) out.push(status(vm, snaps, state, pname, p, settings.enabled, at));
  }
  // A group's named policies take group snapshots (docs/groups.md).
  for (const name of await listGroupNames(home)) {
    let g: GroupRecord;
    try {
      g = await loadGroup(home, name);
    } catch {
      continue;
    }
    const settings = autoSettingsOf(g);
    if (Object.keys(settings.policies).length === 0) continue;
    const snaps = await listGroupSnapshotRecords(home, name);
    const state = await readState(home, name, true);
    for (const [pname, p] of Object.entries(settings.policies)) out.push(status(g, snaps, state, pname, p, settings.enabled, at, name));
  }
  return out;
}

/** `group` is set for what a group's policy did (then `vm` is the group's name). */
export interface PassResult {
  at: string;
  ran: boolean;
  taken: { vm: string; group?: string; policy: string; snapshot: string }[];
  pruned: { vm: string; group?: string; snapshot: string; reason: string }[];
  failed: { vm: string; group?: string; policy: string; error: string }[];
  warnings: string[];
}

/** One scheduler pass (see the module comment). */
export async function runPass(mgr: SnapshotManager, opts: { signal?: AbortSignal } = {}): Promise<PassResult> {
  const at = now();
  const result: PassResult = { at: at.toISOString(), ran: false, taken: [], pruned: [], failed: [], warnings: [] };
  const { ensureDir } = await import('../fsutil.js');
  await ensureDir(mgr.home.root);
  let lock: Awaited<ReturnType<typeof acquireLock>>;
  try {
    lock = await acquireLock(path.join(mgr.home.root, 'schedule.lock'), 'a scheduler pass is running', 'schedule run', 0);
  } catch (err) {
    if (err instanceof CloneboxError && err.code === 'VM_BUSY') {
      result.warnings.push(`another scheduler pass is running (${err.hint ?? 'schedule.lock'}); this one did nothing`);
      return result;
    }
    throw err;
  }
  try {
    result.ran = true;
    for (const status of await scheduleStatus(mgr.home)) {
      if (!status.due) continue;
      opts.signal?.throwIfAborted();
      if (status.group !== null) {
        await groupRun(mgr, status.group, status.policy, result);
        continue;
      }
      try {
        const r = await mgr.create(status.vm, {
          autoPolicy: status.policy,
          description: `scheduled snapshot of policy ${status.policy}`,
        });
        result.taken.push({ vm: status.vm, policy: status.policy, snapshot: r.value.name });
        result.warnings.push(...r.warnings);
        for (const n of r.pruned ?? []) result.pruned.push({ vm: status.vm, ...n });
        const state = await readState(mgr.home, status.vm);
        state.last_run[status.policy] = r.value.created_at;
        await writeJsonAtomic(statePath(mgr.home, status.vm), state);
      } catch (err) {
        if (!(err instanceof CloneboxError) || err.code === 'INTERNAL') throw err;
        result.failed.push({ vm: status.vm, policy: status.policy, error: `${err.code}: ${err.message}` });
      }
    }
    // Time-based rules expire snapshots even when nothing new was taken.
    for (const vm of await listVmNames(mgr.home)) {
      opts.signal?.throwIfAborted();
      try {
        // `before_operations: [config-change]` is checked by every command that locks the VM; a pass
        // is one for the VMs that ask for it.
        const rec = await loadVm(mgr.home, vm);
        if (snapshotsBefore(rec, 'config-change')) await mgr.withVm(vm, 'schedule run', async () => undefined);
        const plan = await mgr.prune(vm, true);
        if (plan.remove.length === 0) continue;
        const done = await mgr.prune(vm, false);
        for (const r of done.remove) result.pruned.push({ vm, snapshot: r.name, reason: r.reason });
      } catch (err) {
        if (!(err instanceof CloneboxError) || err.code === 'INTERNAL') throw err;
        result.failed.push({ vm, policy: '(retention)', error: `${err.code}: ${err.message}` });
      }
    }
    for (const g of await listGroupNames(mgr.home)) {
      opts.signal?.throwIfAborted();
      try {
        for (const r of await new GroupManager(mgr.home, mgr).prune(g)) result.pruned.push({ vm: g, group: g, ...r });
      } catch (err) {
        if (!(err instanceof CloneboxError) || err.code === 'INTERNAL') throw err;
        result.failed.push({ vm: g, group: g, policy: '(retention)', error: `${err.code}: ${err.message}` });
      }
    }
  } finally {
    await lock.release();
  }
  return result;
}

/** A due policy of group `group`: one group snapshot, the group's retention, the run recorded. */
async function groupRun(mgr: SnapshotManager, group: string, policy: string, result: PassResult): Promise<void> {
  const gm = new GroupManager(mgr.home, mgr);
  try {
    const r = await gm.createSnapshot(group, { autoPolicy: policy, description: `scheduled group snapshot of policy ${policy}` });
    result.taken.push({ vm: group, group, policy, snapshot: r.value.name });
    result.warnings.push(...r.warnings);
    const state = await readState(mgr.home, group, true);
    state.last_run[policy] = r.value.created_at;
    await writeJsonAtomic(statePath(mgr.home, group, true), state);
  } catch (err) {
    if (!(err instanceof CloneboxError) || err.code === 'INTERNAL') throw err;
    result.failed.push({ vm: group, group, policy, error: `${err.code}: ${err.message}` });
  }
}
