/** `clonebox man`: the manual page clonebox(1), generated from the command definitions (cli/man.ts). */
import type { Command } from 'commander';
import { renderManPage } from '../man.js';

export function registerMan(program: Command): void {
  program
    .command('man')
    .description('print the manual page clonebox(1) in roff: `clonebox man | man -l -`, or save it as clonebox.1 in a man directory')
    .action(() => {
      process.stdout.write(renderManPage(program, program.version() ?? ''));
    });
}
