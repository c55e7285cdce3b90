/**
 * The snapshot manager: create, restore, delete (with merge), prune, run. It owns locking, the
 * journal and the metadata records; drivers own the disks. Every changing operation:
 *   1. takes the VM lock and finishes or rolls back any interrupted operation (journal recover),
 *   2. prepares new files through the driver (announced to the journal, nothing existing touched),
 *   3. commits driver actions and record writes together in one journal commit.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { checkAborted } from '../abort.js';
import { now as clockNow, nowIso } from '../clock.js';
import type { PreparedSnapshot } from '../drivers/driver.js';
import { driverFor, driverStepHandlers } from '../drivers/registry.js';
import { CloneboxError } from '../errors.js';
import { pathExists, requireFreeSpace, writeJsonAtomic } from '../fsutil.js';
import type { GuestDiffOptions } from '../guest/diff.js';
import { checkName, closestName } from '../names.js';
import { allocatedBytes, backingOf, imageGeometry } from '../qcow2/probe.js';
import { Qcow2Image } from '../qcow2/reader.js';
import { appendEvents } from '../store/events.js';
import type { Home } from '../store/home.js';
import { type Action, Journal, journalPath, recover } from '../store/journal.js';
import { checkNotPinned, pinnedSnapshots } from '../store/pins.js';
import { loadVm, lockVm, type VmRecord, vmFile } from '../store/registry.js';
import { listSnapshotNames, listSnapshotRecords, readSnapshotRecord, type SnapshotRecord, snapshotsDir } from '../store/snapshots.js';
import type { DiskDiff } from './diff.js';
import { ancestry, autoSnapshotName, buildTree, childrenIndex, newestFirst, type SnapshotView, subtree, toView } from './model.js';
import { canonicalPolicy, type Policy, type PrunePlan, parseDuration, planPrune, validatePolicy } from './policy.js';
import { beforePolicy, namedPoliciesOf, policyOf, retentionKey, snapshotsBefore } from './settings.js';
import type { VmStats } from './stats.js';
import { parseTime } from './when.js';

export interface CreateOptions {
  name?: string;
  description?: string | null;
  tags?: string[];
  memory?: boolean;
  quiesce?: boolean;
  /** Set for automatic snapshots: the policy (or trigger) that made it. */
  autoPolicy?: string;
  /**
   * Stops the create while that leaves nothing behind: waiting for the VM lock, or after the driver
   * prepared its files and before the journal commits (rolled back then). ABORTED.
   */
  signal?: AbortSignal;
}

/** For operations that `before_operations` may precede with an auto snapshot. */
export interface BeforeOpOptions {
  /** Do not take it (`--no-auto-snapshot`). */
  noAutoSnapshot?: boolean;
}

export interface OpResult<T> {
  value: T;
  warnings: string[];
  /** What went as planned but is worth saying (routine pruning): not a warning. */
  notices?: string[];
  /** The auto snapshots retention removed after the operation. */
  pruned?: { snapshot: string; reason: string }[];
}

function recordPath(home: Home, vm: string, name: string): string {
  return path.join(snapshotsDir(home, vm), `${name}.json`);
}

export class SnapshotManager {
  /**
   * @param onNotice hears what a command did on its own on the way (the snapshot a configuration
   *   change triggered), so the caller can tell the user.
   */
  constructor(
    readonly home: Home,
    private readonly onNotice: (message: string) => void = () => undefined,
  ) {}

  /**
   * Runs `fn` with the VM locked and any interrupted operation recovered, after the check of
   * `before_operations: [config-change]`.
   */
  async withVm<T>(vmName: string, command: string, fn: (vm: VmRecord, snaps: SnapshotRecord[]) => Promise<T>, signal?: AbortSignal): Promise<T> {
    return this.locked(vmName, command, async (vm) => fn(vm, await listSnapshotRecords(this.home, vmName)), signal);
  }

  /**
   * withVm without reading the snapshot records: a command that needs one or two of them (create,
   * restore by name) reads those, so its cost does not grow with the VM's history.
   */
  private async locked<T>(vmName: string, command: string, fn: (vm: VmRecord) => Promise<T>, signal?: AbortSignal): Promise<T> {
    checkName('VM', vmName);
    await loadVm(this.home, vmName); // a clear VM_NOT_FOUND before any lock file is made
    const lock = await lockVm(this.home, vmName, command, signal);
    try {
      await recover(this.home, vmName, driverStepHandlers);
      // When it takes a snapshot, fn sees the VM as it is after it (read again below).
      await this.checkConfigChange(await loadVm(this.home, vmName));
      return await fn(await loadVm(this.home, vmName));
    } finally {
      await lock.release();
    }
  }

  /** The names of the VM's snapshots (a directory listing; no record is read). */
  private async names(vm: VmRecord): Promise<Set<string>> {
    return new Set(await listSnapshotNames(this.home, vm.name));
  }

