/**
 * Bundles on the command line: `snapshot export|import|verify|inspect` and `key generate`. Parsing
 * and rendering only; the work is in the library's bundles and keys namespaces.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { CloneboxError, formatBytes, type ProgressCallback, parseSize } from '../../src/index.js';
import { interruptible } from '../interrupt.js';
import { count, printJson, printLine, table } from '../output.js';
import { type CliKey, type KeyFlags, keyOptions } from '../passphrase.js';
import { progressFor } from '../progress.js';
import { action } from '../run.js';

type KeyOpts = KeyFlags;

function levelOpt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 19) throw new InvalidArgumentError(`--level takes a whole number from 1 to 19, got ${JSON.stringify(v)}`);
  return n;
}

/** Runs `fn` with the key options the flags, the environment or a prompt give, wiping what was read after. */
async function withKey<T>(o: KeyOpts, use: 'encrypt' | 'decrypt' | 'none', stdinTaken: boolean, fn: (k: CliKey['opts']) => Promise<T>): Promise<T> {
  const k = await keyOptions(o, use, stdinTaken);
  try {
    return await fn(k.opts);
  } finally {
    k.wipe();
  }
}

const PASSPHRASE_HELP = 'passphrase file (Argon2id-derived key); - reads stdin. Also: CLONEBOX_PASSPHRASE, _FILE, _COMMAND, or a prompt';

function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

/** Runs a long bundle operation with SIGINT wired to its signal and the progress line drawn on a terminal. */
async function long<T>(label: string, json: boolean, fn: (o: { signal: AbortSignal; onProgress?: ProgressCallback }) => Promise<T>): Promise<T> {
  const bar = progressFor(label, json);
  try {
    return await interruptible((signal) => fn({ signal, ...(bar ? { onProgress: bar.update } : {}) }));
  } finally {
    bar?.finish();
  }
}

