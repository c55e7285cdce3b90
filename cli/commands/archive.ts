/**
 * `clonebox archive ...`: the deduplicated archive repository (docs/archive.md). Parsing and rendering
 * only; the work is in the library's archive namespace.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { formatBytes, type ProgressCallback } from '../../src/index.js';
import { interruptible } from '../interrupt.js';
import { count, printJson, printLine, table } from '../output.js';
import { type CliKey, type KeyFlags, keyOptions } from '../passphrase.js';
import { progressFor } from '../progress.js';
import { action } from '../run.js';
import { showTime } from '../time.js';
import { registerArchiveOps } from './archive-ops.js';

type RepoFlags = KeyFlags & { repo?: string };

const PASSPHRASE_HELP = "the repository's passphrase file; - reads stdin. Also: CLONEBOX_PASSPHRASE, _FILE, _COMMAND, or a prompt";
const REPO_HELP = 'the repository directory (default: $CLONEBOX_ARCHIVE)';

function levelOpt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 19) throw new InvalidArgumentError(`--level takes a whole number from 1 to 19, got ${JSON.stringify(v)}`);
  return n;
}

async function withKey<T>(o: RepoFlags, use: 'encrypt' | 'decrypt', fn: (k: CliKey['opts'] & { repo?: string }) => Promise<T>): Promise<T> {
  const k = await keyOptions(o, use, false);
  try {
    return await fn({ ...k.opts, ...(o.repo !== undefined ? { repo: o.repo } : {}) });
  } finally {
    k.wipe();
  }
}

async function long<T>(label: string, json: boolean, fn: (o: { signal: AbortSignal; onProgress?: ProgressCallback }) => Promise<T>): Promise<T> {
  const bar = progressFor(label, json);
  try {
    return await interruptible((signal) => fn({ signal, ...(bar ? { onProgress: bar.update } : {}) }));
  } finally {
    bar?.finish();
  }
}

function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

/** The repository and key options every archive command but init takes. */
function repoOptions(c: Command): Command {
  return c
    .option('--repo <dir>', REPO_HELP)
    .option('--passphrase-file <file>', PASSPHRASE_HELP)
    .option('--key-file <file>', "the repository's key file")
    .option('--allow-insecure-key-file', 'accept a key file that others can read');
}

