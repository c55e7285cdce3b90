/**
 * `cb.snapshots`: the snapshot tree of a VM (the work is in src/snapshots/). Restore, delete and
 * create are journaled operations that cannot stop half-way: their signal is checked before they
 * start, and for create and restore also while they wait for the VM lock and just before their
 * journal commits (what they prepared is rolled back then); onProgress hears when they start and end.
 */
import { checkAborted } from '../abort.js';
import { usageError } from '../errors.js';
import { checkName, parseSize } from '../names.js';
import type { Policy as InternalPolicy } from '../snapshots/policy.js';
import type { Session } from './session.js';
import type {
  BranchOptions,
  DeleteOptions,
  DeleteResult,
  DiffOptions,
  DiffResult,
  LongOptions,
  PolicyChanges,
  PolicyResult,
  PromoteOptions,
  PromoteResult,
  PruneResult,
  RestoreOptions,
  RestoreResult,
  RunOptions,
  RunResult,
  SnapshotCreateOptions,
  SnapshotSelection,
  SnapshotTree,
  SnapshotTreeDetails,
  SnapshotView,
  StatsDetails,
  StatsResult,
} from './types.js';

/** Runs one journaled step with the long-operation options: abort before it, progress around it. */
async function step<T>(phase: string, opts: LongOptions, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  checkAborted(signal);
  opts.onProgress?.({ phase, done: 0, total: 1 });
  const r = await fn();
  opts.onProgress?.({ phase, done: 1, total: 1 });
  return r;
}

/** The store's records watch class, once loaded (stamp() is called per request by the REST service). */
let RecordsWatchClass: typeof import('../store/records-watch.js').RecordsWatch | null = null;

export class Snapshots {
  constructor(private readonly s: Session) {}

  private async manager() {
    const { SnapshotManager } = await import('../snapshots/manager.js');
    return new SnapshotManager(this.s.home, this.s.warner(undefined, 'NOTICE'));
  }

