/**
 * How `--help` (and docs/cli.md) describe options: one format for every note, `(required)`,
 * `(default: 64K)`, `(one of a, b)`, and no default shown for what has none to the user (an empty
 * list of a repeatable option, a boolean flag).
 */
import type { Command, HelpConfiguration, Option } from 'commander';

/** The default as the user reads it, or null when there is none worth showing. */
export function defaultText(o: { defaultValue?: unknown; defaultValueDescription?: string }): string | null {
  if (o.defaultValueDescription !== undefined) return o.defaultValueDescription;
  const v = o.defaultValue;
  if (v === undefined || typeof v === 'boolean') return null;
  if (Array.isArray(v) && v.length === 0) return null;
  return typeof v === 'string' || typeof v === 'number' ? String(v) : JSON.stringify(v);
}

/** The notes shown after an option's description, in help and in the reference. */
function optionNotes(o: Option): string[] {
  const notes: string[] = [];
  if (o.mandatory) notes.push('required');
  if (o.argChoices) notes.push(`one of ${o.argChoices.join(', ')}`);
  if (o.variadic) notes.push('repeatable');
  const d = defaultText(o);
  if (d !== null) notes.push(`default: ${d}`);
  if (o.envVar) notes.push(`environment: ${o.envVar}`);
  return notes;
}

export const helpConfiguration: HelpConfiguration = {
  // --home is defined once on the program; every subcommand's help lists it under "Global Options".
  showGlobalOptions: true,
  optionDescription(o: Option): string {
    return [o.description, ...optionNotes(o).map((n) => `(${n})`)].filter((s) => s !== '').join(' ');
  },
};

/** The full command name, e.g. `clonebox snapshot export`. */
export function fullName(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/**
 * `clonebox help snapshot export` as `clonebox snapshot export --help` (commander's own help command
 * looks only one level deep and would show the `snapshot` group). Global options before `help` stay.
 */
export function rewriteHelpCommand(argv: string[]): string[] {
  const user = argv.slice(2);
  let i = 0;
  while (i < user.length) {
    const t = user[i]!;
    if (t === '--home') i += 2;
    else if (t.startsWith('--home=')) i += 1;
    else break;
  }
  if (user[i] !== 'help') return argv;
  return [...argv.slice(0, 2), ...user.slice(0, i), ...user.slice(i + 1), '--help'];
}