  /**
   * `before_operations: [config-change]`: when the driver's configuration (a libvirt domain's XML,
   * disk sources aside) differs from what it was at the last snapshot, takes an auto snapshot
   * (`before-config-change`) before going on. The first check only records the configuration. Runs
   * under the VM lock; returns whether it took a snapshot.
   */
  private async checkConfigChange(vm: VmRecord): Promise<boolean> {
    if (!snapshotsBefore(vm, 'config-change')) return false;
    const driver = await driverFor(vm);
    if (!driver.configFingerprint) return false;
    let now: string;
    try {
      now = await driver.configFingerprint(vm);
    } catch {
      return false; // the command's own use of the driver reports what is wrong
    }
    const was = vm.extra?.config_fingerprint;
    if (was === now) return false;
    if (was === undefined) {
      const { writeJsonAtomic } = await import('../fsutil.js');
      await writeJsonAtomic(vmFile(this.home, vm.name), { ...vm, extra: { ...(vm.extra ?? {}), config_fingerprint: now } });
      return false;
    }
    const taken = await this.snapshotBefore(vm, await this.names(vm), 'config-change', `the configuration change of ${vm.name}`, {});
    if (taken) this.onNotice(`the configuration of ${vm.name} changed since its last snapshot: took automatic snapshot ${taken.name}`);
    return taken !== null;
  }

  /** Read-only access: no lock unless an interrupted operation must be recovered first. */
  async read<T>(vmName: string, fn: (vm: VmRecord, snaps: SnapshotRecord[]) => Promise<T>): Promise<T> {
    checkName('VM', vmName);
    await loadVm(this.home, vmName);
    if (await pathExists(journalPath(this.home, vmName))) {
      return this.withVm(vmName, 'snapshot list', fn);
    }
    return fn(await loadVm(this.home, vmName), await listSnapshotRecords(this.home, vmName));
  }

  private find(snaps: SnapshotRecord[], vm: VmRecord, name: string): SnapshotRecord {
    const s = snaps.find((r) => r.name === name);
    if (!s)
      throw this.notFound(
        vm,
        name,
        snaps.map((r) => r.name),
      );
    return s;
  }

  /** find() for a command that has the names only: reads that one record. */
  private findByName(vm: VmRecord, names: Set<string>, name: string): SnapshotRecord {
    const s = names.has(name) ? readSnapshotRecord(this.home, vm.name, name) : null;
    if (!s) throw this.notFound(vm, name, [...names]);
    return s;
  }

  private notFound(vm: VmRecord, name: string, names: string[]): CloneboxError {
    const near = closestName(name, names);
    return new CloneboxError('SNAPSHOT_NOT_FOUND', `no such snapshot ${name}, VM ${vm.name}`, {
      hint: near ? `did you mean ${near}?` : `see \`clonebox snapshot list ${vm.name}\``,
    });
  }

  // ---------------------------------------------------------------- views

  async list(vmName: string): Promise<SnapshotView[]> {
    return this.read(vmName, async (vm, snaps) => this.views(vm, snaps));
  }

  views(vm: VmRecord, snaps: SnapshotRecord[]): SnapshotView[] {
    const idx = childrenIndex(snaps);
    const named = namedPoliciesOf(vm);
    // A time-based rule gives an auto snapshot a date: keep-for (age) exactly, keep-within (from the
    // newest) at the earliest. The current snapshot never expires.
    const expiry = (r: SnapshotRecord): string | null => {
      if (!r.auto_created || r.name === vm.current) return r.expires_at;
      const key = retentionKey(vm, r.auto_policy);
      const p = key ? named[key]!.policy : policyOf(vm);
      const span = p.keep_for !== undefined ? parseDuration(p.keep_for) : p.keep_within !== undefined ? parseDuration(p.keep_within) : null;
      return span === null ? r.expires_at : new Date(Date.parse(r.created_at) + span).toISOString();
    };
    return [...snaps].sort(newestFirst).map((r) => toView(vm, r, idx, expiry(r)));
  }

  async show(vmName: string, name: string): Promise<SnapshotView> {
    return this.read(vmName, async (vm, snaps) => {
      this.find(snaps, vm, name);
      return this.views(vm, snaps).find((v) => v.name === name)!;
    });
  }

  async tree(vmName: string): Promise<ReturnType<typeof buildTree> & { expired: string[]; views: SnapshotView[]; retention: PrunePlan }> {
    return this.read(vmName, async (vm, snaps) => {
      const retention = this.planFor(vm, snaps);
      return { ...buildTree(vm, snaps), expired: retention.remove.map((r) => r.name), views: this.views(vm, snaps), retention };
    });
  }

  // ---------------------------------------------------------------- create

  async create(vmName: string, opts: CreateOptions = {}): Promise<OpResult<SnapshotView>> {
    const result = await this.locked(vmName, 'snapshot create', async (vm) => this.createLocked(vm, await this.names(vm), opts), opts.signal);
    if (opts.autoPolicy) {
      // The policy applies after each auto snapshot; failing to prune must not fail the snapshot.
      try {
        const plan = await this.prune(vmName, false);
        result.pruned = plan.remove.map((r) => ({ snapshot: r.name, reason: r.reason }));
        if (plan.remove.length) result.notices = [`retention removed ${plan.remove.map((r) => `${r.name} (${r.reason})`).join(', ')}`];
      } catch (err) {
        result.warnings.push(`policy not applied: ${(err as Error).message}`);
      }
    }
    return result;
  }

