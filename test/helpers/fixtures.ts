/**
 * The committed reference files in fixtures/ (made by scripts/make-fixtures.mjs): paths, the expected
 * values beside them, and gunzipped copies of the compressed ones in a temp dir.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { REPO_ROOT } from './cli.js';

export const FIXTURES = path.join(REPO_ROOT, 'fixtures');

export async function readExpected<T>(...parts: string[]): Promise<T> {
  return JSON.parse(await readFile(path.join(FIXTURES, ...parts, 'expected.json'), 'utf8')) as T;
}

/** `fixtures/<dir>/<file>` itself, or for `*.gz` its content written into `into` (same name, no .gz). */
export async function fixtureFile(dir: string, file: string, into: string): Promise<string> {
  const src = path.join(FIXTURES, dir, file);
  if (!file.endsWith('.gz')) return src;
  const out = path.join(into, file.slice(0, -3));
  await writeFile(out, gunzipSync(await readFile(src)));
  return out;
}
