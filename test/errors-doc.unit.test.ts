/**
 * docs/errors.md is the reference of the error codes that `--json` users and library callers rely on.
 * This test keeps its table equal to ERROR_CODES in src/errors.ts (code, exit code, meaning, in the
 * same order) and its "raised in" column equal to where src/ and cli/ raise each code, and it fails
 * for a declared code that nothing raises (a dead code in the contract).
 *
 * After changing the table or moving a throw site: CLONEBOX_UPDATE_DOCS=1 npx vitest run
 * test/errors-doc.unit.test.ts rewrites the table in the doc (and only the table).
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '../src/errors.js';

const ROOT = path.resolve(import.meta.dirname, '..');
const DOC = path.join(ROOT, 'docs', 'errors.md');
const HEADER = '| code | exit | meaning | raised in |';
const CODES = Object.keys(ERROR_CODES) as ErrorCode[];

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...(await sourceFiles(rel)));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

/** The room a file belongs to: its top folder under src/ (src/qcow2/), a top-level src file, or cli/. */
function roomOf(file: string): string {
  const parts = file.split('/');
  if (parts[0] === 'src') return parts.length > 2 ? `src/${parts[1]}/` : file;
  return `${parts[0]}/`;
}

/**
 * Where each code is raised, by room. Raising means constructing the error: `new CloneboxError('X'`,
 * `CloneboxError.X(`, `super('X'` in a subclass, or the usageError/ioError helpers; comparing a
 * caught error's code is not raising it.
 */
async function raisedIn(): Promise<Map<ErrorCode, string[]>> {
  const rooms = new Map<ErrorCode, Set<string>>(CODES.map((c) => [c, new Set<string>()]));
  const pattern = /CloneboxError\(\s*'([A-Z0-9_]+)'|CloneboxError\.([A-Z0-9_]+)\(|\bsuper\(\s*'([A-Z0-9_]+)'|\b(usageError|ioError)\(/g;
  const files = [...(await sourceFiles('src')), ...(await sourceFiles('cli'))].filter((f) => f !== 'src/errors.ts');
  for (const file of files) {
    const text = await readFile(path.join(ROOT, file), 'utf8');
    for (const m of text.matchAll(pattern)) {
      const code = m[1] ?? m[2] ?? m[3] ?? (m[4] === 'usageError' ? 'USAGE' : 'IO');
      rooms.get(code as ErrorCode)?.add(roomOf(file));
    }
  }
  return new Map([...rooms].map(([c, s]) => [c, [...s].sort()]));
}

function expectedRows(raised: Map<ErrorCode, string[]>): string[] {
  return CODES.map((code) => {
    const { exit, meaning } = ERROR_CODES[code];
    const where = (raised.get(code) ?? []).map((r) => `\`${r}\``).join(', ');
    return `| \`${code}\` | ${exit} | ${meaning} | ${where} |`;
  });
}

/** The doc's code table: the header line, the separator, then every row up to the first non-row line. */
function docTable(doc: string): { start: number; rows: string[] } {
  const lines = doc.split('\n');
  const start = lines.indexOf(HEADER);
  if (start < 0) throw new Error(`docs/errors.md has no line "${HEADER}"`);
  const rows: string[] = [];
  for (let i = start + 2; i < lines.length && lines[i]!.startsWith('|'); i++) rows.push(lines[i]!);
  return { start, rows };
}

describe('docs/errors.md', () => {
  it('holds one table row per code of ERROR_CODES, in order, with its exit code, meaning and rooms', async () => {
    const doc = await readFile(DOC, 'utf8');
    const { start, rows } = docTable(doc);
    const want = expectedRows(await raisedIn());
    if (process.env.CLONEBOX_UPDATE_DOCS === '1' && rows.join('\n') !== want.join('\n')) {
      const lines = doc.split('\n');
      lines.splice(start + 2, rows.length, ...want);
      await writeFile(DOC, lines.join('\n'));
      return;
    }
    expect(rows, 'docs/errors.md is stale: run CLONEBOX_UPDATE_DOCS=1 npx vitest run test/errors-doc.unit.test.ts').toEqual(want);
  });

  it('has no code that nothing raises', async () => {
    const raised = await raisedIn();
    expect(CODES.filter((c) => raised.get(c)!.length === 0)).toEqual([]);
  });

  it('has meanings that fit one table cell', () => {
    for (const code of CODES) expect(ERROR_CODES[code].meaning, code).toMatch(/^[^|\n]+$/);
  });
});
