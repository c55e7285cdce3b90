/**
 * `cb.sync`: share a VM's chain with a team, and run a sync that serves shared chains and pulls
 * teammates' (the work is in src/sync/). Aborting a run stops a pull before it registers anything:
 * blocks received stay in the spool for the next run, and its temporaries are removed.
 */
import { CloneboxError } from '../errors.js';
import { checkName } from '../names.js';
import type { Session } from './session.js';
import type { ShareOptions, ShareResult, SyncResult, SyncRunOptions, UnshareResult } from './types.js';

export class Sync {
  constructor(private readonly s: Session) {}

  /** Publishes the VM's snapshots (and, without `name`, its later ones) to the team. */
  share(vm: string, opts: ShareOptions): Promise<ShareResult> {
    return this.s.run(async () => {
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
      };
    });
  }
}
