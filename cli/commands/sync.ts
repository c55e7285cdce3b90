/**
 * Team sync of snapshot chains on the command line: `snapshot share|unshare|sync`. Parsing and
 * rendering only; the work is in the library's sync namespace (Hyperswarm and Hypercore load when a
 * sync runs).
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { formatBytes, parseSize, type SyncProgressEvent, type SyncResult, type Warning } from '../../src/index.js';
import { interruptible } from '../interrupt.js';
import { count, note, printJson, printLine, printWarning, table, usage, verbosity } from '../output.js';
import { progressFor } from '../progress.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function secondsOpt(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`--timeout takes a positive number of seconds, got ${JSON.stringify(v)}`);
  return n;
}

/** The line a chain leaves on the terminal once pulled. */
function pulledText(p: SyncProgressEvent): string {
  return `pulled ${p.chain}: ${count(p.done, 'snapshot')} into VM ${p.vm}, ${count(p.blocks_fetched ?? 0, 'block')} fetched, ${p.blocks_reused} reused`;
}

/** Registers `share`, `unshare` and `sync` under the `snapshot` command. */
export function registerSync(snapshot: Command): void {
  snapshot
    .command('share')
    .argument('[vm]', 'the VM (see `clonebox vm list`); not with --group')
    .description("publish a VM's snapshots (and its later ones) to a team; --group: a VM group's")
    .requiredOption('--team <team>', 'the team to share with')
    .option('--name <snapshot>', 'share only the snapshots from the root to this one')
    .option('--group <group>', "share a VM group: every member's chain and the group snapshots (instead of a VM)")
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string | undefined, o: { team: string; name?: string; group?: string }) => {
        // Teammates pull only from a workstation that is online: share publishes, sync serves.
        const serve = `teammates get it while this workstation (or a teammate who pulled it) runs \`clonebox snapshot sync --team ${o.team}\``;
        const busy = `the running \`snapshot sync --watch\` publishes it within a few seconds; ${serve}`;
        if (o.group !== undefined) {
          if (vm !== undefined)
            throw usage(`--group and a VM exclude each other (${vm})`, `\`clonebox snapshot share --group ${o.group}\` shares every member`);
          if (o.name !== undefined) throw usage('--name is not available with --group', 'a group is shared with whole chains');
          const r = await ctx.cb.sync.share(null, { team: o.team, group: o.group });
          if (ctx.json) return printJson(r);
          printLine(`sharing group ${o.group} with team ${o.team}: ${r.vms.join(', ')} (and their later snapshots)`);
          if (r.published === null) printLine(busy);
          else printLine(`group snapshots published: ${r.published.length ? r.published.join(', ') : '(none yet)'}; ${serve}`);
          return;
        }
        if (vm === undefined) throw usage("missing required argument 'vm'", 'see `clonebox snapshot share --help`');
        const r = await ctx.cb.sync.share(vm, { team: o.team, ...(o.name !== undefined ? { name: o.name } : {}) });
        if (ctx.json) return printJson(r);
        printLine(`sharing ${vm} with team ${o.team}${o.name ? ` (up to ${o.name})` : ' (and its later snapshots)'}`);
        if (r.published === null) printLine(busy);
        else printLine(`published: ${r.published.length ? r.published.join(', ') : '(no snapshots yet)'}; ${serve}`);
      }),
    );

  snapshot
    .command('unshare')
    .argument('<vm>', 'the VM (see `clonebox vm list`)')
    .description('stop sharing a VM with a team (teammates keep what they pulled)')
    .requiredOption('--team <team>', 'the team')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: { team: string }) => {
        const r = await ctx.cb.sync.unshare(vm, { team: o.team });
        if (ctx.json) return printJson(r);
        printLine(r.was_shared ? `stopped sharing ${vm} with team ${o.team}` : `${vm} was not shared with team ${o.team}`);
      }),
    );

  snapshot
    .command('sync')
    .description("serve shared chains and pull teammates' chains (exits when caught up)")
    .requiredOption('--team <team>', 'the team')
    .addOption(
      new Option('--bootstrap <host:port>', 'DHT bootstrap node, repeatable').default(undefined, "the team's setting, else the public DHT").argParser(collect),
    )
    .option('--watch', 'keep serving and pulling until interrupted')
    .addOption(
      new Option('--timeout <seconds>', 'give up after this long (with no teammate online at all, after 60 s)').default(undefined, '300').argParser(secondsOpt),
    )
    .option('--max-write <size>', "refuse a teammate's chain once pulling it would write more than SIZE (free space is always checked)")
    .option('--max-virtual-size <size>', 'refuse a chain with a disk larger than SIZE (default: 16T)')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: { team: string; bootstrap?: string[]; watch?: boolean; timeout?: number; maxWrite?: string; maxVirtualSize?: string }) => {
        const maxWrite = o.maxWrite !== undefined ? parseSize(o.maxWrite, '--max-write') : undefined;
        const maxVirtualSize = o.maxVirtualSize !== undefined ? parseSize(o.maxVirtualSize, '--max-virtual-size') : undefined;
        // On a terminal one line shows what the sync waits for, then each chain's progress (4 Hz).
        const bar = progressFor('sync', ctx.json);
        bar?.status(`sync: joining team ${o.team} and looking for teammates online...`);
        const onWarning = (w: Warning) => {
          bar?.finish();
          printWarning(w);
        };
        const onProgress = (p: SyncProgressEvent) => {
          if (!bar) return;
          if (p.phase === 'pulled') {
            bar.finish();
            note(pulledText(p));
          } else if (p.phase === 'wait') {
            bar.status(`waiting for a teammate of team ${o.team} to come online (${p.done}/${p.total ?? '?'} s; Ctrl-C to stop)`);
          } else if (p.phase === 'receive') {
            bar.show(`pull ${p.chain}: received`, p.done, null);
          } else {
            bar.show(`pull ${p.chain}: writing ${p.snapshot}`, p.done, p.total);
          }
        };
        const trace = process.env.CLONEBOX_SYNC_TRACE === '1' || verbosity.verbose;
        let report: SyncResult;
        try {
          // --watch ends normally on SIGINT/SIGTERM; a run without it is aborted (nothing half-pulled stays).
          report = await interruptible((signal) =>
            ctx.cb.sync.run({
              team: o.team,
              ...(o.bootstrap ? { bootstrap: o.bootstrap } : {}),
              ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
              watch: Boolean(o.watch),
              ...(maxWrite !== undefined ? { maxWrite } : {}),
              ...(maxVirtualSize !== undefined ? { maxVirtualSize } : {}),
              signal,
              onWarning,
              ...(bar ? { onProgress } : {}),
              ...(trace ? { onTrace: (ms: number, what: string) => process.stderr.write(`clonebox-trace ${ms} ms: ${what}\n`) } : {}),
            }),
          );
        } finally {
          bar?.finish();
        }
        if (ctx.json) return printJson(report);
        printLine(`peers: ${report.peers.length ? report.peers.join(', ') : 'none online'}`);
        if (report.shared.length) printLine(`sharing: ${report.shared.map((s) => `${s.vm} (${count(s.snapshots.length, 'snapshot')})`).join(', ')}`);
        if (report.chains.length) {
          printLine(
            table(
              ['VM', 'FROM', 'NEW SNAPSHOTS', 'FETCHED', 'REUSED', 'RECEIVED'],
              report.chains.map((c) => [
                c.vm,
                `${c.peer}:${c.remote_vm}${c.via ? ` (via ${c.via})` : ''}`,
                String(c.snapshots.length),
                String(c.blocks_fetched),
                String(c.blocks_reused),
                formatBytes(c.bytes_received),
              ]),
              [false, false, true, true, true, true],
            ),
          );
        }
        if (report.chains.some((c) => c.snapshots.length === 0)) {
          printLine(
            '(0 new snapshots: that chain is up to date here; snapshots its sharer made since appear once its running sync republishes them, within seconds)',
          );
        }
        for (const g of report.groups) {
          if (g.registered.length) printLine(`group ${g.group} from ${g.peer}: registered ${g.registered.join(', ')}`);
          for (const w of g.waiting) printLine(`group ${g.group} from ${g.peer}: ${w.snapshot} waits for ${w.missing.join(', ')}`);
        }
        printLine(`received ${formatBytes(report.bytes_received)}`);
      }),
    );
}
