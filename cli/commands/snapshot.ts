import { type Command, InvalidArgumentError, Option } from 'commander';
import {
  formatBytes,
  type GroupSnapshotView,
  POLICY_KEYS,
  type PolicyChanges,
  parseSize,
  type SnapshotTreeDetails,
  type SnapshotView,
  type TreeNode,
} from '../../src/index.js';
import { confirm } from '../confirm.js';
import type { Ctx } from '../context.js';
import { note, printJson, printLine, table, usage } from '../output.js';
import { withStatus } from '../progress.js';
import { action } from '../run.js';
import { age, showTime } from '../time.js';

function intOpt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) {
      // Thrown inside commander's parsing: reported as a usage error (exit 2).
      throw new InvalidArgumentError(`${name} takes a whole number, got ${JSON.stringify(v)}`);
    }
    return n;
  };
}

/** A policy value: `none` (kept as is: commander does not keep a parser's null) drops the key, anything else is parsed. */
function orNone<T>(parse: (v: string) => T) {
  return (v: string): T | 'none' => (v === 'none' ? 'none' : parse(v));
}

function renderTree(vm: string, roots: TreeNode[], views: Map<string, SnapshotView>, retention: SnapshotTreeDetails['retention']): string {
  const lines = [`${vm}`];
  const kept = new Map(retention.keep.map((k) => [k.name, k.reasons]));
  const expired = new Map(retention.remove.map((r) => [r.name, r.reason]));
  const next = new Set(retention.next.map((r) => r.name));
  const label = (n: TreeNode) => {
    const v = views.get(n.name);
    const why = kept.get(n.name);
    const gone = expired.get(n.name);
    const marks = [
      v?.auto_created ? `[auto${v.auto_policy ? `: ${v.auto_policy}` : ''}]` : '',
      why ? `kept: ${why.join(', ')}${next.has(n.name) ? ' (goes next)' : ''}` : '',
      gone !== undefined ? `⊘ (expired: ${gone})` : '',
      v?.expires_at && gone === undefined ? `expires ${showTime(v.expires_at)}` : '',
      v && v.state !== 'ready' ? `[${v.state}]` : '',
    ]
      .filter(Boolean)
      .join(' ');
    return `${n.current ? '* ' : ''}${n.name}  ${showTime(n.created_at)}${v ? `  ${formatBytes(v.size_bytes)}` : ''}${marks ? `  ${marks}` : ''}`;
  };
  // Iterative walk: snapshot chains can be thousands deep.
  const stack: { n: TreeNode | 'here'; prefix: string; last: boolean }[] = [];
  const push = (nodes: (TreeNode | 'here')[], prefix: string) => {
    for (let i = nodes.length - 1; i >= 0; i--) stack.push({ n: nodes[i]!, prefix, last: i === nodes.length - 1 });
  };
  // With no current snapshot the current state stands on its own, beside the roots.
  const hasCurrent = [...views.values()].some((v) => v.current);
  push(hasCurrent || roots.length === 0 ? roots : [...roots, 'here'], '');
  while (stack.length) {
    const { n, prefix, last } = stack.pop()!;
    const branch = last ? '└── ' : '├── ';
    if (n === 'here') {
      lines.push(`${prefix}${branch}(you are here: current state)`);
      continue;
    }
    lines.push(`${prefix}${branch}${label(n)}`);
    const kids: (TreeNode | 'here')[] = [...n.children];
    if (n.current) kids.push('here');
    push(kids, prefix + (last ? '    ' : '│   '));
  }
  if (roots.length === 0) lines.push('└── (no snapshots)');
  return lines.join('\n');
}

interface RestoreFlags {
  name?: string;
  at?: string;
  start?: boolean;
  backup?: boolean;
  yes?: boolean;
  /** false with --no-auto-snapshot. */
  autoSnapshot: boolean;
}

