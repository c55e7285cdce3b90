import type { Command } from 'commander';
import type { EffectiveConfig } from '../../src/index.js';
import { printJson, printLine } from '../output.js';
import { action } from '../run.js';

/** The configuration as YAML (yaml loads only for the commands that print it). */
async function toYaml(c: EffectiveConfig): Promise<string> {
  const { stringify } = await import('yaml');
  const head = c.source ? `# applied from ${c.source}\n` : '# no .clonebox.yaml applied: settings from `snapshot policy` or defaults\n';
  // The driver follows from disks or libvirt; leaving it out keeps the output a file `apply` takes as is.
  const { driver: _driver, ...vm } = c.vm;
  return head + stringify({ vm });
}

export function registerConfig(program: Command): void {
  program
    .command('apply')
    .argument('[file]', 'a .clonebox.yaml, or a directory holding one', '.clonebox.yaml')
    .description('make a VM match its .clonebox.yaml (registers it when the file names its disks); idempotent')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string) => {
        const r = await ctx.cb.config.apply(file);
        if (ctx.json) return printJson(r);
        const what = r.registered ? `registered ${r.vm} and applied` : r.changed ? `applied` : 'unchanged:';
        printLine(`${what} ${r.file}${r.registered || r.changed ? ` to ${r.vm}` : ` (${r.vm} already matches it)`}`);
        for (const g of r.groups) printLine(`  group ${g.name}: ${g.created ? 'created' : g.changed ? 'changed' : 'unchanged'}`);
      }),
    );

  const config = program.command('config').description('the .clonebox.yaml configuration of a VM');
  config
    .command('show')
    .argument('<vm>', 'the VM (see `clonebox vm list`)')
    .description("a VM's effective configuration (YAML in the file's schema, or --json)")
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, vm: string) => {
        const c = await ctx.cb.config.show(vm);
        if (ctx.json) return printJson(c);
        process.stdout.write(await toYaml(c));
      }),
    );
  config
    .command('check')
    .argument('<file>', 'a .clonebox.yaml, or a directory holding one')
    .description('validate a configuration file without applying it (every problem with FILE:LINE:COLUMN)')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string) => {
        const r = await ctx.cb.config.check(file);
        if (ctx.json) return printJson(r);
        printLine(
          `${r.file}: valid (VM ${r.vm}${r.policies.length ? `, policies ${r.policies.join(', ')}` : ''}${r.groups.length ? `, groups ${r.groups.join(', ')}` : ''})`,
        );
      }),
    );
}
