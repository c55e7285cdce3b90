import path from 'node:path';
import type { Command } from 'commander';
import { formatBytes } from '../../src/index.js';
import { printJson, printLine, table } from '../output.js';
import { action } from '../run.js';

export function registerImage(program: Command): void {
  const image = program.command('image').description('inspect qcow2 images (no qemu-img needed)');

  image
    .command('info')
    .argument('<file>', 'qcow2 image')
    .description('show an image header and its allocation')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string) => {
        const info = await ctx.cb.images.info(file);
        if (ctx.json) return printJson(info);
        printLine(`image: ${path.resolve(file)}`);
        printLine(`format: qcow2 (version ${info.version})`);
        printLine(`virtual size: ${formatBytes(info.virtual_size)} (${info.virtual_size} bytes)`);
        printLine(`cluster size: ${info.cluster_size}`);
        printLine(`backing file: ${info.backing_file ?? '(none)'}${info.backing_format ? ` (format ${info.backing_format})` : ''}`);
        printLine(`compression type: ${info.compression_type}`);
        printLine(`extended L2: ${info.extended_l2 ? 'yes' : 'no'}`);
        printLine(`data: ${formatBytes(info.data_bytes)}, zero: ${formatBytes(info.zero_bytes)}`);
        if (info.backing_chain.length > 1 || info.backing_chain[0]?.refused) {
          printLine('backing chain:');
          for (const l of info.backing_chain) {
            printLine(`  ${l.path} (${l.format})`);
            if (l.refused) printLine(`    not followed: ${l.refused}`);
          }
        }
      }),
    );

  image
    .command('map')
    .argument('<file>', 'qcow2 image')
    .description('list the extents this file alone holds')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, file: string) => {
        const extents = await ctx.cb.images.map(file);
        if (ctx.json) return printJson(extents);
        printLine(
          table(
            ['offset', 'length', 'kind'],
            extents.map((e) => [String(e.offset), String(e.length), e.kind]),
            [true, true, false],
          ),
        );
      }),
    );
}