  /** `names`: the VM's snapshots now (the new name must not be one of them). */
  private async createLocked(vm: VmRecord, names: Set<string>, opts: CreateOptions): Promise<OpResult<SnapshotView>> {
    const name = opts.name !== undefined ? checkName('snapshot', opts.name) : autoSnapshotName(names);
    if (names.has(name)) throw new CloneboxError('SNAPSHOT_EXISTS', `snapshot ${name} already exists, VM ${vm.name}`);
    if (name === 'current') throw new CloneboxError('BAD_NAME', '"current" is reserved (it names the current state in diff)');
    const tags = [...new Set(opts.tags ?? [])];
    if (opts.autoPolicy && !tags.includes('auto')) tags.unshift('auto');
    const j = await Journal.begin(this.home, vm.name, `snapshot create ${name}`, driverStepHandlers);
    try {
      const plan = await this.planCreate(vm, name, tags, opts, j);
      const { rec, newVm, prepared } = plan;
      // The last point where a cancel (the REST service's DELETE of a task) rolls everything back.
      checkAborted(opts.signal);
      const done = await j.commit(plan.actions);
      const ready: SnapshotRecord = { ...rec, state: 'ready', quiesced: done.notes.quiesced === true };
      await this.addMemorySize(ready);
      const warnings = [...prepared.warnings, ...done.warnings];
      const logged = await appendEvents(this.home, [{ vm: vm.name, snapshot: name, op: 'created' }]);
      if (logged) warnings.push(logged);
      // A new snapshot has no children yet: its view needs no other record.
      return { value: this.views(newVm, [ready])[0]!, warnings };
    } catch (err) {
      await j.rollback();
      throw err;
    }
  }

  /**
   * A full snapshot's size includes its memory state, which exists only once the commit has run (it
   * showed `0 B` for a VM that had written nothing yet, issue 17). Not journaled: a crash here leaves
   * the disk-only size, which is what the record said before. Updates `ready` in place.
   */
  async addMemorySize(ready: SnapshotRecord): Promise<void> {
    if (!ready.memory_path) return;
    const mem = await stat(ready.memory_path).then(
      (st) => st.size,
      () => 0,
    );
    if (mem > 0) {
      ready.size_bytes += mem;
      await writeJsonAtomic(recordPath(this.home, ready.vm_name, ready.name), ready);
    }
  }

  /**
   * Prepares snapshot `name` of `vm` in journal `j` (a VM's own, or a group's) and returns the actions
   * that commit it: the record (creating), the driver's actions, the record (ready, with the driver's
   * `quiesced` note), the VM record. The caller has checked the name. Group snapshots pass
   * `opts.group` (the member tag) and `opts.driverActions` false to run the driver's actions themselves
   * (between a pause and a resume of every member).
   */
  async planCreate(
    vm: VmRecord,
    name: string,
    tags: string[],
    opts: CreateOptions & { group?: { name: string; snapshot: string } },
    j: Journal,
  ): Promise<{ rec: SnapshotRecord; newVm: VmRecord; rp: string; prepared: PreparedSnapshot; actions: Action[]; head: Action[]; tail: Action[] }> {
    const driver = await driverFor(vm);
    {
      let size = 0;
      for (const d of vm.disks) size += await allocatedBytes(d.path);
      const prepared = await driver.prepareSnapshot(vm, name, { memory: Boolean(opts.memory), quiesce: Boolean(opts.quiesce) }, j);
      const rec: SnapshotRecord = {
        name,
        vm_name: vm.name,
        type: prepared.type,
        state: 'creating',
        created_at: nowIso(),
        description: opts.description ?? null,
        parent: vm.current,
        tags,
        auto_created: Boolean(opts.autoPolicy),
        auto_policy: opts.autoPolicy ?? null,
        expires_at: null,
        disks: prepared.layers,
        size_bytes: size,
        content_id: null,
        memory_path: prepared.memoryPath,
        quiesced: false,
        ...(opts.group ? { group: opts.group } : {}),
      };
      // The configuration this snapshot goes with, for `before_operations: [config-change]`.
      const fingerprint = driver.configFingerprint && snapshotsBefore(vm, 'config-change') ? await driver.configFingerprint(vm) : null;
      const newVm: VmRecord = {
        ...vm,
        current: name,
        disks: prepared.disks,
        ...(fingerprint !== null ? { extra: { ...(vm.extra ?? {}), config_fingerprint: fingerprint } } : {}),
      };
      const rp = recordPath(this.home, vm.name, name);
      // A new file: if the driver's step fails without acting, the journal can undo the whole create.
      await j.willCreate(rp);
      const head: Action[] = [{ do: 'write_json', path: rp, value: rec }];
      const tail: Action[] = [
        // `quiesced` is what the driver's step reports; the record says false unless it did.
        { do: 'write_json', path: rp, value: { ...rec, state: 'ready' }, notes: ['quiesced'] },
        { do: 'write_json', path: vmFile(this.home, vm.name), value: newVm },
      ];
      return { rec, newVm, rp, prepared, actions: [...head, ...prepared.actions, ...tail], head, tail };
    }
  }