export function registerArchive(program: Command): void {
  const archive = program.command('archive').description("a deduplicated archive of many VMs' snapshot chains over time (docs/archive.md)");

  archive
    .command('init')
    .argument('<dir>', 'a new or empty directory')
    .description('create an archive repository')
    .option('--encrypt', 'encrypt everything in it (needs --passphrase-file or --key-file)')
    .option('--passphrase-file <file>', 'passphrase file (Argon2id-derived key); - reads stdin')
    .option('--key-file <file>', '32-byte key file (see `clonebox key generate`)')
    .option('--allow-insecure-key-file', 'accept a key file that others can read')
    .option('--level <n>', 'zstd level of the repository, 1-19', levelOpt, 3)
    .option('--append-only', 'forget and gc then need the delete key (--delete-key-file); push works as always')
    .option('--delete-key-file <file>', 'with --append-only: the delete key, a key file from `clonebox key generate` kept away from pushing workstations')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, dir: string, o: KeyFlags & { encrypt?: boolean; level: number; appendOnly?: boolean; deleteKeyFile?: string }) => {
        const k = await keyOptions(o, o.encrypt ? 'encrypt' : 'none', false);
        let r: Awaited<ReturnType<typeof ctx.cb.archive.init>>;
        try {
          r = await ctx.cb.archive.init(dir, {
            ...k.opts,
            encrypt: Boolean(o.encrypt),
            level: o.level,
            appendOnly: Boolean(o.appendOnly),
            ...(o.deleteKeyFile !== undefined ? { deleteKeyFile: o.deleteKeyFile } : {}),
          });
        } finally {
          k.wipe();
        }
        if (ctx.json) return printJson(r);
        printLine(`created archive repository ${r.repo}${r.encrypted ? ' (encrypted)' : ''}${r.append_only ? ' (append-only)' : ''}`);
        printLine(`  push a VM with \`clonebox archive push VM --repo ${r.repo}\`, or set CLONEBOX_ARCHIVE=${r.repo}`);
      }),
    );

  repoOptions(
    archive
      .command('push')
      .argument('<vm>', 'the VM (see `clonebox vm list`)')
      .description("store a VM's snapshots (the whole tree, or root..N); only blocks the repository lacks are written"),
  )
    .addOption(new Option('--name <snapshot>', 'push only root..this snapshot').default(undefined, 'every snapshot'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: RepoFlags & { name?: string }) => {
        const r = await withKey(o, 'decrypt', (key) =>
          long('push', ctx.json, (lo) => ctx.cb.archive.push(vm, { ...key, ...(o.name !== undefined ? { name: o.name } : {}), ...lo })),
        );
        if (ctx.json) return printJson(r);
        printLine(
          `pushed ${count(r.snapshots.length, 'snapshot')} of ${vm} (${r.reused.length} already archived, not read) as record ${r.record.slice(0, 12)}`,
        );
        printLine(
          `  read ${formatBytes(r.read_bytes)}; new ${count(r.new_blocks, 'block')}, ${formatBytes(r.new_raw_bytes)} stored in ${formatBytes(r.new_stored_bytes)}; wrote ${formatBytes(r.written_bytes)} in ${r.seconds.toFixed(1)} s`,
        );
      }),
    );

  repoOptions(archive.command('list').argument('[vm]', 'only this VM').description('list archived snapshots'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string | undefined, o: RepoFlags) => {
        const r = await withKey(o, 'decrypt', (key) => ctx.cb.archive.list(vm, key));
        if (ctx.json) return printJson(r);
        if (r.length === 0) return printLine(vm ? `the archive holds no snapshot of ${vm}` : 'the archive is empty');
        printLine(
          table(
            ['VM', 'SNAPSHOT', 'PARENT', 'CREATED', 'PUSHED', 'DATA', 'CONTENT ID'],
            r.map((s) => [
              s.vm,
              s.shadowed ? `(${s.name})` : s.name,
              s.parent ?? '-',
              showTime(s.created_at),
              showTime(s.pushed_at),
              formatBytes(s.data_bytes),
              s.content_id.slice(0, 12),
            ]),
            [false, false, false, false, false, true, false],
          ),
        );
      }),
    );

  repoOptions(
    archive
      .command('show')
      .argument('<vm>', 'the archived VM')
      .argument('<snapshot>', 'snapshot name, or a content id prefix (8+ hex digits)')
      .description('show one archived snapshot'),
  )
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, snap: string, o: RepoFlags) => {
        const r = await withKey(o, 'decrypt', (key) => ctx.cb.archive.show(vm, snap, key));
        if (ctx.json) return printJson(r);
        printLine(`snapshot:    ${r.name} of ${r.vm}${r.shadowed ? ' (a newer snapshot has its name)' : ''}`);
        printLine(`content id:  ${r.content_id}`);
        printLine(`parent:      ${r.parent ?? '-'}`);
        printLine(`created:     ${showTime(r.created_at)}; pushed ${showTime(r.pushed_at)} (in ${count(r.records, 'record')})`);
        printLine(`description: ${r.description ?? '-'}`);
        printLine(`tags:        ${r.tags.join(', ') || '-'}`);
        printLine(`line:        ${r.line.join(' -> ')}`);
        for (const d of r.disks) printLine(`disk ${d.target}:    ${formatBytes(d.virtual_size)}, ${formatBytes(d.data_bytes)} of data in this layer`);
      }),
    );

  repoOptions(archive.command('stats').description('logical size, stored size, dedup and compression savings, per VM and in all'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, o: RepoFlags) => {
        const r = await withKey(o, 'decrypt', (key) => ctx.cb.archive.stats(key));
        if (ctx.json) return printJson(r);
        printLine(`repository ${r.repo}${r.encrypted ? ' (encrypted)' : ''}${r.append_only ? ' (append-only)' : ''}`);
        const rows = r.vms.map((v) => [
          v.vm,
          String(v.snapshots),
          String(v.pushes),
          formatBytes(v.logical_bytes),
          formatBytes(v.unique_bytes),
          formatBytes(v.stored_bytes),
          pct(v.dedup_savings_bytes, v.logical_bytes),
          pct(v.compression_savings_bytes, v.unique_bytes),
        ]);
        const t = r.total;
        rows.push([
          '(all)',
          String(t.snapshots),
          String(t.pushes),
          formatBytes(t.logical_bytes),
          formatBytes(t.unique_bytes),
          formatBytes(t.stored_bytes),
          pct(t.dedup_savings_bytes, t.logical_bytes),
          pct(t.compression_savings_bytes, t.unique_bytes),
        ]);
        printLine(
          table(['VM', 'SNAPSHOTS', 'PUSHES', 'LOGICAL', 'UNIQUE', 'STORED', 'DEDUP SAVES', 'COMPRESSION SAVES'], rows, [
            false,
            true,
            true,
            true,
            true,
            true,
            true,
            true,
          ]),
        );
        printLine(
          `repository: ${formatBytes(t.repository_bytes)} on disk (${count(t.packs, 'pack')} ${formatBytes(t.pack_bytes)}, ${count(t.index_files, 'index file')} ${formatBytes(t.index_bytes)}, ${count(t.layers, 'layer map')} ${formatBytes(t.layer_bytes)}, records ${formatBytes(t.record_bytes)}); ${pct(t.logical_bytes - t.repository_bytes, t.logical_bytes)} smaller than the data`,
        );
      }),
    );

  repoOptions(
    archive
      .command('export')
      .argument('<vm>', 'the archived VM')
      .argument('<snapshot>', 'last snapshot of the line root..SNAPSHOT')
      .description('write root..SNAPSHOT from the repository as a normal bundle (no VM is touched)'),
  )
    .requiredOption('-o, --output <file>', 'the bundle file')
    .option('--encrypt', 'encrypt the bundle with the key given (--key-file or --passphrase-file)')
    .option('--level <n>', 'zstd level, 1-19', levelOpt, 3)
    .option('--force', 'replace an existing bundle file')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, snap: string, o: RepoFlags & { output: string; encrypt?: boolean; level: number; force?: boolean }) => {
        const r = await withKey(o, 'decrypt', (key) =>
          long('export', ctx.json, (lo) =>
            ctx.cb.archive.export(vm, snap, { ...key, output: o.output, encrypt: Boolean(o.encrypt), level: o.level, force: Boolean(o.force), ...lo }),
          ),
        );
        if (ctx.json) return printJson(r);
        printLine(`exported ${count(r.snapshots.length, 'snapshot')} of ${vm} from the archive to ${r.file}${r.encrypted ? ' (encrypted)' : ''}`);
        printLine(`  data ${formatBytes(r.logical_bytes)}, bundle ${formatBytes(r.bundle_bytes)} in ${r.seconds.toFixed(1)} s`);
      }),
    );

  repoOptions(archive.command('import').argument('<file>', 'a bundle file (of a whole chain)').description("store a bundle's chain in the repository"))
    .option('--as <vm>', "store it under this VM name (default: the bundle's)")
    .option('--allow-plain', 'accept a plain bundle although a key was given')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string, o: RepoFlags & { as?: string }) => {
        const r = await withKey(o, 'decrypt', (key) =>
          long('import', ctx.json, (lo) => ctx.cb.archive.import(file, { ...key, ...(o.as !== undefined ? { as: o.as } : {}), ...lo })),
        );
        if (ctx.json) return printJson(r);
        printLine(`imported ${count(r.snapshots.length, 'snapshot')} of ${r.vm} as record ${r.record.slice(0, 12)}: ${r.snapshots.join(', ')}`);
        printLine(
          `  new ${count(r.new_blocks, 'block')}, ${formatBytes(r.new_raw_bytes)} stored in ${formatBytes(r.new_stored_bytes)}, in ${r.seconds.toFixed(1)} s`,
        );
      }),
    );

  repoOptions(
    archive
      .command('restore')
      .argument('<vm>', 'the archived VM')
      .argument('<snapshot>', 'snapshot name, or a content id prefix (8+ hex digits)')
      .description('rebuild root..SNAPSHOT as qcow2 layers, registered as a new VM'),
  )
    .option('--as <newvm>', "name of the new VM (default: the archived VM's name)")
    .addOption(new Option('--dir <dir>', "directory for the new VM's disks").default(undefined, '<home>/disks/<vm>'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, snap: string, o: RepoFlags & { as?: string; dir?: string }) => {
        const r = await withKey(o, 'decrypt', (key) =>
          long('restore', ctx.json, (lo) =>
            ctx.cb.archive.restore(vm, snap, { ...key, ...(o.as !== undefined ? { as: o.as } : {}), ...(o.dir !== undefined ? { dir: o.dir } : {}), ...lo }),
          ),
        );
        if (ctx.json) return printJson(r);
        printLine(`restored ${count(r.snapshots.length, 'snapshot')} of ${r.from_vm} as VM ${r.vm}: ${r.snapshots.join(', ')}`);
        printLine(`  wrote ${formatBytes(r.bytes_written)} in ${r.seconds.toFixed(1)} s; current snapshot: ${r.current}`);
      }),
    );

  registerArchiveOps(archive, { repoOptions, withKey });
}
