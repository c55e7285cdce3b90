/**
 * docs/cli.md is the page `npm run docs:cli` writes from the command definitions: it must be committed
 * as written, and it must name every command, argument and option the CLI parses.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../cli/main.js';
import { renderCliReference } from '../cli/reference.js';
import { REPO_ROOT } from './helpers/cli.js';

/** Every command but the hidden ones (`__complete`, which only the completion scripts call). */
function all(cmd: Command): Command[] {
  return cmd.commands.filter((c) => !(c as Command & { _hidden?: boolean })._hidden).flatMap((c) => [c, ...all(c)]);
}

describe('docs/cli.md', () => {
  it('is what `npm run docs:cli` writes from the command definitions', async () => {
    const committed = await readFile(path.join(REPO_ROOT, 'docs', 'cli.md'), 'utf8');
    // On failure: run `npm run docs:cli` and commit docs/cli.md.
    expect(committed).toBe(renderCliReference(buildProgram()));
  });

  it('names every command with its usage, arguments and options', () => {
    const program = buildProgram();
    const page = renderCliReference(program);
    const commands = all(program);
    expect(commands.length).toBeGreaterThan(30);
    for (const c of commands) {
      const name = [c.name()];
      for (let p = c.parent; p; p = p.parent) name.unshift(p.name());
      expect(page, name.join(' ')).toContain(`\n${'#'.repeat(name.length)} ${name.join(' ')}\n`);
      const body = page.split(`${'#'.repeat(name.length)} ${name.join(' ')}\n`)[1]!.split(/\n#{2,6} /)[0]!;
      for (const a of c.registeredArguments) expect(body, `${name.join(' ')} ${a.name()}`).toContain(a.name());
      for (const o of c.options) expect(body, `${name.join(' ')} ${o.flags}`).toContain(`| \`${o.flags}\` |`);
    }
    for (const o of program.options) expect(page).toContain(`| \`${o.flags}\` |`);
  });
});
