/**
 * `clonebox completion bash|zsh|fish` prints a completion script; the hidden `clonebox __complete --
 * WORDS...` answers the script at each Tab (cli/completion.ts).
 */
import type { Command } from 'commander';
import { Clonebox } from '../../src/index.js';
import { complete, completionScript } from '../completion.js';

export function registerCompletion(program: Command): void {
  program
    .command('completion')
    .description('print the shell completion script (commands, options, VM, snapshot and team names)')
    .addArgument(program.createArgument('<shell>', 'the shell to complete in').choices(['bash', 'zsh', 'fish']))
    .action((shell: 'bash' | 'zsh' | 'fish') => {
      process.stdout.write(completionScript(shell));
    });

  program
    .command('__complete', { hidden: true })
    .description('completion candidates for the words typed so far (used by the completion scripts)')
    .argument('[words...]')
    .action(async (words: string[] | undefined) => {
      const lines = await complete(program, words ?? [''], (home) =>
        Clonebox.open({ ...(home !== undefined ? { home } : {}), recover: false, onWarning: () => undefined }),
      );
      if (lines.length) process.stdout.write(`${lines.join('\n')}\n`);
    });
}
