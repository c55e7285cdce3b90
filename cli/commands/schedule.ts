import path from 'node:path';
import type { Command } from 'commander';
import { printJson, printLine, table } from '../output.js';
import { action } from '../run.js';

function when(iso: string | null): string {
  if (iso === null) return '-';
  const d = new Date(iso);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

export function registerSchedule(program: Command): void {
  const schedule = program.command('schedule').description("run the named policies' schedules (from cron or a systemd timer)");
  schedule
    .command('run')
    .description('take every snapshot that is due on every VM (at most one per policy), apply retention, exit')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const r = await ctx.cb.schedule.runDue();
        if (ctx.json) return printJson(r);
        for (const t of r.taken) printLine(`took ${t.snapshot} of ${t.vm} (policy ${t.policy})`);
        for (const p of r.pruned) printLine(`removed ${p.snapshot} of ${p.vm} (${p.reason})`);
        if (r.failed.length) process.exitCode = 1;
      }),
    );
  schedule
    .command('list')
    .description("each named policy's last and next run")
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const list = await ctx.cb.schedule.list();
        if (ctx.json) return printJson(list);
        if (list.length === 0) return printLine('no named policies (see `clonebox apply` and docs/policies.md)');
        printLine(
          table(
            ['VM', 'POLICY', 'WHEN', 'LAST RUN', 'NEXT RUN'],
            list.map((e) => [
              e.group !== undefined ? `${e.group} (group)` : e.vm,
              e.policy,
              e.when.length ? `${e.when.join('; ')}${e.timezone ? ` (${e.timezone})` : ''}` : '(not scheduled)',
              when(e.last_run),
              e.due ? 'due now' : when(e.next_run),
            ]),
          ),
        );
      }),
    );
  schedule
    .command('install')
    .description('print a systemd user service and timer that run `schedule run` every minute (--write installs them)')
    .option('--write', 'write them to ~/.config/systemd/user (or --dir)')
    .option('--dir <dir>', 'directory to write the units to')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: { write?: boolean; dir?: string }) => {
        // This very clonebox: the node binary and the launcher it was started with.
        const self = process.argv[1] ? [process.execPath, path.resolve(process.argv[1])] : ['clonebox'];
        const r = await ctx.cb.schedule.install({ command: self, write: Boolean(o.write || o.dir), ...(o.dir ? { dir: o.dir } : {}) });
        if (ctx.json) return printJson(r);
        if (!r.written) {
          printLine(`# ${r.service.name}\n${r.service.text}`);
          printLine(`# ${r.timer.name}\n${r.timer.text}`);
          return printLine('# install with: clonebox schedule install --write');
        }
        printLine(`wrote ${r.written.join(' and ')}`);
        printLine(`enable with: systemctl --user daemon-reload && systemctl --user enable --now ${r.timer.name}`);
      }),
    );
}
