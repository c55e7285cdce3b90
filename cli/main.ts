/**
 * clonebox command line. Parses arguments and renders output; the work happens in the library
 * (src/index.ts, the only module of src/ the CLI imports), which loads its heavy modules only when a
 * method is called, so that start-up stays fast.
 */
import { Command, CommanderError, Option } from 'commander';
import { registerBundle } from './commands/bundle.js';
import { registerCompletion } from './commands/completion.js';
import { registerConfig } from './commands/config.js';
import { registerDemo } from './commands/demo.js';
import { registerGroup } from './commands/group.js';
import { registerImage } from './commands/image.js';
import { registerMan } from './commands/man.js';
import { registerSchedule } from './commands/schedule.js';
import { registerServe } from './commands/serve.js';
import { registerSnapshot, registerTimeTravel } from './commands/snapshot.js';
import { registerSync } from './commands/sync.js';
import { registerDht, registerTeam } from './commands/team.js';
import { registerVm } from './commands/vm.js';
import { fullName, helpConfiguration, rewriteHelpCommand } from './help.js';
import { reportError, usage } from './output.js';

/** What commander wrote to stderr (a group's help when its subcommand is missing), and which command failed. */
interface ParseState {
  stderr: string;
  failed: Command | null;
}

export function buildProgram(state: ParseState = { stderr: '', failed: null }): Command {
  const program = new Command();
  program
    .name('clonebox')
    .description('VM disk snapshots on qcow2: snapshot trees, deduplicated bundles, team sync')
    .version('0.1.0')
    .addOption(new Option('--home <dir>', 'state directory').default(undefined, '$CLONEBOX_HOME, else ~/.clonebox'))
    .addOption(new Option('-q, --quiet', 'no progress lines or notes on stderr (results, warnings and errors stay)').conflicts('verbose'))
    .addOption(new Option('-v, --verbose', 'also the stack of an internal error and the phase timings of a sync'))
    .configureHelp(helpConfiguration)
    .showHelpAfterError(false);
  registerVm(program);
  registerGroup(program);
  const snapshotCommand = registerSnapshot(program);
  registerBundle(snapshotCommand, program);
  registerSync(snapshotCommand);
  registerTimeTravel(program);
  registerTeam(program);
  registerDht(program);
  registerImage(program);
  registerDemo(program);
  registerConfig(program);
  registerSchedule(program);
  registerServe(program);
  registerCompletion(program);
  registerMan(program);
  // Usage errors in any command must reach main() (printed in the contract's format), not exit
  // inside commander; main() also needs to know which command failed, for the hint.
  const walk = (c: Command) => {
    c.exitOverride((err) => {
      state.failed ??= c;
      throw err;
    });
    c.configureOutput({
      writeErr: (s) => {
        state.stderr += s;
      },
      outputError: () => undefined,
    });
    c.commands.forEach(walk);
  };
  walk(program);
  return program;
}

/** The usage error for a parse failure of `cmd`, with a hint at its own help (and at --name where a name was given as an argument). */
function parseError(err: CommanderError, cmd: Command): ReturnType<typeof usage> {
  const msg = err.message.replace(/^error: /, '');
  const own = `see \`${fullName(cmd)} --help\``;
  if (err.code === 'commander.excessArguments' && cmd.options.some((o) => o.long === '--name')) {
    const args = cmd.args;
    const extra = args[cmd.registeredArguments.length];
    if (extra !== undefined && !extra.startsWith('-')) {
      const fixed = [...args.slice(0, cmd.registeredArguments.length), '--name', extra].join(' ');
      return usage(msg, `the snapshot is named with --name: \`${fullName(cmd)} ${fixed}\`; ${own}`);
    }
  }
  return usage(msg, own);
}

/** The user's words after the program name, without global options. */
function hasWords(argv: string[]): boolean {
  const user = argv.slice(2);
  for (let i = 0; i < user.length; i++) {
    if (user[i] === '--home') i++;
    else if (!user[i]!.startsWith('--home=')) return true;
  }
  return false;
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
  const state: ParseState = { stderr: '', failed: null };
  const program = buildProgram(state);
  const json = argv.includes('--json');
  try {
    await program.parseAsync(rewriteHelpCommand(argv));
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') {
        process.exitCode = 0;
        return;
      }
      const cmd = state.failed ?? program;
      if (err.code === 'commander.help') {
        // A group without its subcommand. `clonebox` alone is a request for help (stdout, exit 0, as
        // docker and npm do); `clonebox vm` is an incomplete command (help on stderr, exit 2).
        if (cmd === program && !hasWords(argv)) {
          process.stdout.write(program.helpInformation());
          process.exitCode = 0;
          return;
        }
        process.stderr.write(state.stderr);
        const names = cmd.commands.map((c) => c.name()).join(', ');
        process.exitCode = reportError(usage(`\`${fullName(cmd)}\` needs a command: ${names}`, `see \`${fullName(cmd)} --help\``), json);
        return;
      }
      process.exitCode = reportError(parseError(err, cmd), json);
      return;
    }
    process.exitCode = reportError(err, json);
  }
}