/** `snapshot restore` and `time-travel`: resolve, say what will happen (and to a libvirt domain), confirm, restore. */
async function restoreCommand(ctx: Ctx, vm: string, o: RestoreFlags): Promise<void> {
  // By name with --yes there is nothing to show or confirm first: the restore checks the name itself
  // (reading that one record, not the whole history).
  const sel =
    o.name !== undefined && o.yes
      ? { snapshot: { name: o.name, created_at: '' }, resolved_at: null }
      : await ctx.cb.snapshots.select(vm, { ...(o.name !== undefined ? { name: o.name } : {}), ...(o.at !== undefined ? { at: o.at } : {}) });
  const target = sel.snapshot.name;
  const libvirt = (await ctx.cb.vms.show(vm)).driver === 'libvirt';
  if (sel.resolved_at !== null && !ctx.json) {
    note(
      `${JSON.stringify(o.at)} reads as at or before ${sel.resolved_at}; the newest snapshot then is ${target}, created ${showTime(sel.snapshot.created_at)}`,
    );
  }
  const off = libvirt ? '; the libvirt domain is powered off first if it runs (its memory state is lost)' : '';
  await confirm(`Restore ${vm} to snapshot ${target}? Changes made since${o.backup ? '' : ' (not snapshotted)'} will be discarded${off}`, Boolean(o.yes));
  const r = await ctx.cb.snapshots.restore(vm, { name: target, backup: Boolean(o.backup), start: Boolean(o.start), noAutoSnapshot: !o.autoSnapshot });
  if (ctx.json) return printJson({ ...r, resolved_at: sel.resolved_at });
  printLine(`restored ${vm} to ${r.restored}${r.backup ? ` (backup snapshot ${r.backup})` : ''}`);
  if (libvirt && !o.start) printLine('the libvirt domain is off now: start it with `virsh start`, or restore with --start to have it started');
}

/** `snapshot restore --group`: every member back to the group snapshot, all or nothing. */
async function restoreGroupCommand(ctx: Ctx, group: string, o: RestoreFlags): Promise<void> {
  if (o.name === undefined) throw usage('--group needs --name (the group snapshot)', `see \`clonebox snapshot list --group ${group}\``);
  if (o.at !== undefined || o.backup)
    throw usage(`--${o.at !== undefined ? 'at' : 'backup'} is not available with --group`, 'name the group snapshot with --name');
  const g = await ctx.cb.groups.showSnapshot(group, o.name);
  await confirm(
    `Restore ${g.members.map((m) => m.vm).join(', ')} to group snapshot ${g.name} of ${group}? Changes made since (not snapshotted) will be discarded; running libvirt members are powered off first`,
    Boolean(o.yes),
  );
  const r = await ctx.cb.groups.restore(group, { name: o.name, start: Boolean(o.start), noAutoSnapshot: !o.autoSnapshot });
  if (ctx.json) return printJson(r);
  printLine(`restored ${r.members.map((m) => m.vm).join(', ')} to group snapshot ${r.restored} of ${group}`);
}

const VM_ARG = 'the VM (see `clonebox vm list`)';
const VM_OR_GROUP_ARG = 'the VM (see `clonebox vm list`); left out with --group';
const GROUP_OPT = 'a VM group instead of one VM (see `clonebox group list`)';

/** The VM, or null with --group: exactly one of them. */
function vmOrGroup(command: string, vm: string | undefined, group: string | undefined): string | null {
  if (group !== undefined && vm !== undefined)
    throw usage(`--group and a VM exclude each other (${vm})`, `\`clonebox snapshot ${command} --group ${group} ...\` acts on every member`);
  if (group === undefined && vm === undefined) throw usage("missing required argument 'vm'", `see \`clonebox snapshot ${command} --help\``);
  return group === undefined ? vm! : null;
}

function groupSnapshotLine(v: GroupSnapshotView): string {
  const held =
    v.pause_ms === null ? '' : `; ${v.consistency === 'frozen' ? 'frozen' : v.consistency === 'mixed' ? 'paused or frozen' : 'paused'} for ${v.pause_ms} ms`;
  return `${v.members.map((m) => m.vm).join(', ')}${held}`;
}