  /**
   * The auto snapshot `before_operations` asks for before `op`, taken under the operation's lock, or
   * null when none is asked for (or `noAutoSnapshot`). If it cannot be taken the operation must not
   * run: AUTO_SNAPSHOT_FAILED.
   */
  async snapshotBefore(vm: VmRecord, names: Set<string>, op: string, what: string, opts: BeforeOpOptions): Promise<SnapshotView | null> {
    if (opts.noAutoSnapshot || !snapshotsBefore(vm, op)) return null;
    try {
      return (
        await this.createLocked(vm, names, {
          autoPolicy: beforePolicy(op),
          tags: ['auto', 'before'],
          description: `automatic snapshot before ${what}`.slice(0, 500),
        })
      ).value;
    } catch (err) {
      const why = err instanceof CloneboxError ? `${err.code}: ${err.message}` : (err as Error).message;
      throw CloneboxError.AUTO_SNAPSHOT_FAILED(`cannot take the automatic snapshot before ${what} (${why}); nothing was changed`, {
        hint: `before_operations of ${vm.name} asks for it; fix the cause, or run again with --no-auto-snapshot`,
        cause: err,
      });
    }
  }

  /** For an operation outside this manager (import): takes the before-op snapshot under the VM lock. */
  async snapshotBeforeOp(vmName: string, op: string, what: string, opts: BeforeOpOptions): Promise<SnapshotView | null> {
    if (opts.noAutoSnapshot) return null;
    return this.locked(vmName, `auto snapshot before ${op}`, async (vm) => this.snapshotBefore(vm, await this.names(vm), op, what, opts));
  }

  // ---------------------------------------------------------------- restore

  /**
   * Picks the snapshot for `--at TIME`: the newest created at or before the end of the span TIME names
   * (when.ts), so that a time as `snapshot list` shows it picks the snapshot shown at that time.
   */
  static pickAt(snaps: SnapshotRecord[], at: string, vm: string, now: Date = clockNow()): { snapshot: SnapshotRecord; until: Date } {
    const { until } = parseTime(at, now);
    const t = until.getTime();
    const c = snaps.filter((s) => Date.parse(s.created_at) <= t).sort(newestFirst)[0];
    if (!c) {
      throw new CloneboxError('SNAPSHOT_NOT_FOUND', `no snapshot created at or before ${until.toISOString()} (${at}), VM ${vm}`, {
        hint: `see \`clonebox snapshot list ${vm}\``,
      });
    }
    return { snapshot: c, until };
  }

  private select(snaps: SnapshotRecord[], vm: VmRecord, sel: { name?: string; at?: string }): { snapshot: SnapshotRecord; until: Date | null } {
    if (sel.name !== undefined) return { snapshot: this.find(snaps, vm, sel.name), until: null };
    return SnapshotManager.pickAt(snaps, sel.at!, vm.name);
  }

  /** The snapshot a selection names, and for `at` the instant it was resolved against. */
  async resolveTarget(vmName: string, sel: { name?: string; at?: string }): Promise<{ snapshot: SnapshotView; until: Date | null }> {
    return this.read(vmName, async (vm, snaps) => {
      const { snapshot, until } = this.select(snaps, vm, sel);
      return { snapshot: this.views(vm, snaps).find((v) => v.name === snapshot.name)!, until };
    });
  }

  async restore(
    vmName: string,
    sel: { name?: string; at?: string },
    opts: { backup?: boolean; start?: boolean; signal?: AbortSignal } & BeforeOpOptions = {},
  ): Promise<OpResult<{ restored: string; backup: string | null }>> {
    return this.locked(
      vmName,
      'snapshot restore',
      async (vm) => {
        let names = await this.names(vm);
        // By name: that record alone; by time: every record (their creation times).
        const target =
          sel.name !== undefined ? this.findByName(vm, names, sel.name) : this.select(await listSnapshotRecords(this.home, vm.name), vm, sel).snapshot;
        const warnings: string[] = [];
        const notices: string[] = [];
        let backup: string | null = null;
        // --backup is the user's own request; before_operations: [restore] asks for the same snapshot.
        const before = opts.backup ? null : await this.snapshotBefore(vm, names, 'restore', `restoring ${target.name} on ${vm.name}`, opts);
        if (before) {
          backup = before.name;
          notices.push(`took automatic snapshot ${before.name} of ${vm.name} before restoring ${target.name}`);
          vm = await loadVm(this.home, vm.name);
          names = await this.names(vm);
        }
        if (opts.backup) {
          const b = await this.createLocked(vm, names, {
            autoPolicy: 'backup',
            tags: ['auto', 'backup'],
            description: `automatic backup before restoring ${target.name}`,
          });
          backup = b.value.name;
          warnings.push(...b.warnings);
          vm = await loadVm(this.home, vm.name);
        }
        await this.restoreLocked(vm, target, opts.signal);
        const logged = await appendEvents(this.home, [{ vm: vm.name, snapshot: target.name, op: 'restored' }]);
        if (logged) warnings.push(logged);
        if (opts.start) {
          const driver = await driverFor(vm);
          if (!driver.start) warnings.push(`--start ignored: the ${vm.driver} driver has no running state, ${vm.name}`);
          else await driver.start(await loadVm(this.home, vm.name));
        }
        return { value: { restored: target.name, backup }, warnings, notices };
      },
      opts.signal,
    );
  }

  /** `signal`: checked after the driver prepared and before the commit (rolled back then). */
  private async restoreLocked(vm: VmRecord, target: SnapshotRecord, signal?: AbortSignal): Promise<void> {
    const j = await Journal.begin(this.home, vm.name, `snapshot restore ${target.name}`, driverStepHandlers);
    try {
      const actions = await this.planRestore(vm, target, j);
      checkAborted(signal);
      await j.commit(actions);
    } catch (err) {
      await j.rollback();
      throw err;
    }
  }