/** Registers the bundle commands: four under `snapshot`, and `key generate` on the program. */
export function registerBundle(snapshot: Command, program: Command): void {
  snapshot
    .command('export')
    .argument('[vm]', 'the VM (see `clonebox vm list`); none with --group')
    .description('write snapshots (root..N) as one deduplicated, compressed tar bundle')
    .addOption(new Option('--name <snapshot>', 'last snapshot to include (with --group: the last group snapshot)').default(undefined, 'the current one'))
    .addOption(new Option('--group <group>', 'export every member of a VM group up to a group snapshot, blocks deduplicated across the VMs'))
    .option('--since <snapshot>', 'include only the snapshots after this base (the importing VM must hold it)')
    .requiredOption('-o, --output <file>', 'bundle file, or - for stdout (then --json goes to stderr)')
    .option('--encrypt', 'encrypt blocks and metadata (needs --passphrase-file or --key-file)')
    .option('--passphrase-file <file>', PASSPHRASE_HELP)
    .option('--key-file <file>', '32-byte key file (see `clonebox key generate`)')
    .option('--allow-insecure-key-file', 'accept a key file that others can read')
    .option('--level <n>', 'zstd level, 1-19', levelOpt, 3)
    .option('--force', 'replace an existing bundle file (never a disk, a layer or a file in the home)')
    .option('--json', 'print JSON')
    .action(
      action(
        async (
          ctx,
          vm: string | undefined,
          o: KeyOpts & { name?: string; since?: string; group?: string; output: string; encrypt?: boolean; level: number; force?: boolean },
        ) => {
          const toStdout = o.output === '-';
          const r = await withKey(o, o.encrypt ? 'encrypt' : 'none', false, (key) =>
            long('export', ctx.json, (lo) =>
              ctx.cb.bundles.export(vm ?? null, {
                ...key,
                ...(o.group !== undefined ? { group: o.group } : {}),
                ...(o.name !== undefined ? { name: o.name } : {}),
                ...(o.since !== undefined ? { since: o.since } : {}),
                output: toStdout ? process.stdout : o.output,
                encrypt: Boolean(o.encrypt),
                level: o.level,
                force: Boolean(o.force),
                ...lo,
              }),
            ),
          );
          if (ctx.json) {
            // stdout carries the bundle itself with -o -: the report goes to stderr then.
            if (toStdout) process.stderr.write(`${JSON.stringify(r, null, 2)}\n`);
            else printJson(r);
            return;
          }
          const say = (s: string) => (toStdout ? process.stderr.write(`${s}\n`) : printLine(s));
          const of = r.group ? `group ${r.group} (${r.chains.map((c) => `${c.vm}: ${c.snapshots.length}`).join(', ')})` : vm;
          say(
            `exported ${count(r.snapshots.length, 'snapshot')} of ${of}${r.since ? ` after ${r.since}` : ''} to ${toStdout ? 'standard output' : r.file}${r.encrypted ? ' (encrypted)' : ''}`,
          );
          say(
            `  data ${formatBytes(r.logical_bytes)} in ${count(r.blocks, 'block')}; unique ${formatBytes(r.unique_bytes)} in ${count(r.unique_blocks, 'block')} (dedup saved ${pct(r.logical_bytes - r.unique_bytes, r.logical_bytes)})`,
          );
          say(
            `  stored ${formatBytes(r.stored_bytes)} (compression saved ${pct(r.unique_bytes - r.stored_bytes, r.unique_bytes)}); bundle ${formatBytes(r.bundle_bytes)} in ${r.seconds.toFixed(1)} s`,
          );
        },
      ),
    );

  snapshot
    .command('import')
    // Not named `vm`: with --group it is the bundle file, which must not be read as a .clonebox.yaml (run.ts).
    .argument('<vm|file>', 'name of the VM to import into (new, or holding the base of a --since bundle); with --group: the bundle file')
    .argument('[file]', 'bundle file, or - for stdin')
    .description('rebuild the snapshots of a bundle as qcow2 layers, registered as VM <vm>')
    .addOption(new Option('--group <group>', 'import a group bundle: every member as a new VM under its own name, and the group as <group>; all or nothing'))
    .option('--passphrase-file <file>', PASSPHRASE_HELP)
    .option('--key-file <file>', 'key file of an encrypted bundle')
    .option('--allow-plain', 'accept a plain bundle although a key or passphrase was given')
    .option('--allow-insecure-key-file', 'accept a key file that others can read')
    .addOption(
      new Option('--dir <dir>', 'directory for the disks of a new VM (with --group: <dir>/<vm> for each member)').default(undefined, '<home>/disks/<vm>'),
    )
    .option('--max-write <size>', 'refuse once the import would write more than SIZE (free space is always checked)')
    .option('--max-virtual-size <size>', 'refuse a disk larger than SIZE (default: 16T)')
    .option('--json', 'print JSON')
    .action(
      action(
        async (ctx, first: string, second: string | undefined, o: KeyOpts & { group?: string; dir?: string; maxWrite?: string; maxVirtualSize?: string }) => {
          const maxWrite = o.maxWrite !== undefined ? parseSize(o.maxWrite, '--max-write') : undefined;
          const maxVirtualSize = o.maxVirtualSize !== undefined ? parseSize(o.maxVirtualSize, '--max-virtual-size') : undefined;
          if (o.group !== undefined) {
            if (second !== undefined) throw CloneboxError.USAGE('with --group, give only the bundle file (the members keep their own names)');
            const file = first;
            const g = await withKey(o, 'decrypt', file === '-', (key) =>
              long('import', ctx.json, (lo) =>
                ctx.cb.bundles.import(null, file === '-' ? process.stdin : file, {
                  ...key,
                  group: o.group!,
                  ...(o.dir !== undefined ? { dir: o.dir } : {}),
                  ...(maxWrite !== undefined ? { maxWrite } : {}),
                  ...(maxVirtualSize !== undefined ? { maxVirtualSize } : {}),
                  ...lo,
                }),
              ),
            );
            if (ctx.json) return printJson(g);
            printLine(`imported group ${g.group}: ${g.members.map((m) => `${m.vm} (${count(m.snapshots.length, 'snapshot')})`).join(', ')}`);
            printLine(`  wrote ${formatBytes(g.bytes_written)} in ${g.seconds.toFixed(1)} s`);
            return;
          }
          if (second === undefined) throw CloneboxError.USAGE('name the VM to import into and the bundle file', { hint: 'clonebox snapshot import VM FILE' });
          const vm = first;
          const file = second;
          const r = await withKey(o, 'decrypt', file === '-', (key) =>
            long('import', ctx.json, (lo) =>
              ctx.cb.bundles.import(vm, file === '-' ? process.stdin : file, {
                ...key,
                ...(o.dir !== undefined ? { dir: o.dir } : {}),
                ...(maxWrite !== undefined ? { maxWrite } : {}),
                ...(maxVirtualSize !== undefined ? { maxVirtualSize } : {}),
                ...lo,
              }),
            ),
          );
          if (ctx.json) return printJson(r);
          printLine(`imported ${count(r.snapshots.length, 'snapshot')} into VM ${r.vm}${r.base ? ` on top of ${r.base}` : ''}: ${r.snapshots.join(', ')}`);
          printLine(`  wrote ${formatBytes(r.bytes_written)} in ${r.seconds.toFixed(1)} s; current snapshot: ${r.current ?? '(none)'}`);
          if (r.base && r.current !== r.snapshots[r.snapshots.length - 1]) {
            printLine(
              `  the VM's current state was left as it was; \`clonebox snapshot restore ${vm} --name ${r.snapshots[r.snapshots.length - 1]}\` switches to the imported one`,
            );
          }
        },
      ),
    );

  snapshot
    .command('verify')
    .argument('<file>', 'bundle file, or - for stdin')
    .description('read a whole bundle and check every block, map and seal (writes nothing)')
    .option('--passphrase-file <file>', PASSPHRASE_HELP)
    .option('--key-file <file>', 'key file of an encrypted bundle')
    .option('--allow-plain', 'accept a plain bundle although a key or passphrase was given')
    .option('--allow-insecure-key-file', 'accept a key file that others can read')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string, o: KeyOpts) => {
        const r = await withKey(o, 'decrypt', file === '-', (key) =>
          long('verify', ctx.json, (lo) => ctx.cb.bundles.verify(file === '-' ? process.stdin : file, { ...key, ...lo })),
        );
        if (!r.ok) process.exitCode = 1;
        // Problems found are the result, not an exception: each also gets the contract's error line.
        for (const e of r.errors) process.stderr.write(`clonebox: error: ${e.message}\n`);
        if (ctx.json) return printJson(r);
        if (r.ok) {
          printLine(
            `ok: ${count(r.snapshots.length, 'snapshot')}, ${count(r.blocks_checked, 'block')} checked in ${count(r.packs, 'pack')}${r.encrypted ? ' (encrypted)' : ''}`,
          );
          return;
        }
      }),
    );

  snapshot
    .command('inspect')
    .argument('<file>', 'bundle file')
    .description('show what a bundle holds: snapshots, sizes, dedup and compression savings')
    .option('--passphrase-file <file>', PASSPHRASE_HELP)
    .option('--key-file <file>', 'key file of an encrypted bundle')
    .option('--allow-plain', 'accept a plain bundle although a key or passphrase was given')
    .option('--allow-insecure-key-file', 'accept a key file that others can read')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string, o: KeyOpts) => {
        const r = await withKey(o, 'decrypt', file === '-', (key) => ctx.cb.bundles.inspect(file === '-' ? process.stdin : file, key));
        if (ctx.json) return printJson(r);
        printLine(`bundle: ${r.file} (format ${r.format_version}${r.bundle_bytes !== null ? `, ${formatBytes(r.bundle_bytes)}` : ''})`);
        printLine(`encrypted: ${r.encrypted ? `yes (${r.key})` : 'no: nothing in it is authenticated, anyone could have written or changed it'}`);
        if (!r.readable) {
          printLine('contents: encrypted; pass --passphrase-file or --key-file to see them');
          return;
        }
        printLine('claims:    the sizes and content ids below are what the bundle says; `clonebox snapshot verify` checks them');
        if (r.group) {
          printLine(`group: ${r.group.name} (VMs ${r.group.members.join(', ')}), exported ${r.created_at}`);
          printLine(`group snapshots: ${r.group.snapshots.map((g) => g.name).join(', ') || '(none)'}`);
        } else {
          printLine(`VM: ${r.vm}, exported ${r.created_at}${r.since ? `, snapshots after ${r.since.name} (${r.since.content_id.slice(0, 12)})` : ''}`);
        }
        printLine('');
        const vmCol = r.group !== null;
        printLine(
          table(
            [...(vmCol ? ['VM'] : []), 'SNAPSHOT', 'PARENT', 'CREATED', 'DATA', 'ZERO', 'DESCRIPTION'],
            r.snapshots.map((s) => [
              ...(vmCol ? [s.vm] : []),
              s.name,
              s.parent ?? '-',
              s.created_at,
              formatBytes(s.data_bytes),
              formatBytes(s.zero_bytes),
              s.description ?? '',
            ]),
            [...(vmCol ? [false] : []), false, false, false, true, true, false],
          ),
        );
        printLine('');
        printLine(`data:        ${formatBytes(r.logical_bytes)} in ${count(r.blocks, 'block')}`);
        printLine(`unique:      ${formatBytes(r.unique_bytes)} in ${count(r.unique_blocks, 'block')} (dedup saves ${r.dedup_savings_percent}%)`);
        printLine(
          `stored:      ${formatBytes(r.stored_bytes)} in ${count(r.frames, 'frame')}, ${count(r.packs, 'pack')} (compression saves ${r.compression_savings_percent}%)`,
        );
        printLine(`overall:     ${r.total_savings_percent}% smaller than the data`);
      }),
    );

  const key = program.commands.find((c) => c.name() === 'key') ?? program.command('key').description('encryption keys for bundles');
  key
    .command('generate')
    .description('write a new random 32-byte key file (mode 0600; never overwrites)')
    .requiredOption('-o, --output <file>', 'where to write the key')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: { output: string }) => {
        const r = await ctx.cb.keys.generate(o.output);
        if (ctx.json) return printJson(r);
        printLine(`wrote a new key to ${r.file}; keep it secret and keep a copy: bundles encrypted with it cannot be read without it`);
      }),
    );
}
