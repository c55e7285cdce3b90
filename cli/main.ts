/**
 * clonebox command line. Parses arguments and renders output; the work happens in the library
 * (src/index.ts, the only module of src/ the CLI imports), which loads its heavy modules only when a
 * method is called, so that start-up stays fast.
 */
import { Command, CommanderError } from 'commander';
import { registerBundle } from './commands/bundle.js';
import { registerConfig } from './commands/config.js';
import { registerDemo } from './commands/demo.js';
import { registerImage } from './commands/image.js';
import { registerSchedule } from './commands/schedule.js';
import { registerSnapshot } from './commands/snapshot.js';
import { registerSync } from './commands/sync.js';
import { registerDht, registerTeam } from './commands/team.js';
import { registerVm } from './commands/vm.js';
import { reportError, usage } from './output.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('clonebox')
    .description('VM disk snapshots on qcow2: snapshot trees, deduplicated bundles, team sync')
    .version('0.1.0')
    .option('--home <dir>', 'state directory (default: $CLONEBOX_HOME or ~/.clonebox)')
    .showHelpAfterError(false)
    .configureOutput({
      writeErr: () => undefined, // usage errors are printed by main() in the contract's format
    })
    .exitOverride();
  registerVm(program);
  const snapshotCommand = registerSnapshot(program);
  registerBundle(snapshotCommand, program);
  registerSync(snapshotCommand);
  registerTeam(program);
  registerDht(program);
  registerImage(program);
  registerDemo(program);
  registerConfig(program);
  registerSchedule(program);
  // Usage errors in subcommands must reach main() too, not exit inside commander.
  const walk = (c: Command) => {
    c.exitOverride();
    c.configureOutput({ writeErr: () => undefined });
    c.commands.forEach(walk);
  };
  program.commands.forEach(walk);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  // `clonebox snapshot list --tree | head`: a closed pipe ends the output, not the process with a trace.
  // Any other write error (no space left: `> /dev/full`) reaches the writer that waits for it (export
  // to `-` reports it as IO); output written without waiting fails the command at the end instead.
  let stdoutFailure: NodeJS.ErrnoException | null = null;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    stdoutFailure ??= err;
  });
  process.once('exit', () => {
    if (stdoutFailure === null || process.exitCode) return;
    const e: NodeJS.ErrnoException = stdoutFailure;
    process.stderr.write(`clonebox: error: cannot write to standard output: ${e.code === 'ENOSPC' ? 'no space left on device' : e.message}\n`);
    process.exitCode = 1;
  });
  const program = buildProgram();
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
        process.exitCode = 0;
        return;
      }
      const msg = err.message.replace(/^error: /, '');
      process.exitCode = reportError(usage(msg, 'see `clonebox --help`'), json);
      return;
    }
    process.exitCode = reportError(err, json);
  }
}
