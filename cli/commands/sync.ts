/**
 * Team sync of snapshot chains on the command line: `snapshot share|unshare|sync`. Parsing and
 * rendering only; the work is in src/sync/ (share.ts, pull.ts, sync.ts). Hyperswarm and Hypercore load
 * inside the actions.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { printJson, printLine, table, warn } from '../output.js';
import { action } from '../run.js';
import { checkName } from '../../src/names.js';
import { CloneboxError } from '../../src/errors.js';

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

/** Registers `share`, `unshare` and `sync` under the `snapshot` command. */
export function registerSync(snapshot: Command): void {
  snapshot.command('share').argument('<vm>').description('publish a VM\'s snapshots (and its later ones) to a team')
    .requiredOption('--team <team>', 'the team to share with')
    .option('--name <snapshot>', 'share only the snapshots from the root to this one')
    .option('--json', 'print JSON')
    .action(action(async (ctx, vm: string, o: { team: string; name?: string }) => {
      checkName('VM', vm);
      checkName('team', o.team);
      if (o.name !== undefined) checkName('snapshot', o.name);
      const { shareVm } = await import('../../src/sync/share.js');
      const r = await shareVm(ctx.home, o.team, vm, o.name ?? null, (l) => warn(l));
      if (ctx.json) return printJson(r);
      printLine(`sharing ${vm} with team ${o.team}${o.name ? ` (up to ${o.name})` : ' (and its later snapshots)'}`);
      if (r.published === null) printLine('a running sync publishes it');
      else printLine(`published: ${r.published.length ? r.published.join(', ') : '(no snapshots yet)'}; teammates get it on their next sync`);
    }));

  snapshot.command('unshare').argument('<vm>').description('stop sharing a VM with a team (teammates keep what they pulled)')
    .requiredOption('--team <team>', 'the team')
    .option('--json', 'print JSON')
    .action(action(async (ctx, vm: string, o: { team: string }) => {
      checkName('VM', vm);
      checkName('team', o.team);
      const { unshareVm } = await import('../../src/sync/share.js');
      const r = await unshareVm(ctx.home, o.team, vm);
      if (ctx.json) return printJson(r);
      printLine(r.was_shared ? `stopped sharing ${vm} with team ${o.team}` : `${vm} was not shared with team ${o.team}`);
    }));

  snapshot.command('sync').description('serve shared chains and pull teammates\' chains (exits when caught up)')
    .requiredOption('--team <team>', 'the team')
    .option('--bootstrap <host:port>', 'DHT bootstrap node, repeatable (default: the team\'s setting, else the public DHT)', collect)
    .option('--watch', 'keep serving and pulling until interrupted')
    .option('--timeout <seconds>', 'give up after this long (default 300)', secondsOpt)
    .option('--json', 'print JSON')
    .action(action(async (ctx, o: { team: string; bootstrap?: string[]; watch?: boolean; timeout?: number }) => {
      checkName('team', o.team);
      const { parseHostPort } = await import('../../src/sync/hostport.js');
      const bootstrap = o.bootstrap?.map((b) => parseHostPort(b));
      const { runSync, DEFAULT_TIMEOUT_S } = await import('../../src/sync/sync.js');
      const tty = Boolean(process.stderr.isTTY) && !ctx.json;
      let open = false;
      const progress = tty
        ? (line: string, final: boolean) => {
          process.stderr.write(`\r\x1b[K${line}${final ? '\n' : ''}`);
          open = !final;
        }
        : undefined;
      const controller = new AbortController();
      const stop = () => controller.abort();
      if (o.watch) {
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      }
      let report: Awaited<ReturnType<typeof runSync>>;
      try {
        report = await runSync({
          home: ctx.home, team: o.team, ...(bootstrap ? { bootstrap } : {}), timeoutSeconds: o.timeout ?? DEFAULT_TIMEOUT_S,
          watch: Boolean(o.watch), signal: controller.signal,
          log: (l) => {
            if (open) process.stderr.write('\n');
            open = false;
            process.stderr.write(`clonebox: ${l}\n`);
          },
          ...(progress ? { progress } : {}),
        });
      } finally {
        if (open) process.stderr.write('\n');
        process.removeListener('SIGINT', stop);
        process.removeListener('SIGTERM', stop);
      }
      if (report.errors.length) {
        const first = report.errors[0]!;
        throw new CloneboxError(first.code, report.errors.length === 1 ? first.message : `${report.errors.length} chains failed; first: ${first.message}`);
      }
      if (ctx.json) {
        return printJson({
          peers: report.peers,
          chains: report.chains.map((c) => ({ vm: c.vm, snapshots: c.snapshots, blocks_fetched: c.blocks_fetched, blocks_reused: c.blocks_reused, bytes_received: c.bytes_received, peer: c.peer, remote_vm: c.remote_vm, ...(c.via ? { via: c.via } : {}), ...(c.unavailable ? { unavailable: c.unavailable } : {}) })),
          bytes_received: report.bytes_received,
          shared: report.shared,
        });
      }
      printLine(`peers: ${report.peers.length ? report.peers.join(', ') : 'none online'}`);
      if (report.shared.length) printLine(`sharing: ${report.shared.map((s) => `${s.vm} (${s.snapshots.length} snapshots)`).join(', ')}`);
      if (report.chains.length) {
        printLine(table(['VM', 'FROM', 'NEW SNAPSHOTS', 'FETCHED', 'REUSED', 'RECEIVED'], report.chains.map((c) => [
          c.vm, `${c.peer}:${c.remote_vm}${c.via ? ` (via ${c.via})` : ''}`, String(c.snapshots.length), String(c.blocks_fetched), String(c.blocks_reused), mib(c.bytes_received),
        ]), [false, false, true, true, true, true]));
      }
      printLine(`received ${mib(report.bytes_received)}`);
    }));
}