  /** Prepares the restore of `target` on `vm` in journal `j` (a VM's own, or a group's); returns the actions that commit it. */
  async planRestore(vm: VmRecord, target: SnapshotRecord, j: Journal): Promise<Action[]> {
    const driver = await driverFor(vm);
    const prepared = await driver.prepareRestore(vm, target, j);
    const rp = recordPath(this.home, vm.name, target.name);
    return [
      { do: 'write_json', path: rp, value: { ...target, state: 'reverting' } },
      ...prepared.actions,
      { do: 'write_json', path: vmFile(this.home, vm.name), value: { ...vm, current: target.name, disks: prepared.disks } },
      { do: 'write_json', path: rp, value: { ...target, state: 'ready' } },
    ];
  }

  // ---------------------------------------------------------------- promote and branch

  /**
   * Makes snapshot `name` the current state without losing the present one: when the present state
   * differs from its snapshot (or there is none), it is first kept as snapshot `keepAs` (a manual
   * snapshot, so retention never prunes it), which becomes a branch beside `name`. Each step is one
   * journaled operation (create, then restore) under the VM lock: a crash between them leaves the
   * present state kept and `name` not yet current, and running promote again finishes it.
   */
  async promote(vmName: string, name: string, opts: { keepAs?: string } = {}): Promise<OpResult<{ promoted: string; kept: string | null }>> {
    return this.withVm(vmName, 'snapshot promote', async (vm, snaps) => {
      const target = this.find(snaps, vm, name);
      if (opts.keepAs !== undefined) checkName('snapshot', opts.keepAs);
      let kept: string | null = null;
      const warnings: string[] = [];
      if (await this.hasUnsavedState(vm)) {
        const k = await this.createLocked(vm, new Set(snaps.map((s) => s.name)), {
          ...(opts.keepAs !== undefined ? { name: opts.keepAs } : {}),
          description: `the state before ${name} was promoted`,
        });
        kept = k.value.name;
        warnings.push(...k.warnings);
        vm = await loadVm(this.home, vm.name);
      }
      await this.restoreLocked(vm, target);
      return { value: { promoted: target.name, kept }, warnings };
    });
  }

  /** Whether the current state holds anything its current snapshot lacks (no snapshot yet: any data). */
  private async hasUnsavedState(vm: VmRecord): Promise<boolean> {
    if (vm.current === null) return true;
    for (const d of vm.disks) if ((await allocatedBytes(d.path)) > 0) return true;
    return false;
  }

  /**
   * A new snapshot `name` that starts a branch at snapshot `from`: its layers are empty overlays on
   * `from`'s, so its content is `from`'s, and restoring it (or promoting it) continues work on that
   * branch while `from` stays as it is. The current state is not touched.
   */
  async branch(vmName: string, name: string, opts: { from: string; description?: string | null }): Promise<SnapshotView> {
    return this.withVm(vmName, 'snapshot branch', async (vm, snaps) => {
      checkName('snapshot', name);
      if (name === 'current') throw new CloneboxError('BAD_NAME', '"current" is reserved (it names the current state in diff)');
      if (snaps.some((r) => r.name === name)) throw new CloneboxError('SNAPSHOT_EXISTS', `snapshot ${name} already exists, VM ${vm.name}`);
      const base = this.find(snaps, vm, opts.from);
      const layers = vm.disks.map((d) => {
        const under = base.disks.find((l) => l.target === d.target);
        if (!under) throw new CloneboxError('STORE_CORRUPT', `snapshot ${base.name} has no layer for disk ${d.target}, ${vm.name}`);
        const stem = path.basename(d.path).replace(/\.(qcow2|qcow|img)$/i, '');
        return { target: d.target, under: under.path, path: path.join(path.dirname(under.path), `${stem}@${name}.qcow2`) };
      });
      for (const l of layers) {
        if (await pathExists(l.path)) {
          throw new CloneboxError('SNAPSHOT_EXISTS', `layer file already exists, ${l.path}`, { hint: 'choose another snapshot name or move the file away' });
        }
      }
      const { createOverlay } = await import('../qcow2/overlay.js');
      const j = await Journal.begin(this.home, vm.name, `snapshot branch ${name}`, driverStepHandlers);
      try {
        await j.willCreate(...layers.map((l) => l.path));
        for (const l of layers) await createOverlay(l.path, l.under, await imageGeometry(l.under));
        const rec: SnapshotRecord = {
          name,
          vm_name: vm.name,
          type: 'disk',
          state: 'ready',
          created_at: nowIso(),
          description: opts.description ?? `branch from ${base.name}`,
          parent: base.name,
          tags: [],
          auto_created: false,
          auto_policy: null,
          expires_at: null,
          disks: layers.map((l) => ({ target: l.target, path: l.path })),
          size_bytes: 0,
          // Same content as the base; an id is fixed when the branch is first published.
          content_id: null,
          memory_path: null,
        };
        await j.commit([{ do: 'write_json', path: recordPath(this.home, vm.name, name), value: rec }]);
        return this.views(vm, [...snaps, rec]).find((v) => v.name === name)!;
      } catch (err) {
        await j.rollback();
        throw err;
      }
    });
  }

  // ---------------------------------------------------------------- delete

