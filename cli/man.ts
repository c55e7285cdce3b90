/**
 * The manual page clonebox(1), in roff, rendered from the same command definitions as `--help`,
 * docs/cli.md and completion: `clonebox man | man -l -`, or `clonebox man > clonebox.1` for a
 * man directory.
 */
import { type Command, Help, type Option } from 'commander';
import { helpConfiguration } from './help.js';

/** Text safe in roff: backslashes doubled, a leading dot or quote escaped, dashes as minus signs in flags. */
function roff(s: string): string {
  return s
    .replace(/\\/g, '\\e')
    .replace(/^([.'])/gm, '\\&$1')
    .replace(/`([^`]*)`/g, '\\fB$1\\fR');
}

function flag(s: string): string {
  return roff(s).replace(/-/g, '\\-');
}

function hidden(cmd: Command): boolean {
  return Boolean((cmd as Command & { _hidden?: boolean })._hidden);
}

function options(out: string[], opts: readonly Option[]): void {
  for (const o of opts.filter((x) => !x.hidden)) {
    out.push('.TP', `.B ${flag(o.flags)}`, roff(helpConfiguration.optionDescription!(o)));
  }
}

function section(out: string[], cmd: Command, help: Help): void {
  if (hidden(cmd)) return;
  if (cmd.commands.length === 0) {
    out.push('.SS', `.B ${flag(help.commandUsage(cmd))}`, roff(cmd.description()));
    const args = cmd.registeredArguments.filter((a) => a.description);
    if (args.length) for (const a of args) out.push('.TP', `.I ${roff(a.name())}`, roff(a.description));
    options(
      out,
      cmd.options.filter((o) => o.long !== '--help'),
    );
  }
  for (const c of cmd.commands) section(out, c, help);
}

/** The whole manual page for `program` (the root command of buildProgram()). */
export function renderManPage(program: Command, version: string): string {
  const help = new Help();
  const out: string[] = [
    `.TH CLONEBOX 1 "" "clonebox ${version}" "User Commands"`,
    '.SH NAME',
    `clonebox \\- ${roff(program.description())}`,
    '.SH SYNOPSIS',
    '.B clonebox',
    '[\\fB\\-\\-home\\fR \\fIDIR\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...] [\\fB\\-\\-json\\fR]',
    '.SH DESCRIPTION',
    'Snapshots for QEMU/libvirt VM disks: snapshot trees on qcow2 images, offline bundles of snapshot chains',
    '(deduplicated, compressed, optionally encrypted) and sharing of chains with teammates.',
    'Every command takes \\fB\\-\\-home\\fR (or \\fBCLONEBOX_HOME\\fR) and most take \\fB\\-\\-json\\fR.',
    '.SH GLOBAL OPTIONS',
  ];
  options(out, program.options);
  out.push('.SH COMMANDS');
  for (const c of program.commands) section(out, c, help);
  out.push(
    '.SH EXIT STATUS',
    '0 success, 1 operational error, 2 usage error;',
    '.B snapshot run',
    "exits with its command's status.",
    '.SH ENVIRONMENT',
    '.TP',
    '.B CLONEBOX_HOME',
    'the state directory when \\fB\\-\\-home\\fR is not given (default \\fI~/.clonebox\\fR).',
    '.TP',
    '.B CLONEBOX_LOCK_WAIT_MS',
    'how long a command waits for a VM another clonebox process holds (default 5000).',
    '.TP',
    '.B CLONEBOX_DEBUG',
    'print the stack trace of internal errors.',
    '.SH SEE ALSO',
    '.BR qemu-img (1),',
    '.BR virsh (1);',
    `the documentation of each command: \\fBclonebox\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR and docs/ in the source.`,
  );
  return `${out.join('\n')}\n`;
}
