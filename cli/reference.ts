/**
 * The command reference (docs/cli.md) rendered from the command definitions, so the page cannot drift
 * from what the CLI parses: `npm run docs:cli` writes it (scripts/docs-cli.mjs) and a unit test fails
 * when the committed page differs.
 */
import { type Argument, type Command, Help, type Option } from 'commander';
import { defaultText, fullName } from './help.js';

/** Text for a Markdown table cell or paragraph: `<...>` outside code spans would be read as HTML. */
function text(s: string): string {
  return s
    .split(/(`[^`]*`)/)
    .map((part, i) => (i % 2 === 1 ? part : part.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')))
    .join('')
    .replace(/\|/g, '\\|');
}

function code(s: string): string {
  return `\`${s.replace(/\|/g, '\\|')}\``;
}

function defaultOf(o: { defaultValue?: unknown; defaultValueDescription?: string }): string {
  const d = defaultText(o);
  if (d === null) return '';
  return o.defaultValueDescription !== undefined ? text(d) : code(d);
}

/** GitHub's anchor for a heading of plain words. */
function anchor(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^a-z0-9 -]/g, '')
    .replace(/ /g, '-');
}

function optionRows(options: readonly Option[]): string[] {
  const rows = ['| option | description | default |', '| --- | --- | --- |'];
  for (const o of options) {
    const notes: string[] = [];
    if (o.mandatory) notes.push('required');
    if (o.argChoices) notes.push(`one of ${o.argChoices.map(code).join(', ')}`);
    if (o.variadic) notes.push('repeatable');
    if (o.envVar) notes.push(`environment: ${code(o.envVar)}`);
    const desc = [text(o.description), ...notes.map((n) => `(${n})`)].filter((s) => s !== '').join(' ');
    rows.push(`| ${code(o.flags)} | ${desc} | ${defaultOf(o)} |`);
  }
  return rows;
}

function argumentTerm(a: Argument): string {
  const name = `${a.name()}${a.variadic ? '...' : ''}`;
  return a.required ? `<${name}>` : `[${name}]`;
}

function argumentRows(args: readonly Argument[]): string[] {
  const rows = ['| argument | description | default |', '| --- | --- | --- |'];
  for (const a of args) {
    const notes = a.argChoices ? [`(one of ${a.argChoices.map(code).join(', ')})`] : [];
    const desc = [text(a.description), ...notes].filter((s) => s !== '').join(' ');
    rows.push(`| ${code(argumentTerm(a))} | ${desc} | ${defaultOf(a)} |`);
  }
  return rows;
}

/** Every command below `cmd`, depth first in definition order. */
function descendants(cmd: Command): Command[] {
  return cmd.commands.filter((c) => !hidden(c)).flatMap((c) => [c, ...descendants(c)]);
}

/** A command left out of help and of the reference (`__complete`, which only the completion scripts call). */
function hidden(cmd: Command): boolean {
  return Boolean((cmd as Command & { _hidden?: boolean })._hidden);
}

function section(cmd: Command, depth: number, help: Help, out: string[]): void {
  const title = fullName(cmd);
  out.push(`${'#'.repeat(Math.min(depth + 1, 6))} ${title}`, '');
  if (cmd.description()) out.push(text(cmd.description()), '');
  out.push('```', help.commandUsage(cmd), '```', '');
  if (cmd.registeredArguments.length) out.push(...argumentRows(cmd.registeredArguments), '');
  const options = cmd.options.filter((o) => !o.hidden);
  const shown = cmd.commands.filter((c) => !hidden(c));
  if (options.length) out.push(...optionRows(options), '');
  if (shown.length) {
    out.push('| command | description |', '| --- | --- |');
    for (const c of shown) out.push(`| [${code(fullName(c))}](#${anchor(fullName(c))}) | ${text(c.description())} |`);
    out.push('');
  }
  for (const c of shown) section(c, depth + 1, help, out);
}

/** docs/cli.md for `program` (the root command of buildProgram()). */
export function renderCliReference(program: Command): string {
  const help = new Help();
  const out: string[] = [
    `# ${program.name()} command reference`,
    '',
    '<!-- Generated from the command definitions (buildProgram() in cli/main.ts) by `npm run docs:cli`.',
    '     Do not edit: test/cli-reference.unit.test.ts fails when this page differs from what it writes. -->',
    '',
    text(program.description()),
    '',
    '```',
    help.commandUsage(program),
    '```',
    '',
    'Exit codes: 0 success, 1 operational error, 2 usage error. What the commands do beyond this reference:',
    '[cli-extensions.md](cli-extensions.md) and the design pages beside it.',
    '',
    '## Global options',
    '',
    ...optionRows(help.visibleOptions(program)),
    '',
    'Every command also takes `-h, --help`.',
    '',
    '## Commands',
    '',
    ...descendants(program).map((c) => `${'  '.repeat(depthOf(c) - 1)}- [${code(fullName(c))}](#${anchor(fullName(c))})`),
    '',
  ];
  for (const c of program.commands.filter((c) => !hidden(c))) section(c, 1, help, out);
  return `${out.join('\n').trimEnd()}\n`;
}

function depthOf(cmd: Command): number {
  let d = 0;
  for (let c = cmd.parent; c; c = c.parent) d++;
  return d;
}