export function registerTimeTravel(program: Command): void {
  program
    .command('time-travel')
    .argument('<vm>', VM_ARG)
    .description('restore the snapshot a VM had at a time: "2h ago", "yesterday 14:30", or a time as `snapshot list` shows it')
    .requiredOption('--to <time>', 'the time; the newest snapshot created at or before it is restored')
    .option('--start', 'start the VM afterwards (libvirt)')
    .option('--backup', 'snapshot the current state first')
    .option('--no-auto-snapshot', 'skip the snapshot before_operations: [restore] asks for')
    .option('--yes', 'do not ask for confirmation')
    .option('--json', 'print JSON')
    .action(action(async (ctx, vm: string, o: Omit<RestoreFlags, 'name' | 'at'> & { to: string }) => restoreCommand(ctx, vm, { ...o, at: o.to })));
}

export function registerSnapshot(program: Command): Command {
  const snap = program.command('snapshot').description('create, list, restore, delete and compare snapshots');

  snap
    .command('create')
    .argument('[vm]', VM_OR_GROUP_ARG)
    .description('snapshot every disk of a VM, or every member of a group at one point (becomes the current snapshot)')
    .option('--group <group>', GROUP_OPT)
    .addOption(new Option('--name <name>', 'snapshot name').default(undefined, 'snap-YYYYMMDD-HHMMSS'))
    .option('--description <text>', 'free text')
    .option('--tags <a,b>', 'comma-separated tags')
    .option('--memory', 'include memory state (running libvirt VMs)')
    .option('--quiesce', 'freeze guest filesystems through the guest agent')
    .option('--json', 'print JSON')
    .action(
      action(
        async (
          ctx,
          vmArg: string | undefined,
          o: { group?: string; name?: string; description?: string; tags?: string; memory?: boolean; quiesce?: boolean },
        ) => {
          const vm = vmOrGroup('create', vmArg, o.group);
          const tags = o.tags
            ? o.tags
                .split(',')
                .map((t) => t.trim())
                .filter(Boolean)
            : [];
          if (vm === null) {
            const g = await ctx.cb.groups.createSnapshot(o.group!, {
              ...(o.name !== undefined ? { name: o.name } : {}),
              description: o.description ?? null,
              tags,
              memory: Boolean(o.memory),
              quiesce: Boolean(o.quiesce),
            });
            if (ctx.json) return printJson(g);
            return printLine(`created group snapshot ${g.name} of ${g.group}: ${groupSnapshotLine(g)}`);
          }
          const v = await ctx.cb.snapshots.create(vm, {
            ...(o.name !== undefined ? { name: o.name } : {}),
            description: o.description ?? null,
            tags,
            memory: Boolean(o.memory),
            quiesce: Boolean(o.quiesce),
          });
          if (ctx.json) return printJson(v);
          printLine(`created snapshot ${v.name} of ${vm} (${formatBytes(v.size_bytes)})`);
        },
      ),
    );

  snap
    .command('list')
    .argument('[vm]', VM_OR_GROUP_ARG)
    .description("list a VM's snapshots, or a group's group snapshots, newest first")
    .option('--group <group>', GROUP_OPT)
    .option('--tree', 'show the snapshot tree')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vmArg: string | undefined, o: { group?: string; tree?: boolean }) => {
        const vm = vmOrGroup('list', vmArg, o.group);
        if (vm === null) {
          if (o.tree) throw usage('--tree and --group exclude each other', `each member's tree: \`clonebox snapshot list VM --tree\``);
          const list = await ctx.cb.groups.snapshots(o.group!);
          if (ctx.json) return printJson(list);
          if (list.length === 0) return printLine(`no group snapshots of ${o.group}`);
          return printLine(
            table(
              ['NAME', 'TYPE', 'CREATED', 'AGE', 'MEMBERS', 'HELD', 'TAGS'],
              list.map((v) => [
                v.name,
                v.type,
                showTime(v.created_at),
                age(v.created_at),
                v.members.map((m) => m.vm).join(','),
                v.pause_ms === null ? v.consistency : `${v.consistency} ${v.pause_ms} ms`,
                v.tags.join(','),
              ]),
            ),
          );
        }
        if (o.tree) {
          if (ctx.json) return printJson(await ctx.cb.snapshots.tree(vm));
          const t = await ctx.cb.snapshots.treeDetails(vm);
          const views = new Map(t.views.map((v) => [v.name, v]));
          return printLine(renderTree(vm, t.roots, views, t.retention));
        }
        const list = await ctx.cb.snapshots.list(vm);
        if (ctx.json) return printJson(list);
        if (list.length === 0) return printLine(`no snapshots of ${vm}`);
        printLine(
          table(
            ['', 'NAME', 'TYPE', 'CREATED', 'AGE', 'SIZE', 'PARENT', 'TAGS', 'GROUP'],
            list.map((v) => [
              v.current ? '*' : '',
              v.name,
              v.type,
              showTime(v.created_at),
              age(v.created_at),
              formatBytes(v.size_bytes),
              v.parent ?? '-',
              v.tags.join(','),
              v.group ? v.group.name : '-',
            ]),
            [false, false, false, false, false, true, false, false, false],
          ),
        );
      }),
    );

  snap
    .command('show')
    .argument('[vm]', VM_OR_GROUP_ARG)
    .description('show one snapshot, or one group snapshot')
    .option('--group <group>', GROUP_OPT)
    .requiredOption('--name <snapshot>', 'the snapshot')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vmArg: string | undefined, o: { group?: string; name: string }) => {
        const vm = vmOrGroup('show', vmArg, o.group);
        if (vm === null) {
          const g = await ctx.cb.groups.showSnapshot(o.group!, o.name);
          if (ctx.json) return printJson(g);
          printLine(`name: ${g.name}`);
          printLine(`group: ${g.group}`);
          printLine(`type: ${g.type}, state: ${g.state}`);
          printLine(`created: ${showTime(g.created_at)} (${age(g.created_at)}; ${g.created_at})`);
          printLine(`members: ${g.members.map((m) => `${m.vm}/${m.snapshot}`).join(', ')}`);
          printLine(`held by: ${g.consistency}${g.pause_ms === null ? '' : ` for ${g.pause_ms} ms`}${g.quiesced ? ' (quiesced)' : ''}`);
          printLine(`tags: ${g.tags.join(', ') || '(none)'}${g.auto_created ? ` (auto: ${g.auto_policy})` : ''}`);
          if (g.description) printLine(`description: ${g.description}`);
          return;
        }
        const v = await ctx.cb.snapshots.show(vm, o.name);
        if (ctx.json) return printJson(v);
        printLine(`name: ${v.name}${v.current ? ' (current)' : ''}`);
        printLine(`vm: ${v.vm_name}`);
        printLine(`type: ${v.type}, state: ${v.state}`);
        printLine(`created: ${showTime(v.created_at)} (${age(v.created_at)}; ${v.created_at})`);
        printLine(`parent: ${v.parent ?? '(none)'}`);
        printLine(`children: ${v.children.join(', ') || '(none)'}`);
        printLine(`size: ${formatBytes(v.size_bytes)}`);
        printLine(`tags: ${v.tags.join(', ') || '(none)'}${v.auto_created ? ` (auto: ${v.auto_policy})` : ''}`);
        if (v.group) printLine(`group: ${v.group.name} (group snapshot ${v.group.snapshot})`);
        if (v.expires_at) printLine(`expires: ${showTime(v.expires_at)}`);
        if (v.description) printLine(`description: ${v.description}`);
        for (const d of v.disks) printLine(`layer ${d.target}: ${d.path}`);
      }),
    );

  snap
    .command('restore')
    .argument('[vm]', VM_OR_GROUP_ARG)
    .description('make the VM state (or every member of a group) equal to a snapshot (discards unsnapshotted changes)')
    .option('--group <group>', `${GROUP_OPT}: every member back to group snapshot --name, all or nothing`)
    .option('--name <snapshot>', 'the snapshot to restore')
    .option('--at <time>', 'restore the newest snapshot created at or before TIME (as `snapshot list` shows it, ISO-8601, "2h ago"...)')
    .option('--start', 'start the VM afterwards (libvirt)')
    .option('--backup', 'snapshot the current state first')
    .option('--no-auto-snapshot', 'skip the snapshot before_operations: [restore] asks for')
    .option('--yes', 'do not ask for confirmation')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vmArg: string | undefined, o: RestoreFlags & { group?: string }) => {
        const vm = vmOrGroup('restore', vmArg, o.group);
        if (vm !== null) return restoreCommand(ctx, vm, o);
        return restoreGroupCommand(ctx, o.group!, o);
      }),
    );

  snap
    .command('promote')
    .argument('<vm>', VM_ARG)
    .argument('<snapshot>', 'the snapshot to make the current state')
    .description('make a snapshot the current state, keeping the present state as a snapshot (nothing is lost)')
    .addOption(new Option('--keep-as <name>', 'name of the snapshot that keeps the present state').default(undefined, 'snap-YYYYMMDD-HHMMSS'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, name: string, o: { keepAs?: string }) => {
        const r = await ctx.cb.snapshots.promote(vm, name, o.keepAs !== undefined ? { keepAs: o.keepAs } : {});
        if (ctx.json) return printJson(r);
        printLine(`${vm} is now at ${r.promoted}; ${r.kept ? `the state it had is kept as snapshot ${r.kept}` : 'it had no unsaved changes'}`);
      }),
    );

  snap
    .command('branch')
    .argument('<vm>', VM_ARG)
    .argument('<name>', 'name of the new snapshot that starts the branch')
    .description("start a branch at a snapshot: a new snapshot with its content (the VM's current state is not touched)")
    .requiredOption('--from <snapshot>', 'the snapshot the branch starts from')
    .option('--description <text>', 'free text')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, name: string, o: { from: string; description?: string }) => {
        const v = await ctx.cb.snapshots.branch(vm, name, { from: o.from, ...(o.description !== undefined ? { description: o.description } : {}) });
        if (ctx.json) return printJson(v);
        printLine(`created branch ${v.name} of ${vm} at ${o.from}; \`clonebox snapshot promote ${vm} ${v.name}\` switches to it`);
      }),
    );

  snap
    .command('delete')
    .argument('[vm]', VM_OR_GROUP_ARG)
    .description('delete a snapshot (or a group snapshot with every member snapshot), keeping every other state identical')
    .option('--group <group>', GROUP_OPT)
    .requiredOption('--name <snapshot>', 'the snapshot to delete')
    .option('--recursive', 'delete its whole subtree')
    .option('--keep-children', 'merge its data into its children')
    .option('--no-auto-snapshot', 'skip the snapshot before_operations: [delete] asks for')
    .option('--yes', 'do not ask for confirmation')
    .option('--json', 'print JSON')
    .action(
      action(
        async (
          ctx,
          vmArg: string | undefined,
          o: { group?: string; name: string; recursive?: boolean; keepChildren?: boolean; yes?: boolean; autoSnapshot: boolean },
        ) => {
          const vm = vmOrGroup('delete', vmArg, o.group);
          if (vm === null) {
            if (o.recursive) await confirm(`Delete group snapshot ${o.name} of ${o.group} and all snapshots below its members?`, Boolean(o.yes));
            const r = await withStatus(`deleting group snapshot ${o.name} of ${o.group}`, ctx.json, () =>
              ctx.cb.groups.deleteSnapshot(o.group!, o.name, {
                recursive: Boolean(o.recursive),
                keepChildren: Boolean(o.keepChildren),
                noAutoSnapshot: !o.autoSnapshot,
              }),
            );
            if (ctx.json) return printJson(r);
            return printLine(`deleted group snapshot ${r.deleted} of ${r.group} (${r.members.map((m) => `${m.vm}: ${m.deleted.join(', ')}`).join('; ')})`);
          }
          if (o.recursive) await confirm(`Delete snapshot ${o.name} of ${vm} and all snapshots below it?`, Boolean(o.yes));
          const r = await withStatus(`deleting ${o.name} of ${vm} (merging its data where needed)`, ctx.json, () =>
            ctx.cb.snapshots.delete(vm, o.name, {
              recursive: Boolean(o.recursive),
              keepChildren: Boolean(o.keepChildren),
              noAutoSnapshot: !o.autoSnapshot,
            }),
          );
          if (ctx.json) return printJson(r);
          printLine(`deleted ${r.deleted.join(', ')}${r.merged_into.length ? ` (merged into ${r.merged_into.join(', ')})` : ''}`);
        },
      ),
    );

  snap
    .command('diff')
    .argument('<vm>', VM_ARG)
    .description('byte ranges whose content differs between two snapshots')
    .requiredOption('--from <snapshot>', 'the older state')
    .addOption(new Option('--to <snapshot>', 'the newer state: a snapshot, or "current" (the current state)').default('current'))
    .option('--files', 'files added, removed, renamed, modified and changed in metadata, per partition (ext2/3/4)')
    .option('--packages', 'installed, removed, upgraded and downgraded packages (dpkg, apk)')
    .option('--etc', 'changes under /etc, with a unified diff of text files')
    .addOption(
      new Option('--max-diff-bytes <size>', 'largest file shown as a unified diff by --etc')
        .default(undefined, '64K')
        .argParser((v: string) => parseSize(v, '--max-diff-bytes')),
    )
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: { from: string; to: string; files?: boolean; packages?: boolean; etc?: boolean; maxDiffBytes?: number }) => {
        const guest = {
          files: Boolean(o.files),
          packages: Boolean(o.packages),
          etc: Boolean(o.etc),
          ...(o.maxDiffBytes !== undefined ? { maxDiffBytes: o.maxDiffBytes } : {}),
        };
        const d = await withStatus(`comparing ${o.from} and ${o.to} of ${vm}`, ctx.json, () => ctx.cb.snapshots.diff(vm, o.from, o.to, guest));
        if (ctx.json) return printJson(d);
        if (o.files || o.packages || o.etc) {
          const { renderGuestDiff } = await import('../guest-diff.js');
          for (const line of renderGuestDiff(d)) printLine(line);
          return;
        }
        for (const disk of d.disks) {
          printLine(`${disk.target}: ${formatBytes(disk.changed_bytes)} changed in ${disk.ranges.length} range(s) (granularity ${disk.granularity})`);
          for (const r of disk.ranges.slice(0, 50)) printLine(`  at ${formatBytes(r.offset)}: ${formatBytes(r.length)}`);
          if (disk.ranges.length > 50) printLine(`  ... ${disk.ranges.length - 50} more (use --json)`);
        }
      }),
    );

  snap
    .command('stats')
    .argument('<vm>', VM_ARG)
    .description('space used by the VM and its snapshots, and dedup savings')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string) => {
        if (ctx.json) return printJson(await ctx.cb.snapshots.stats(vm));
        const s = await withStatus(`reading the layers of ${vm}`, false, () => ctx.cb.snapshots.statsDetails(vm));
        printLine(`virtual size:    ${formatBytes(s.virtual_size)}`);
        printLine(`on disk:         ${formatBytes(s.physical_bytes)} in ${s.layers} file(s), ${s.snapshots} snapshot(s)`);
        printLine(`allocated:       ${formatBytes(s.allocated_bytes)}`);
        printLine(`after dedup:     ${formatBytes(s.unique_bytes)} (${s.savings_percent}% saved)`);
      }),
    );

  snap
    .command('policy')
    .argument('<vm>', VM_ARG)
    .description('show or set the retention policy for auto snapshots (a value of "none" drops that rule)')
    .option('--keep-last <n>', 'keep the N newest (the current snapshot counts)', orNone(intOpt('--keep-last')))
    .option('--keep-hourly <n>', 'newest per hour, for N hours', orNone(intOpt('--keep-hourly')))
    .option('--keep-daily <n>', 'newest per day, for N days', orNone(intOpt('--keep-daily')))
    .option('--keep-weekly <n>', 'newest per week, for N weeks', orNone(intOpt('--keep-weekly')))
    .option('--keep-monthly <n>', 'newest per month, for N months', orNone(intOpt('--keep-monthly')))
    .option('--keep-yearly <n>', 'newest per year, for N years', orNone(intOpt('--keep-yearly')))
    .option('--keep-within <duration>', 'all within DURATION of the newest (e.g. 7d, 1y2m)', orNone(String))
    .option('--keep-for <duration>', 'all younger than DURATION (e.g. 5d)', orNone(String))
    .option('--max-snapshots <n>', 'at most N auto snapshots (the current snapshot counts)', orNone(intOpt('--max-snapshots')))
    .option('--max-size <size>', 'auto snapshots use at most SIZE', orNone(String))
    .option('--clear', 'drop every rule first (auto snapshots are then kept)')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: Record<string, unknown>) => {
        const changes: Record<string, unknown> = {};
        const camel = (k: string) => k.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
        for (const k of POLICY_KEYS) if (o[camel(k)] !== undefined) changes[k] = o[camel(k)] === 'none' ? null : o[camel(k)];
        // commander gives the numbers (intOpt), strings (durations, --max-size) or null ("none") the keys take.
        const r = await ctx.cb.snapshots.policy(vm, changes as PolicyChanges, { clear: Boolean(o.clear) });
        if (ctx.json) return printJson(r);
        const entries = Object.entries(r.policy);
        if (entries.length === 0) return printLine(`no retention policy for ${vm} (auto snapshots are kept)`);
        for (const [k, v] of entries) printLine(`${k.replace(/_/g, '-')}: ${k === 'max_size' ? formatBytes(v as number) : v}`);
      }),
    );

  snap
    .command('prune')
    .argument('<vm>', VM_ARG)
    .description('apply the retention policy to auto snapshots')
    .option('--dry-run', 'only show what would be deleted')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string, o: { dryRun?: boolean }) => {
        const plan = await ctx.cb.snapshots.prune(vm, { dryRun: Boolean(o.dryRun) });
        if (ctx.json) return printJson(plan);
        for (const k of plan.keep) printLine(`keep    ${k.name}  (${k.reasons.join(', ')})`);
        for (const r of plan.remove) printLine(`${plan.dry_run ? 'would remove' : 'removed'} ${r.name}  (${r.reason})`);
        for (const r of plan.next) printLine(`next    ${r.name}  (goes with the next auto snapshot: ${r.reason})`);
        if (plan.keep.length + plan.remove.length === 0) printLine('no auto snapshots');
      }),
    );

  snap
    .command('run')
    .argument('<vm>', VM_ARG)
    .argument('[command...]', 'the command and its arguments, after --')
    .description('snapshot, run a command, and optionally roll back when it fails')
    .addOption(new Option('--name <name>', 'name of the auto snapshot').default(undefined, 'snap-YYYYMMDD-HHMMSS'))
    .option('--rollback-on-fail', 'restore the snapshot when the command exits non-zero')
    .option('--op <name>', 'the operation the command performs (e.g. upgrade): the snapshot is recorded as before-NAME')
    .action(
      action(async (ctx, vm: string, command: string[], o: { name?: string; rollbackOnFail?: boolean; op?: string }) => {
        const r = await ctx.cb.snapshots.run(vm, command, {
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.op !== undefined ? { op: o.op } : {}),
          rollbackOnFail: Boolean(o.rollbackOnFail),
        });
        // stdout belongs to the command: clonebox speaks on stderr.
        if (r.rolled_back) process.stderr.write(`clonebox: command exited ${r.exit_code}; ${vm} rolled back to ${r.snapshot}\n`);
        else note(`the state before the command is snapshot ${r.snapshot} of ${vm}`);
        process.exitCode = r.exit_code;
      }),
    );

  return snap;
}
