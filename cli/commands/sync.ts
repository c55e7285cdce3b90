/**
 * Team sync of snapshot chains on the command line: `snapshot share|unshare|sync`. Parsing and
 * rendering only; the work is in the library's sync namespace (Hyperswarm and Hypercore load when a
 * sync runs).
 */
import { type Command, InvalidArgumentError } from 'commander';
import { formatBytes, type SyncProgressEvent, type SyncResult, type Warning } from '../../src/index.js';
import { interruptible } from '../interrupt.js';
import { count, printJson, printLine, printWarning, table } from '../output.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function secondsOpt(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`--timeout takes a positive number of seconds, got ${JSON.stringify(v)}`);
  return n;
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

/** The progress line of a chain being pulled, as the terminal shows it. */
function progressText(p: SyncProgressEvent, team: string): string {
  if (p.phase === 'wait') return `waiting for a teammate of team ${team} to come online (${p.done}/${p.total ?? '?'} s; Ctrl-C to stop)`;
  if (p.phase === 'receive') return `pull ${p.chain}: received ${mib(p.done)}`;
  if (p.phase === 'write') return `pull ${p.chain}: writing ${p.snapshot} ${(p.done / 1048576).toFixed(1)}/${((p.total ?? 0) / 1048576).toFixed(1)} MiB`;
  return `pull ${p.chain}: ${p.done} snapshot(s) into VM ${p.vm}, ${p.blocks_fetched} blocks fetched, ${p.blocks_reused} reused`;
}

/** Registers `share`, `unshare` and `sync` under the `snapshot` command. */
export function registerSync(snapshot: Command): void {
  snapshot
    .command('share')
    .argument('<vm>')
    .description("publish a VM's snapshots (and its later ones) to a team")
    .requiredOption('--team <team>', 'the team to share with')
    .option('--name <snapshot>', 'share only the snapshots from the root to this one')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: { team: string; name?: string }) => {
        const r = await ctx.cb.sync.share(vm, { team: o.team, ...(o.name !== undefined ? { name: o.name } : {}) });
        if (ctx.json) return printJson(r);
        printLine(`sharing ${vm} with team ${o.team}${o.name ? ` (up to ${o.name})` : ' (and its later snapshots)'}`);
        if (r.published === null) printLine('a running sync publishes it');
        else printLine(`published: ${r.published.length ? r.published.join(', ') : '(no snapshots yet)'}; teammates get it on their next sync`);
      }),
    );

  snapshot
    .command('unshare')
    .argument('<vm>')
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
    .option('--bootstrap <host:port>', "DHT bootstrap node, repeatable (default: the team's setting, else the public DHT)", collect)
    .option('--watch', 'keep serving and pulling until interrupted')
    .option('--timeout <seconds>', 'give up after this long (default 300; without a teammate online, 60)', secondsOpt)
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: { team: string; bootstrap?: string[]; watch?: boolean; timeout?: number }) => {
        const tty = Boolean(process.stderr.isTTY) && !ctx.json;
        let open = false;
        const onWarning = (w: Warning) => {
          if (open) process.stderr.write('\n');
          open = false;
          printWarning(w);
        };
        const onProgress = (p: SyncProgressEvent) => {
          const final = p.phase === 'pulled';
          process.stderr.write(`\r\x1b[K${progressText(p, o.team)}${final ? '\n' : ''}`);
          open = !final;
        };
        const trace = process.env.CLONEBOX_SYNC_TRACE === '1';
        let report: SyncResult;
        try {
          // --watch ends normally on SIGINT/SIGTERM; a run without it is aborted (nothing half-pulled stays).
          report = await interruptible((signal) =>
            ctx.cb.sync.run({
              team: o.team,
              ...(o.bootstrap ? { bootstrap: o.bootstrap } : {}),
              ...(o.timeout !== undefined ? { timeout: o.timeout } : {}),
              watch: Boolean(o.watch),
              signal,
              onWarning,
              ...(tty ? { onProgress } : {}),
              ...(trace ? { onTrace: (ms: number, what: string) => process.stderr.write(`clonebox-trace ${ms} ms: ${what}\n`) } : {}),
            }),
          );
        } finally {
          if (open) process.stderr.write('\n');
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
        // In the unit that fits (not `0.0 MiB` for a few KiB, issue 17).
        printLine(`received ${formatBytes(report.bytes_received)}`);
      }),
    );
}
