import type { Command } from 'commander';
import type { GroupView } from '../../src/index.js';
import { printJson, printLine, table } from '../output.js';
import { action } from '../run.js';
import { showTime } from '../time.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
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