  async delete(
    vmName: string,
    name: string,
    opts: { recursive?: boolean; keepChildren?: boolean } & BeforeOpOptions = {},
  ): Promise<OpResult<{ deleted: string[]; merged_into: string[] }>> {
    if (opts.recursive && opts.keepChildren) throw new CloneboxError('USAGE', '--recursive and --keep-children exclude each other');
    return this.withVm(vmName, 'snapshot delete', async (vm, snaps) => {
      const s = this.find(snaps, vm, name);
      const children = snaps.filter((r) => r.parent === s.name);
      if (children.length > 0 && !opts.recursive && !opts.keepChildren) {
        throw new CloneboxError('SNAPSHOT_HAS_CHILDREN', `snapshot ${name} has children: ${children.map((c) => c.name).join(', ')}, VM ${vm.name}`, {
          hint: 'use --keep-children to merge it into them, or --recursive to delete them too',
        });
      }
      const before = await this.snapshotBefore(vm, new Set(snaps.map((s) => s.name)), 'delete', `deleting snapshot ${name} of ${vm.name}`, opts);
      if (!before) return { value: await this.deleteLocked(vm, snaps, s, Boolean(opts.recursive)), warnings: [] };
      // The new snapshot holds the current state: if that stood on the deleted snapshot, it is now its
      // child, merged into (or with --recursive, spared and rebased) like the current state was.
      const vmNow = await loadVm(this.home, vm.name);
      const snapsNow = await listSnapshotRecords(this.home, vm.name);
      return {
        value: await this.deleteLocked(vmNow, snapsNow, this.find(snapsNow, vmNow, name), Boolean(opts.recursive), before.name),
        warnings: [],
        notices: [`took automatic snapshot ${before.name} of ${vm.name} before deleting ${name}`],
      };
    });
  }

  /**
   * Removes `s` (and with `recursive` its subtree). Whatever sits directly on removed layers and
   * survives (children with keep-children, the current state) is rebased onto s's parent, so its
   * content stays byte-identical. `spare` (the snapshot taken just before a recursive delete) survives
   * a recursive delete of its ancestors: it is rebased like a kept child.
   */
  private async deleteLocked(
    vm: VmRecord,
    snaps: SnapshotRecord[],
    s: SnapshotRecord,
    recursive: boolean,
    spare?: string,
  ): Promise<{ deleted: string[]; merged_into: string[] }> {
    await this.checkDelete(vm, snaps, s, recursive, spare);
    const j = await Journal.begin(this.home, vm.name, `snapshot delete ${s.name}`, driverStepHandlers);
    try {
      const plan = await this.planDelete(vm, snaps, s, recursive, j, spare);
      await j.commit(plan.actions);
      // Told after the commit (a reader sees only what happened); a log that cannot be written is not
      // a failed delete, so its message is dropped here as it has no warning channel in prune.
      await appendEvents(this.home, plan.events);
      return { deleted: plan.deleted, merged_into: plan.merged_into };
    } catch (err) {
      await j.rollback();
      throw err;
    }
  }

  /**
   * What must hold before `s` is deleted: no member snapshot of a group snapshot goes (other than those
   * of `groupSnapshot`, which a group delete removes), no export reads what it changes, its merges fit.
   */
  async checkDelete(vm: VmRecord, snaps: SnapshotRecord[], s: SnapshotRecord, recursive: boolean, spare?: string, groupSnapshot?: string): Promise<void> {
    const whole = recursive ? subtree(snaps, s.name) : [s];
    const doomed = whole.filter((d) => d.name !== spare);
    const grouped = doomed.find((d) => d.group && d.group.snapshot !== groupSnapshot);
    if (grouped?.group) {
      throw CloneboxError.SNAPSHOT_IN_GROUP(
        `snapshot ${grouped.name} of VM ${vm.name} belongs to group snapshot ${grouped.group.snapshot} of group ${grouped.group.name}`,
        { hint: `delete the group snapshot as a whole: \`clonebox snapshot delete --group ${grouped.group.name} --name ${grouped.group.snapshot}\`` },
      );
    }
    const doomedNames = new Set(doomed.map((d) => d.name));
    // Their layers are deleted, and (keep-children) the children's rewritten: not while an export reads them.
    const touched = [...doomedNames, ...(recursive ? [] : snaps.filter((r) => r.parent === s.name).map((r) => r.name))];
    await checkNotPinned(this.home, vm.name, touched, `deleting snapshot ${s.name}`);
    await this.checkMergeSpace(vm, snaps, s, doomedNames, recursive);
  }

