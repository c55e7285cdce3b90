/**
 * `cb.groups`: VM groups, snapshotted, restored and deleted as one (docs/groups.md; the work is in
 * src/snapshots/groups.ts). Group snapshot create, restore and delete are journaled operations that
 * cannot stop half-way: their signal is checked before they start, and onProgress hears when they
 * start and end.
 */
import { checkAborted } from '../abort.js';
import { usageError } from '../errors.js';
import { parseSize } from '../names.js';
import type { Policy as InternalPolicy } from '../snapshots/policy.js';
import type { Session } from './session.js';
import type {
  GroupCreateOptions,
  GroupDeleteOptions,
  GroupDeleteResult,
  GroupPolicies,
  GroupPolicySpec,
  GroupRestoreOptions,
  GroupRestoreResult,
  GroupSnapshotCreateOptions,
  GroupSnapshotView,
  GroupView,
  LongOptions,
} from './types.js';

/** Runs one journaled group operation with the long-operation options: abort before it, progress around it. */
async function step<T>(phase: string, opts: LongOptions, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  checkAborted(signal);
  opts.onProgress?.({ phase, done: 0, total: 1 });
  const r = await fn();
  opts.onProgress?.({ phase, done: 1, total: 1 });
  return r;
}

export class Groups {
  constructor(private readonly s: Session) {}

  private async manager() {
    const [{ SnapshotManager }, { GroupManager }] = await Promise.all([import('../snapshots/manager.js'), import('../snapshots/groups.js')]);
    return new GroupManager(this.s.home, new SnapshotManager(this.s.home, this.s.warner(undefined, 'NOTICE')));
  }

  /** A new group of registered VMs (at least one). */
  create(name: string, opts: GroupCreateOptions): Promise<GroupView> {
    return this.s.run(async () => (await this.manager()).create(name, opts.vms, opts.description ?? null));
  }

  /** Adds VMs to the group; the next group snapshot takes them too. */
  add(name: string, vms: string[]): Promise<GroupView> {
    return this.s.run(async () => (await this.manager()).add(name, vms));
  }

  /** Removes VMs from the group; existing group snapshots keep naming (and restoring) them. */
  remove(name: string, vms: string[]): Promise<GroupView> {
    return this.s.run(async () => (await this.manager()).remove(name, vms));
  }

  /** Deletes a group that has no group snapshot left (GROUP_HAS_SNAPSHOTS otherwise); its VMs stay. */
  delete(name: string): Promise<{ name: string }> {
    return this.s.run(async () => (await this.manager()).delete(name));
  }

  /** Sorted by name. */
  list(): Promise<GroupView[]> {
    return this.s.run(async () => (await this.manager()).list());
  }

  show(name: string): Promise<GroupView> {
    return this.s.run(async () => (await this.manager()).show(name));
  }

  /**
   * The group's named policies. With `set` (a policy name and its spec, or null to remove it), changes
   * that policy first. Each policy's runs (`schedule run`, or `clonebox serve`) take a group snapshot
   * and apply its retention to the group snapshots it made.
   */
  policy(name: string, set?: { name: string; spec: GroupPolicySpec | null }): Promise<GroupPolicies> {
    return this.s.run(async () => {
      const m = await this.manager();
      if (!set) return { group: name, policies: await m.setNamedPolicy(name, null, null) };
      let spec: { policy: InternalPolicy; when: string[]; timezone: string | null } | null = null;
      if (set.spec) {
        const { parseDuration } = await import('../snapshots/policy.js');
        const policy: Record<string, unknown> = { ...set.spec.policy };
        if (typeof policy.max_size === 'string') policy.max_size = parseSize(policy.max_size, 'max size');
        for (const k of ['keep_within', 'keep_for'] as const) if (typeof policy[k] === 'string') parseDuration(policy[k]);
        if (set.spec.when.length === 0) throw usageError('a group policy needs at least one time (--when)');
        spec = { policy: policy as InternalPolicy, when: set.spec.when, timezone: set.spec.timezone ?? null };
      }
      return { group: name, policies: await m.setNamedPolicy(name, set.name, spec) };
    });
  }

  /**
   * Snapshots every member at one point: image-driver members under their locks, running libvirt
   * members paused (or with `quiesce`, frozen by their guest agent) until every snapshot is taken.
   */
  createSnapshot(name: string, opts: GroupSnapshotCreateOptions = {}): Promise<GroupSnapshotView> {
    return this.s.run(async () => {
      const m = await this.manager();
      const r = await step('create', opts, this.s.signal(opts.signal), () =>
        m.createSnapshot(name, {
          ...(opts.name !== undefined ? { name: opts.name } : {}),
          description: opts.description ?? null,
          tags: opts.tags ?? [],
          memory: Boolean(opts.memory),
          quiesce: Boolean(opts.quiesce),
        }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      return r.value;
    });
  }

  /** The group's snapshots, newest first. */
  snapshots(name: string): Promise<GroupSnapshotView[]> {
    return this.s.run(async () => (await this.manager()).listSnapshots(name));
  }

  showSnapshot(name: string, snapshot: string): Promise<GroupSnapshotView> {
    return this.s.run(async () => (await this.manager()).showSnapshot(name, snapshot));
  }

  /** Every member back to the group snapshot, all or nothing; unsnapshotted changes are discarded. */
  restore(name: string, opts: GroupRestoreOptions): Promise<GroupRestoreResult> {
    return this.s.run(async () => {
      const m = await this.manager();
      const r = await step('restore', opts, this.s.signal(opts.signal), () =>
        m.restore(name, opts.name, { start: Boolean(opts.start), noAutoSnapshot: Boolean(opts.noAutoSnapshot) }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      r.notices?.forEach(this.s.warner(opts.onWarning, 'NOTICE'));
      return { group: name, restored: r.value.restored, members: r.value.members, auto_snapshot: r.value.auto_snapshot };
    });
  }

  /** Deletes the group snapshot and every member snapshot of it, all or nothing. */
  deleteSnapshot(name: string, snapshot: string, opts: GroupDeleteOptions = {}): Promise<GroupDeleteResult> {
    return this.s.run(async () => {
      const m = await this.manager();
      const r = await step('delete', opts, this.s.signal(opts.signal), () =>
        m.deleteSnapshot(name, snapshot, {
          recursive: Boolean(opts.recursive),
          keepChildren: Boolean(opts.keepChildren),
          noAutoSnapshot: Boolean(opts.noAutoSnapshot),
        }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      r.notices?.forEach(this.s.warner(opts.onWarning, 'NOTICE'));
      return { group: name, deleted: r.value.deleted, members: r.value.members, auto_snapshot: r.value.auto_snapshot };
    });
  }
}
