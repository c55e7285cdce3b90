import { type Command, Option } from 'commander';
import { formatBytes } from '../../src/index.js';
import { confirm } from '../confirm.js';
import { printJson, printLine, table, usage } from '../output.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('register, create and inspect VMs');

  vm.command('create')
    .argument('<vm>', 'name of the new VM')
    .description('create a new empty qcow2 disk and register it (image driver)')
    .requiredOption('--size <size>', 'virtual size, e.g. 20G')
    .addOption(new Option('--dir <dir>', 'directory for the disk').default(undefined, '<home>/disks/<vm>'))
    .addOption(new Option('--cluster-size <size>', 'qcow2 cluster size, 512 to 2M').default(undefined, '64K'))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { size: string; dir?: string; clusterSize?: string }) => {
        const view = await ctx.cb.vms.create(name, {
          size: o.size,
          ...(o.dir ? { dir: o.dir } : {}),
          ...(o.clusterSize !== undefined ? { clusterSize: o.clusterSize } : {}),
        });
        if (ctx.json) return printJson(view);
        printLine(`created VM ${view.name}: ${view.disks[0]!.path} (${formatBytes(view.disks[0]!.virtual_size)})`);
      }),
    );

  vm.command('add')
    .argument('<vm>', 'name of the new VM')
    .description('register existing qcow2 disks, or a libvirt domain')
    .option('--disk <file>', 'qcow2 disk (repeat for several)', collect)
    .option('--libvirt', 'register a libvirt domain (libvirt driver)')
    .addOption(new Option('--domain <name>', 'libvirt domain name').default(undefined, 'the VM name'))
    .option('--connect <uri>', 'libvirt connection URI', 'qemu:///system')
    .option(
      '--allow-backing <path>',
      "accept this backing file although it is outside the disk's directory, a device or of unrecorded format (repeatable)",
      collect,
      [],
    )
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { disk?: string[]; libvirt?: boolean; domain?: string; connect: string; allowBacking: string[] }) => {
        const disks = o.disk ?? [];
        if (o.libvirt) {
          if (disks.length) throw usage('--libvirt and --disk exclude each other');
          const view = await ctx.cb.vms.addLibvirt(name, { domain: o.domain ?? name, uri: o.connect });
          if (ctx.json) return printJson(view);
          return printLine(
            `registered libvirt domain ${o.domain ?? name} (${o.connect}) as VM ${name}: ${view.disks.map((d) => `${d.target}=${d.path}`).join(', ')}`,
          );
        }
        const view = await ctx.cb.vms.add(name, { disks, allowBacking: o.allowBacking });
        if (ctx.json) return printJson(view);
        printLine(`registered VM ${view.name}: ${view.disks.map((d) => `${d.target}=${d.path}`).join(', ')}`);
        for (const d of view.disks) {
          const chain = d.backing_chain ?? [];
          if (chain.length < 2) continue;
          printLine(`  ${d.target} backing chain: ${chain.map((l) => `${l.path} (${l.format})`).join(' on ')}`);
          for (const l of chain) if (l.allowed_because) printLine(`  accepted by --allow-backing: ${l.path}: ${l.allowed_because}`);
        }
      }),
    );

  vm.command('list')
    .description('list registered VMs')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const vms = await ctx.cb.vms.list();
        if (ctx.json) return printJson(vms);
        if (vms.length === 0) return printLine('no VMs registered');
        const usage = await Promise.all(vms.map((v) => ctx.cb.vms.diskUsage(v.name)));
        printLine(
          table(
            ['NAME', 'DRIVER', 'DISKS', 'SIZE', 'ON DISK', 'SNAPSHOTS', 'CURRENT'],
            vms.map((v, i) => [
              v.name,
              v.driver,
              String(v.disks.length),
              formatBytes(v.disks.reduce((a, d) => a + d.virtual_size, 0)),
              formatBytes(usage[i]!),
              String(v.snapshot_count),
              v.current ?? '-',
            ]),
            [false, false, true, true, true, true, false],
          ),
        );
      }),
    );

  vm.command('show')
    .argument('<vm>', 'the VM (see `clonebox vm list`)')
    .description('show one VM')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const v = await ctx.cb.vms.show(name);
        if (ctx.json) return printJson(v);
        printLine(`name: ${v.name}`);
        printLine(`driver: ${v.driver}`);
        printLine(`current snapshot: ${v.current ?? '(none)'}`);
        printLine(`snapshots: ${v.snapshot_count}`);
        printLine(`on disk: ${formatBytes(await ctx.cb.vms.diskUsage(name))} (current images, snapshot layers and memory files)`);
        for (const d of v.disks) printLine(`disk ${d.target}: ${d.path} (${formatBytes(d.virtual_size)})`);
      }),
    );

  vm.command('remove')
    .argument('<vm>', 'the VM (see `clonebox vm list`)')
    .description('unregister a VM (and with --delete-files, delete its disks and layers)')
    .option('--delete-files', 'also delete the disk images and snapshot layers')
    .option('--leave-groups', 'also take it out of the groups that name it and of their group snapshots')
    .option('--yes', 'do not ask for confirmation')
    .addOption(new Option('--json', 'print JSON'))
    .action(
      action(async (ctx, name: string, o: { deleteFiles?: boolean; leaveGroups?: boolean; yes?: boolean }) => {
        if (o.deleteFiles) await confirm(`Delete VM ${name} with all its disk images and snapshot layers?`, Boolean(o.yes));
        const r = await ctx.cb.vms.remove(name, { deleteFiles: Boolean(o.deleteFiles), leaveGroups: Boolean(o.leaveGroups) });
        if (ctx.json) return printJson(r);
        printLine(`removed VM ${name}${o.deleteFiles ? ` and ${r.deleted_files.length} file(s)` : ' (files kept)'}`);
        for (const g of r.left_groups) {
          const parts = [
            g.snapshots_changed.length ? `group snapshots ${g.snapshots_changed.join(', ')} keep the other members` : '',
            g.snapshots_deleted.length ? `group snapshots ${g.snapshots_deleted.join(', ')} deleted (${name} was their only member)` : '',
            g.group_deleted ? 'the group had no member left and was deleted' : '',
          ].filter(Boolean);
          printLine(`  left group ${g.group}${parts.length ? `: ${parts.join('; ')}` : ''}`);
        }
      }),
    );
}
