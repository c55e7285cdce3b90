/**
 * `cb.sync`: share a VM's chain with a team, and run a sync that serves shared chains and pulls
 * teammates' (the work is in src/sync/). Aborting a run stops a pull before it registers anything:
 * blocks received stay in the spool for the next run, and its temporaries are removed.
 */
import { CloneboxError, usageError } from '../errors.js';
import { checkName } from '../names.js';
import type { Session } from './session.js';
import type { ShareGroupOptions, ShareGroupResult, ShareOptions, ShareResult, SyncResult, SyncRunOptions, UnshareResult } from './types.js';

export class Sync {
  constructor(private readonly s: Session) {}

  /** Publishes the VM's snapshots (and, without `name`, its later ones) to the team. */
  share(vm: string, opts: ShareOptions): Promise<ShareResult>;
  /**
   * With `group` (and a null VM): shares every member VM's whole chain and the group's snapshots; a
   * teammate registers a group snapshot only once every member's chain up to it is complete there.
   */
  share(vm: null, opts: ShareGroupOptions): Promise<ShareGroupResult>;
  share(vm: string | null, opts: ShareOptions | ShareGroupOptions): Promise<ShareResult | ShareGroupResult> {
    return this.s.run(async () => {
      if ((vm === null) !== 'group' in opts) throw usageError('name either a VM or a group (`group`), not both or neither');
      if (vm === null || 'group' in opts) {
        const o = opts as ShareGroupOptions;
        if ((opts as ShareOptions).name !== undefined) throw usageError('`name` is not available with `group`', 'a group is shared with whole chains');
        checkName('team', o.team);
        const { shareGroup } = await import('../sync/share.js');
        return shareGroup(this.s.home, o.team, o.group, this.s.warner(o.onWarning));
      }
      checkName('VM', vm);
      checkName('team', opts.team);
      if (opts.name !== undefined) checkName('snapshot', opts.name);
      const { shareVm } = await import('../sync/share.js');
      return shareVm(this.s.home, opts.team, vm, opts.name ?? null, this.s.warner(opts.onWarning));
    });
  }

  /** Stops sharing (teammates keep what they pulled). */
  unshare(vm: string, opts: { team: string }): Promise<UnshareResult> {
    return this.s.run(async () => {
      checkName('VM', vm);
      checkName('team', opts.team);
      const { unshareVm } = await import('../sync/share.js');
      return unshareVm(this.s.home, opts.team, vm);
    });
  }

  /**
   * Joins the team's swarm, serves shared chains and pulls teammates' until caught up (watch: until the
   * signal aborts). Rejects when a chain failed (with that chain's code) and with ABORTED when aborted.
   */
  run(opts: SyncRunOptions): Promise<SyncResult> {
    return this.s.run(async () => {
      checkName('team', opts.team);
      const { parseHostPort } = await import('../sync/hostport.js');
      const bootstrap = opts.bootstrap?.map((b) => parseHostPort(b));
      const { runSync } = await import('../sync/sync.js');
      const { setTraceSink } = await import('../sync/trace.js');
      const prevTrace = opts.onTrace ? setTraceSink(opts.onTrace) : null;
      let report: Awaited<ReturnType<typeof runSync>>;
      try {
        report = await runSync({
          home: this.s.home,
          team: opts.team,
          ...(bootstrap ? { bootstrap } : {}),
          timeoutSeconds: opts.timeout,
          watch: Boolean(opts.watch),
          signal: this.s.signal(opts.signal),
          log: this.s.warner(opts.onWarning, 'NOTICE'),
          ...(opts.onProgress ? { progress: opts.onProgress } : {}),
          maxWrite: opts.maxWrite,
          maxVirtualSize: opts.maxVirtualSize,
        });
      } finally {
        if (opts.onTrace) setTraceSink(prevTrace);
      }
      if (report.errors.length) {
        const first = report.errors[0]!;
        throw new CloneboxError(first.code, report.errors.length === 1 ? first.message : `${report.errors.length} chains failed; first: ${first.message}`);
      }
      return {
        peers: report.peers,
        chains: report.chains.map((c) => ({
          vm: c.vm,
          snapshots: c.snapshots,
          blocks_fetched: c.blocks_fetched,
          blocks_reused: c.blocks_reused,
          bytes_received: c.bytes_received,
          peer: c.peer,
          remote_vm: c.remote_vm,
          ...(c.via ? { via: c.via } : {}),
          ...(c.unavailable ? { unavailable: c.unavailable } : {}),
        })),
        bytes_received: report.bytes_received,
        shared: report.shared,
        groups: report.groups,
      };
    });
  }
}