  /** Snapshots every disk of the VM; the new snapshot becomes the current one. */
  create(vm: string, opts: SnapshotCreateOptions = {}): Promise<SnapshotView> {
    return this.s.run(async () => {
      const m = await this.manager();
      const signal = this.s.signal(opts.signal);
      const r = await step('create', opts, signal, () =>
        m.create(vm, {
          ...(opts.name !== undefined ? { name: opts.name } : {}),
          description: opts.description ?? null,
          tags: opts.tags ?? [],
          memory: Boolean(opts.memory),
          quiesce: Boolean(opts.quiesce),
          signal,
        }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      return r.value;
    });
  }

  /**
   * A string that changes whenever the VM's snapshot or VM records change (by any process): a
   * long-running caller re-reads list() only when it differs. Null: they changed so recently that
   * list() must be read. Cheap: no system call while nothing changes (an inotify watch of the VM's
   * record directories, src/store/records-watch.ts; two stat calls where a watch cannot be made).
   * Changes made through this Clonebox show at once; those of other processes as soon as their
   * notification is read, which is before any I/O that began after the change completes.
   */
  stamp(vm: string): Promise<string | null> {
    return this.s.run(async () => {
      checkName('VM', vm);
      RecordsWatchClass ??= (await import('../store/records-watch.js')).RecordsWatch;
      this.s.records ??= new RecordsWatchClass(this.s.home);
      const w = this.s.records.stamp(vm);
      return w === null ? null : `${w}.${this.s.changes}`;
    }, true);
  }

  /**
   * What stamp() would answer, when that is known without I/O (the VM's records are watched and
   * nothing changed since stamp() was last asked); else undefined: call stamp(). Synchronous, for a
   * server's hot path.
   */
  knownStamp(vm: string): string | undefined {
    const w = this.s.isClosed ? undefined : this.s.records?.peek(vm);
    return w === undefined ? undefined : `${w}.${this.s.changes}`;
  }

  /** Newest first. */
  list(vm: string): Promise<SnapshotView[]> {
    return this.s.run(async () => (await this.manager()).list(vm), true);
  }

  tree(vm: string): Promise<SnapshotTree> {
    return this.s.run(async () => {
      const t = await (await this.manager()).tree(vm);
      return { vm_name: t.vm_name, current: t.current, roots: t.roots };
    });
  }

  /** The tree with what a rendering marks: each snapshot's view, and those the policy would prune. */
  treeDetails(vm: string): Promise<SnapshotTreeDetails> {
    return this.s.run(async () => {
      const t = await (await this.manager()).tree(vm);
      return {
        vm_name: t.vm_name,
        current: t.current,
        roots: t.roots,
        views: t.views,
        expired: t.expired,
        retention: { keep: t.retention.keep, remove: t.retention.remove, next: t.retention.next ?? [] },
      };
    });
  }

  show(vm: string, name: string): Promise<SnapshotView> {
    return this.s.run(async () => (await this.manager()).show(vm, name), true);
  }

  /** The name of the snapshot a restore selection names (exactly one of name and at). */
  resolve(vm: string, sel: { name?: string; at?: string }): Promise<string> {
    return this.select(vm, sel).then((r) => r.snapshot.name);
  }

  /** The snapshot a restore selection names, and for `at` the instant the time was read as. */
  select(vm: string, sel: { name?: string; at?: string }): Promise<SnapshotSelection> {
    return this.s.run(async () => {
      const r = await (await this.manager()).resolveTarget(vm, selection(sel));
      return { snapshot: r.snapshot, resolved_at: r.until ? r.until.toISOString() : null };
    });
  }

  /**
   * Makes snapshot `name` the current state, keeping the present state as a snapshot first when it
   * holds anything unsaved (a manual one: retention never prunes it). Nothing is lost.
   */
  promote(vm: string, name: string, opts: PromoteOptions = {}): Promise<PromoteResult> {
    return this.s.run(async () => {
      const m = await this.manager();
      const r = await step('promote', opts, this.s.signal(opts.signal), () => m.promote(vm, name, opts.keepAs !== undefined ? { keepAs: opts.keepAs } : {}));
      r.warnings.forEach(this.s.warner(opts.onWarning));
      return { vm, promoted: r.value.promoted, kept: r.value.kept };
    });
  }

  /** A new snapshot `name` with the content of `from`, starting a branch there; the current state is untouched. */
  branch(vm: string, name: string, opts: BranchOptions): Promise<SnapshotView> {
    return this.s.run(async () => (await this.manager()).branch(vm, name, { from: opts.from, description: opts.description ?? null }));
  }

  /** Makes the VM state equal to a snapshot: unsnapshotted changes are discarded (backup: snapshot them first). */
  restore(vm: string, opts: RestoreOptions): Promise<RestoreResult> {
    return this.s.run(async () => {
      const sel = selection(opts);
      const m = await this.manager();
      const signal = this.s.signal(opts.signal);
      const r = await step('restore', opts, signal, () =>
        m.restore(vm, sel, { backup: Boolean(opts.backup), start: Boolean(opts.start), noAutoSnapshot: Boolean(opts.noAutoSnapshot), signal }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      r.notices?.forEach(this.s.warner(opts.onWarning, 'NOTICE'));
      return { vm, restored: r.value.restored, backup: r.value.backup };
    });
  }

  /** Deletes a snapshot keeping every other state identical (keepChildren: merges it into its children). */
  delete(vm: string, name: string, opts: DeleteOptions = {}): Promise<DeleteResult> {
    return this.s.run(async () => {
      const m = await this.manager();
      const r = await step('delete', opts, this.s.signal(opts.signal), () =>
        m.delete(vm, name, { recursive: Boolean(opts.recursive), keepChildren: Boolean(opts.keepChildren), noAutoSnapshot: Boolean(opts.noAutoSnapshot) }),
      );
      r.warnings.forEach(this.s.warner(opts.onWarning));
      r.notices?.forEach(this.s.warner(opts.onWarning, 'NOTICE'));
      return { vm, deleted: r.value.deleted, merged_into: r.value.merged_into };
    });
  }

  /**
   * Byte ranges whose content differs between two snapshots (`to` may be 'current'); with `files`,
   * `packages` or `etc`, also what changed inside the guest (docs/guest-diff.md).
   */
  diff(vm: string, from: string, to: string, opts: DiffOptions = {}): Promise<DiffResult> {
    return this.s.run(async () => {
      if (opts.maxDiffBytes !== undefined && (!Number.isSafeInteger(opts.maxDiffBytes) || opts.maxDiffBytes < 0)) {
        throw usageError(`--max-diff-bytes must be a whole number of bytes, got ${opts.maxDiffBytes}`);
      }
      const signal = this.s.signal(opts.signal);
      checkAborted(signal);
      const guest = opts.files || opts.packages || opts.etc;
      return (await this.manager()).diff(
        vm,
        from,
        to,
        guest
          ? {
              files: Boolean(opts.files),
              packages: Boolean(opts.packages),
              etc: Boolean(opts.etc),
              ...(opts.maxDiffBytes !== undefined ? { maxDiffBytes: opts.maxDiffBytes } : {}),
              signal,
            }
          : undefined,
      );
    });
  }

  stats(vm: string): Promise<StatsResult> {
    return this.statsDetails(vm).then(({ layers: _layers, snapshots: _snapshots, ...shown }) => shown);
  }

  /** stats() with the layer files and snapshots counted. */
  statsDetails(vm: string): Promise<StatsDetails> {
    return this.s.run(async () => {
      const s = await (await this.manager()).stats(vm);
      return {
        virtual_size: s.virtual_size,
        physical_bytes: s.physical_bytes,
        allocated_bytes: s.allocated_bytes,
        unique_bytes: s.unique_bytes,
        savings_percent: s.savings_percent,
        layers: s.layers,
        snapshots: s.snapshots,
      };
    });
  }

  /**
   * The retention policy of auto snapshots that no named policy made. With `set`, changes those keys
   * first (null drops a key); with `clear`, drops every key first (then applies `set`). A count or
   * size of 0 is refused (USAGE): it would prune every auto snapshot; clear the key instead.
   */
  policy(vm: string, set?: PolicyChanges, opts: { clear?: boolean } = {}): Promise<PolicyResult> {
    return this.s.run(async () => {
      const { POLICY_KEYS, parseDuration } = await import('../snapshots/policy.js');
      const changes: Record<string, number | string | null> = {};
      for (const k of POLICY_KEYS) {
        const v = set?.[k];
        if (v !== undefined) changes[k] = v;
      }
      if (typeof changes.max_size === 'string') changes.max_size = parseSize(changes.max_size, 'max size');
      for (const k of ['keep_within', 'keep_for'] as const) if (typeof changes[k] === 'string') parseDuration(changes[k]);
      const m = await this.manager();
      // max_size is a number and the durations valid by now; setPolicy checks the counts.
      const policy =
        Object.keys(changes).length || opts.clear
          ? await m.setPolicy(vm, changes as { [K in keyof InternalPolicy]?: InternalPolicy[K] | null }, { clear: Boolean(opts.clear) })
          : await m.getPolicy(vm);
      return { vm, policy };
    });
  }

  /** Applies the retention policy to auto snapshots (dryRun: only says what it would delete). */
  prune(vm: string, opts: { dryRun?: boolean } = {}): Promise<PruneResult> {
    return this.s.run(async () => {
      const plan = await (await this.manager()).prune(vm, Boolean(opts.dryRun));
      return { vm, dry_run: plan.dry_run, keep: plan.keep, remove: plan.remove, next: plan.next ?? [] };
    });
  }

  /** Snapshots, runs argv with inherited stdio, and with rollbackOnFail restores the snapshot when it fails. */
  run(vm: string, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    return this.s.run(async () => {
      const { runWithSnapshot } = await import('../snapshots/run.js');
      const r = await runWithSnapshot(await this.manager(), vm, argv, {
        ...(opts.name !== undefined ? { name: opts.name } : {}),
        ...(opts.op !== undefined ? { op: opts.op } : {}),
        rollbackOnFail: Boolean(opts.rollbackOnFail),
      });
      r.warnings.forEach(this.s.warner(opts.onWarning));
      r.notices.forEach(this.s.warner(opts.onWarning, 'NOTICE'));
      return { snapshot: r.snapshot, exit_code: r.exit_code, rolled_back: r.rolled_back };
    });
  }
}

function selection(sel: { name?: string; at?: string }): { name: string } | { at: string } {
  if (sel.name !== undefined && sel.at === undefined) return { name: sel.name };
  if (sel.at !== undefined && sel.name === undefined) return { at: sel.at };
  throw usageError('restore needs exactly one of --name or --at');
}
