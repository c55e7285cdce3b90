/**
 * `clonebox archive forget | gc | check` (docs/archive.md): parsing and rendering only. Registered on
 * the `archive` command by cli/commands/archive.ts, which hands over its repository options and key
 * handling so that every archive command takes them alike.
 */
import { type Command, InvalidArgumentError } from 'commander';
import { formatBytes, type Policy } from '../../src/index.js';
import { count, printJson, printLine } from '../output.js';
import type { CliKey, KeyFlags } from '../passphrase.js';
import { action } from '../run.js';

type RepoFlags = KeyFlags & { repo?: string };

export interface ArchiveCliParts {
  repoOptions(c: Command): Command;
  withKey<T>(o: RepoFlags, use: 'encrypt' | 'decrypt', fn: (k: CliKey['opts'] & { repo?: string }) => Promise<T>): Promise<T>;
}

function countOpt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} takes a whole number of at least 1, got ${JSON.stringify(v)}`);
    return n;
  };
}

const DELETE_KEY_HELP = 'the delete key file of an append-only repository (made at `archive init --append-only`)';

export function registerArchiveOps(archive: Command, parts: ArchiveCliParts): void {
  parts
    .repoOptions(
      archive
        .command('forget')
        .argument('<vm>', 'the archived VM (see `clonebox archive list`)')
        .description("forget a VM's archived snapshots that no rule keeps (the rules of `snapshot policy`); `archive gc` then frees their blocks"),
    )
    .option('--keep-last <n>', 'keep the N newest', countOpt('--keep-last'))
    .option('--keep-hourly <n>', 'newest per hour, for N hours', countOpt('--keep-hourly'))
    .option('--keep-daily <n>', 'newest per day, for N days', countOpt('--keep-daily'))
    .option('--keep-weekly <n>', 'newest per week, for N weeks', countOpt('--keep-weekly'))
    .option('--keep-monthly <n>', 'newest per month, for N months', countOpt('--keep-monthly'))
    .option('--keep-yearly <n>', 'newest per year, for N years', countOpt('--keep-yearly'))
    .option('--keep-within <duration>', 'all within DURATION of the newest (e.g. 7d, 1y2m)')
    .option('--keep-for <duration>', 'all younger than DURATION (e.g. 30d)')
    .option('--max-snapshots <n>', 'at most N snapshots', countOpt('--max-snapshots'))
    .option('--max-size <size>', 'their data at most SIZE')
    .option('--delete-key-file <file>', DELETE_KEY_HELP)
    .option('--dry-run', 'only show what would be forgotten')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: RepoFlags & Record<string, unknown>) => {
        const policy: Policy = {};
        const keys = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly', 'keepWithin', 'keepFor', 'maxSnapshots', 'maxSize'];
        for (const k of keys) if (o[k] !== undefined) (policy as Record<string, unknown>)[k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = o[k];
        const r = await parts.withKey(o, 'decrypt', (key) =>
          ctx.cb.archive.forget(vm, {
            ...key,
            policy,
            dryRun: Boolean(o.dryRun),
            ...(typeof o.deleteKeyFile === 'string' ? { deleteKeyFile: o.deleteKeyFile } : {}),
          }),
        );
        if (ctx.json) return printJson(r);
        for (const k of r.keep) printLine(`keep    ${k.name}  (${k.reasons.join(', ')})`);
        for (const x of r.remove) printLine(`${r.dry_run ? 'would forget' : 'forgot'} ${x.name}  (${x.reason})`);
        if (!r.dry_run && r.remove.length > 0) printLine(`  run \`clonebox archive gc\` to free the blocks only they held`);
      }),
    );

  parts
    .repoOptions(archive.command('gc').description('remove the blocks, packs and layer maps no archived snapshot needs'))
    .option('--delete-key-file <file>', DELETE_KEY_HELP)
    .option('--dry-run', 'only count what would be removed')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: RepoFlags & { dryRun?: boolean; deleteKeyFile?: string }) => {
        const r = await parts.withKey(o, 'decrypt', (key) =>
          ctx.cb.archive.gc({ ...key, dryRun: Boolean(o.dryRun), ...(o.deleteKeyFile !== undefined ? { deleteKeyFile: o.deleteKeyFile } : {}) }),
        );
        if (ctx.json) return printJson(r);
        const verb = r.dry_run ? 'would remove' : 'removed';
        printLine(
          `${verb} ${count(r.blocks_removed, 'block')} (${count(r.packs_removed, 'pack')} whole, ${count(r.packs_rewritten, 'pack')} rewritten), ${count(r.layers_removed, 'layer map')}; kept ${count(r.blocks_kept, 'block')} of ${count(r.layers_kept, 'layer')}`,
        );
        if (!r.dry_run) printLine(`  repository: ${formatBytes(r.bytes_before)} -> ${formatBytes(r.bytes_after)} in ${r.seconds.toFixed(1)} s`);
      }),
    );

  parts
    .repoOptions(archive.command('check').description('check that every record, layer map, index file and pack is whole and consistent'))
    .option('--read-data', 'also read every block and verify it against its id')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: RepoFlags & { readData?: boolean }) => {
        const r = await parts.withKey(o, 'decrypt', (key) => ctx.cb.archive.check({ ...key, readData: Boolean(o.readData) }));
        if (!r.ok) process.exitCode = 1;
        if (ctx.json) return printJson(r);
        for (const e of r.errors) process.stderr.write(`clonebox: damaged: ${e.message.includes(e.file) ? e.message : `${e.file}: ${e.message}`}\n`);
        for (const n of r.notes) printLine(`note: ${n.file}: ${n.message}`);
        printLine(
          `${r.ok ? 'ok' : `${count(r.errors.length, 'problem')} found`}: ${count(r.records, 'record')}, ${count(r.snapshots, 'snapshot')}, ${count(r.layers, 'layer')}, ${count(r.index_files, 'index file')}, ${count(r.packs, 'pack')} of ${count(r.blocks, 'block')}` +
            (r.read_data ? `; read and verified ${count(r.blocks_read, 'block')} (${formatBytes(r.bytes_read)})` : ''),
        );
      }),
    );
}