  /**
   * Prepares the delete of `s` (see deleteLocked) in journal `j` (a VM's own, or a group's): returns
   * the actions that commit it, and what it deletes and merges. The caller has checked pins and space.
   */
  async planDelete(
    vm: VmRecord,
    snaps: SnapshotRecord[],
    s: SnapshotRecord,
    recursive: boolean,
    j: Journal,
    spare?: string,
  ): Promise<{ actions: Action[]; deleted: string[]; merged_into: string[]; events: { vm: string; snapshot: string; op: 'deleted' | 'changed' }[] }> {
    const whole = recursive ? subtree(snaps, s.name) : [s];
    const doomed = whole.filter((d) => d.name !== spare);
    const doomedNames = new Set(doomed.map((d) => d.name));
    const parent = s.parent ? (snaps.find((r) => r.name === s.parent) ?? null) : null;
    const newBase = new Map<string, string | null>();
    for (const d of vm.disks) {
      const pl = parent?.disks.find((l) => l.target === d.target)?.path;
      const own = s.disks.find((l) => l.target === d.target)?.path;
      newBase.set(d.target, pl ?? (own ? await backingOf(own) : null));
    }
    const driver = await driverFor(vm);
    const mergedInto: string[] = [];
    {
      const actions: Action[] = [];
      for (const d of doomed) actions.push({ do: 'write_json', path: recordPath(this.home, vm.name, d.name), value: { ...d, state: 'deleting' } });
      let newVm: VmRecord = vm;
      if (vm.current !== null && doomedNames.has(vm.current)) {
        const prepared = await driver.prepareRebaseCurrent(vm, newBase, j);
        actions.push(...prepared.actions);
        newVm = { ...vm, current: s.parent, disks: prepared.disks };
        mergedInto.push('current');
      }
      const kept = recursive ? whole.filter((d) => d.name === spare) : snaps.filter((r) => r.parent === s.name);
      if (kept.length > 0) {
        // Merges keep content ids as recorded. An id is fixed when a state is first published (export,
        // share); a state nobody has seen yet may get its id from the merged layer, which holds the
        // same content. So merges never need to hash whole chains just in case.
        const children = kept;
        // The merge engine (and the qcow2 writer under it) loads only when a merge runs: list and
        // show start faster without it.
        const { rebaseImage } = await import('../qcow2/rebase.js');
        for (const c of children) {
          const layers = [];
          let size = 0;
          for (const l of c.disks) {
            const next = path.join(path.dirname(l.path), `.${path.basename(l.path)}.merge-${process.pid}.new`);
            await j.willCreate(next);
            await rebaseImage(l.path, newBase.get(l.target) ?? null, next);
            size += await allocatedBytes(next);
            actions.push({ do: 'rename', from: next, to: l.path });
            layers.push(l);
          }
          // A full snapshot keeps its memory state through the merge: it stays in its size.
          if (c.memory_path)
            size += await stat(c.memory_path).then(
              (st) => st.size,
              () => 0,
            );
          actions.push({ do: 'write_json', path: recordPath(this.home, vm.name, c.name), value: { ...c, parent: s.parent, size_bytes: size } });
          mergedInto.push(c.name);
        }
      }
      for (const d of doomed) {
        for (const l of d.disks) actions.push({ do: 'unlink', path: l.path });
        if (d.memory_path) actions.push({ do: 'unlink', path: d.memory_path });
        actions.push({ do: 'unlink', path: recordPath(this.home, vm.name, d.name) });
      }
      actions.push({ do: 'write_json', path: vmFile(this.home, vm.name), value: newVm });
      return {
        actions,
        deleted: doomed.map((d) => d.name),
        merged_into: mergedInto,
        events: [
          ...doomed.map((d) => ({ vm: vm.name, snapshot: d.name, op: 'deleted' as const })),
          ...mergedInto.filter((n) => n !== 'current').map((n) => ({ vm: vm.name, snapshot: n, op: 'changed' as const })),
        ],
      };
    }
  }

  /**
   * NO_SPACE before a merge writes anything: each merged image (a child's layer, or the current
   * state) can take up to its own data plus the deleted layer's, beside the image it replaces.
   */
  private async checkMergeSpace(vm: VmRecord, snaps: SnapshotRecord[], s: SnapshotRecord, doomed: Set<string>, recursive: boolean): Promise<void> {
    const need = new Map<string, number>();
    const add = async (image: string, target: string) => {
      const own = s.disks.find((l) => l.target === target)?.path;
      const bytes = (await allocatedBytes(image)) + (own ? await allocatedBytes(own) : 0);
      need.set(path.dirname(image), (need.get(path.dirname(image)) ?? 0) + bytes);
    };
    if (vm.current !== null && doomed.has(vm.current)) for (const d of vm.disks) await add(d.path, d.target);
    if (!recursive) for (const c of snaps.filter((r) => r.parent === s.name)) for (const l of c.disks) await add(l.path, l.target);
    for (const [dir, bytes] of need) await requireFreeSpace(dir, bytes, `merging snapshot ${s.name} of ${vm.name}`);
  }

  // ---------------------------------------------------------------- policy and prune

  /** Changes the VM's default policy: `clear` drops every key first, a null value drops that key. */
  async setPolicy(vmName: string, changes: { [K in keyof Policy]?: Policy[K] | null }, opts: { clear?: boolean } = {}): Promise<Policy> {
    return this.withVm(vmName, 'snapshot policy', async (vm) => {
      const policy: Record<string, unknown> = opts.clear ? {} : { ...policyOf(vm) };
      for (const [k, v] of Object.entries(changes)) {
        if (v === null) delete policy[k];
        else if (v !== undefined) policy[k] = v;
      }
      validatePolicy(policy as Policy);
      const canonical = canonicalPolicy(policy as Policy);
      const { writeJsonAtomic } = await import('../fsutil.js');
      await writeJsonAtomic(vmFile(this.home, vm.name), { ...vm, extra: { ...(vm.extra ?? {}), policy: canonical } });
      return canonical;
    });
  }

  async getPolicy(vmName: string): Promise<Policy> {
    return this.read(vmName, async (vm) => policyOf(vm));
  }

