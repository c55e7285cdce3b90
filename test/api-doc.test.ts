/**
 * The example of docs/api.md, run as it stands there (against the sources: 'clonebox' is this
 * repository's src/index.ts), so that the documentation and the library cannot drift apart.
 */

import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/cli.js';

/** The TypeScript block between the example markers of docs/api.md. */
async function docExample(): Promise<string> {
  const doc = await readFile(path.join(REPO_ROOT, 'docs', 'api.md'), 'utf8');
  const m = /<!-- example:start -->\s*```ts\n([\s\S]*?)```\s*<!-- example:end -->/.exec(doc);
  if (!m) throw new Error('docs/api.md has no example between <!-- example:start --> and <!-- example:end -->');
  return m[1]!;
}

// Beside the tests (vitest transforms TypeScript under the project root); removed afterwards.
const file = path.join(REPO_ROOT, 'test', `.doc-example-${process.pid}.ts`);
afterAll(() => rm(file, { force: true }));

it('runs the example of docs/api.md', async () => {
  const code = await docExample();
  expect(code).toMatch(/from 'clonebox'/);
  await writeFile(file, code.replace(/from 'clonebox'/g, `from ${JSON.stringify(path.join(REPO_ROOT, 'src', 'index.ts'))}`));
  const lines: string[] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => {
    lines.push(args.join(' '));
  };
  try {
    await import(/* @vite-ignore */ file);
  } finally {
    console.log = log;
  }
  expect(lines).toContain('current: app, roots: base');
  expect(lines.some((l) => /^exported base, app: /.test(l))).toBe(true);
  expect(lines).toContain('imported base, app; current app');
  expect(lines.some((l) => l.startsWith('SNAPSHOT_NOT_FOUND: '))).toBe(true);
}, 120_000);
