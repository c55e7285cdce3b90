import { type Command, InvalidArgumentError } from 'commander';
import type { GroupView } from '../../src/index.js';
import { printJson, printLine, table, usage } from '../output.js';
import { action } from '../run.js';
import { showTime } from '../time.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function count(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} takes a whole number from 1, got ${JSON.stringify(v)}`);
    return n;
  };
}

const GROUP_ARG = 'the group (see `clonebox group list`)';

function describe(g: GroupView): string {
  const missing = g.missing.length ? ` (not registered: ${g.missing.join(', ')})` : '';
  return `group ${g.name}: ${g.members.join(', ')}${missing}`;
}

export function registerGroup(program: Command): void {
  const group = program.command('group').description('VM groups: several VMs snapshotted, restored and deleted as one');

  group
    .command('create')
    .argument('<group>', 'name of the new group')
    .description('create a group of registered VMs (`snapshot create --group` then takes them at one point)')
    .requiredOption('--vm <vm>', 'a member VM (repeat for several)', collect)
    .option('--description <text>', 'free text')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { vm: string[]; description?: string }) => {
        const g = await ctx.cb.groups.create(name, { vms: o.vm, description: o.description ?? null });
        if (ctx.json) return printJson(g);
        printLine(`created ${describe(g)}`);
      }),
    );

  group
    .command('add')
    .argument('<group>', GROUP_ARG)
    .description('add VMs to a group (the next group snapshot takes them too)')
    .requiredOption('--vm <vm>', 'a VM to add (repeat for several)', collect)
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { vm: string[] }) => {
        const g = await ctx.cb.groups.add(name, o.vm);
        if (ctx.json) return printJson(g);
        printLine(describe(g));
      }),
    );

  group
    .command('remove')
    .argument('<group>', GROUP_ARG)
    .description('remove VMs from a group (its group snapshots keep them; the VMs and their snapshots stay)')
    .requiredOption('--vm <vm>', 'a VM to remove (repeat for several)', collect)
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { vm: string[] }) => {
        const g = await ctx.cb.groups.remove(name, o.vm);
        if (ctx.json) return printJson(g);
        printLine(describe(g));
      }),
    );

  group
    .command('delete')
    .argument('<group>', GROUP_ARG)
    .description('delete a group that has no group snapshots (its VMs stay)')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const r = await ctx.cb.groups.delete(name);
        if (ctx.json) return printJson(r);
        printLine(`deleted group ${r.name} (its VMs are kept)`);
      }),
    );

  group
    .command('list')
    .description('list groups')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const gs = await ctx.cb.groups.list();
        if (ctx.json) return printJson(gs);
        if (gs.length === 0) return printLine('no groups');
        printLine(
          table(
            ['NAME', 'MEMBERS', 'SNAPSHOTS', 'LATEST'],
            gs.map((g) => [g.name, g.members.map((m) => (g.missing.includes(m) ? `${m}(missing)` : m)).join(','), String(g.snapshot_count), g.latest ?? '-']),
            [false, false, true, false],
          ),
        );
      }),
    );

  group
    .command('policy')
    .argument('<group>', GROUP_ARG)
    .argument('[policy]', 'a named policy to set (with --when) or remove (with --remove)')
    .description("show or set a group's named policies: each run (`schedule run`) takes a group snapshot, and its retention prunes the group snapshots it made")
    .option('--when <time>', 'when it runs: daily HH:MM or a cron expression (repeat for several)', collect)
    .option('--timezone <tz>', 'IANA time zone the times are read in (default: local)')
    .option('--keep-last <n>', 'keep the N newest', count('--keep-last'))
    .option('--keep-daily <n>', 'keep the newest of each of the last N days', count('--keep-daily'))
    .option('--keep-within <duration>', 'keep every one within DURATION of the newest (e.g. 7d)')
    .option('--keep-for <duration>', 'keep every one younger than DURATION')
    .option('--max-snapshots <n>', 'never more than N', count('--max-snapshots'))
    .option('--remove', 'remove the policy')
    .option('--json', 'print JSON')
    .action(
      action(
        async (
          ctx,
          name: string,
          policy: string | undefined,
          o: {
            when?: string[];
            timezone?: string;
            keepLast?: number;
            keepDaily?: number;
            keepWithin?: string;
            keepFor?: string;
            maxSnapshots?: number;
            remove?: boolean;
          },
        ) => {
          const setting = o.when !== undefined || o.remove;
          if (policy === undefined && setting)
            throw usage('name the policy to set or remove', `\`clonebox group policy ${name} nightly --when 02:00 --keep-last 7\``);
          if (policy !== undefined && !setting) throw usage(`--when (to set policy ${policy}) or --remove is needed`, `see \`clonebox group policy --help\``);
          if (o.remove && o.when !== undefined) throw usage('--remove and --when exclude each other');
          const retention = {
            ...(o.keepLast !== undefined ? { keep_last: o.keepLast } : {}),
            ...(o.keepDaily !== undefined ? { keep_daily: o.keepDaily } : {}),
            ...(o.keepWithin !== undefined ? { keep_within: o.keepWithin } : {}),
            ...(o.keepFor !== undefined ? { keep_for: o.keepFor } : {}),
            ...(o.maxSnapshots !== undefined ? { max_snapshots: o.maxSnapshots } : {}),
          };
          const r =
            policy === undefined
              ? await ctx.cb.groups.policy(name)
              : await ctx.cb.groups.policy(name, {
                  name: policy,
                  spec: o.remove ? null : { policy: retention, when: o.when ?? [], timezone: o.timezone ?? null },
                });
          if (ctx.json) return printJson(r);
          const names = Object.keys(r.policies);
          if (names.length === 0) return printLine(`group ${name} has no named policies`);
          for (const n of names) {
            const p = r.policies[n]!;
            const keep = Object.entries(p.policy)
              .map(([k, v]) => `${k}=${v}`)
              .join(' ');
            printLine(`${n}: when ${p.when.join(', ')}${p.timezone ? ` (${p.timezone})` : ''}; ${keep || 'keeps all'}`);
          }
        },
      ),
    );

  group
    .command('show')
    .argument('<group>', GROUP_ARG)
    .description('show one group')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const g = await ctx.cb.groups.show(name);
        if (ctx.json) return printJson(g);
        printLine(`name: ${g.name}`);
        printLine(`members: ${g.members.join(', ')}`);
        if (g.missing.length) printLine(`not registered: ${g.missing.join(', ')} (remove them with \`clonebox group remove ${g.name} --vm VM\`)`);
        printLine(`created: ${showTime(g.created_at)}`);
        printLine(`group snapshots: ${g.snapshot_count}${g.latest ? ` (latest ${g.latest})` : ''}`);
        if (g.description) printLine(`description: ${g.description}`);
      }),
    );
}