  /**
   * What retention keeps and removes: each named policy over the auto snapshots it made, the VM's
   * default policy over the other auto snapshots. The current snapshot is a candidate of its group
   * (always kept, and counted); manual snapshots are never candidates.
   */
  planFor(vm: VmRecord, snaps: SnapshotRecord[]): PrunePlan {
    const named = namedPoliciesOf(vm);
    const groups = new Map<string, SnapshotRecord[]>();
    for (const s of snaps) {
      // A member snapshot of a group snapshot goes only with its group (the group's own policy prunes it).
      if (!s.auto_created || s.state !== 'ready' || s.group) continue;
      const key = retentionKey(vm, s.auto_policy);
      groups.set(key, [...(groups.get(key) ?? []), s]);
    }
    const plan: PrunePlan = { keep: [], remove: [], next: [] };
    const at = clockNow().getTime();
    for (const [key, members] of [...groups].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const candidates = members.map((c) => ({ name: c.name, created_at: c.created_at, size_bytes: c.size_bytes ?? 0 }));
      const policy = key ? named[key]!.policy : policyOf(vm);
      const p = planPrune(candidates, policy, { current: vm.current, now: at });
      const tag = (r: string) => (key ? `${key}: ${r}` : r);
      plan.keep.push(...p.keep.map((k) => ({ name: k.name, reasons: k.reasons.map((r, i) => (i === 0 ? tag(r) : r)) })));
      plan.remove.push(...p.remove.map((r) => ({ name: r.name, reason: tag(r.reason) })));
      // What the policy's next snapshot (taken now, then current) would push out: planned with a
      // stand-in for it whose name no snapshot can have.
      const nextOne = { name: '/next', created_at: new Date(at).toISOString(), size_bytes: 0 };
      const gone = new Set(p.remove.map((r) => r.name));
      for (const r of planPrune([...candidates, nextOne], policy, { current: nextOne.name, now: at }).remove) {
        if (!gone.has(r.name)) plan.next!.push({ name: r.name, reason: tag(r.reason) });
      }
    }
    return plan;
  }

  /** Applies the VM's policy to its auto snapshots; pruned ones are merged into their children. */
  async prune(vmName: string, dryRun: boolean): Promise<PrunePlan & { dry_run: boolean }> {
    if (dryRun) return this.read(vmName, async (vm, snaps) => ({ ...this.planFor(vm, snaps), dry_run: true }));
    return this.withVm(vmName, 'snapshot prune', async (vm, snaps) => {
      const plan = this.planFor(vm, snaps);
      // A snapshot an export reads (or whose child it reads) waits for the next prune.
      const pinned = await pinnedSnapshots(this.home, vm.name);
      if (pinned.size > 0) {
        const held = (name: string) => pinned.has(name) || snaps.some((c) => c.parent === name && pinned.has(c.name));
        for (const r of plan.remove.filter((x) => held(x.name))) plan.keep.push({ name: r.name, reasons: ['being exported'] });
        plan.remove = plan.remove.filter((x) => !held(x.name));
      }
      for (const r of plan.remove) {
        const curVm = await loadVm(this.home, vm.name);
        const cur = await listSnapshotRecords(this.home, vm.name);
        const s = cur.find((x) => x.name === r.name);
        if (!s) continue;
        await this.deleteLocked(curVm, cur, s, false);
      }
      return { ...plan, dry_run: false };
    });
  }

  // ---------------------------------------------------------------- diff and stats

  async diff(vmName: string, from: string, to: string, guest?: GuestDiffOptions): Promise<{ from: string; to: string; disks: DiskDiff[] }> {
    return this.withVm(vmName, 'snapshot diff', async (vm, snaps) => {
      const a = this.find(snaps, vm, from);
      const b = to === 'current' ? null : this.find(snaps, vm, to);
      const ancA = ancestry(snaps, a.name);
      const ancB = ancestry(snaps, b ? b.name : vm.current);
      const inB = new Set(ancB.map((r) => r.name));
      const common = ancA.find((r) => inB.has(r.name)) ?? null;
      const upTo = (chain: SnapshotRecord[]) =>
        common
          ? chain.slice(
              0,
              chain.findIndex((r) => r.name === common.name),
            )
          : chain;
      const { diffDisk } = await import('./diff.js');
      const disks: DiskDiff[] = [];
      for (const d of vm.disks) {
        const layerOf = (r: SnapshotRecord) => r.disks.find((l) => l.target === d.target)!.path;
        const topA = layerOf(a);
        const topB = b ? layerOf(b) : d.path;
        const between = common ? [...upTo(ancA).map(layerOf), ...upTo(ancB).map(layerOf), ...(b ? [] : [d.path])] : null;
        disks.push(await diffDisk(d.target, topA, topB, between, guest));
      }
      return { from, to, disks };
    });
  }

  async stats(vmName: string): Promise<VmStats & { vm: string; snapshots: number }> {
    return this.withVm(vmName, 'snapshot stats', async (vm, snaps) => {
      let virtual = 0;
      for (const d of vm.disks) {
        const img = await Qcow2Image.open(d.path);
        virtual += img.virtualSize;
        await img.close();
      }
      const files = [...vm.disks.map((d) => d.path), ...snaps.flatMap((s) => s.disks.map((l) => l.path))];
      const { computeStats } = await import('./stats.js');
      return { vm: vm.name, snapshots: snaps.length, ...(await computeStats(virtual, files)) };
    });
  }
}
