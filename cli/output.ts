/** Rendering: JSON documents, tables, and the contract's one-line errors. No business logic here. */
import { CloneboxError } from '../src/errors.js';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLine(text = ''): void {
  process.stdout.write(`${text}\n`);
}

export function warn(message: string): void {
  process.stderr.write(`clonebox: warning: ${message}\n`);
}

/** Left-aligned columns; numbers (right: true) right-aligned. */
export function table(headers: string[], rows: string[][], right: boolean[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (cells: string[]) =>
    cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [fmt(headers), ...rows.map(fmt)].join('\n');
}

/** Prints an error as the contract says and returns the exit code to use. */
export function reportError(err: unknown, json: boolean): number {
  const e = err instanceof CloneboxError
    ? err
    : new CloneboxError('INTERNAL', `${(err as Error)?.message ?? String(err)}`, { hint: 'this is a bug in clonebox; please report it with the command you ran' });
  process.stderr.write(`clonebox: error: ${e.message}\n`);
  if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
  if (e.code === 'INTERNAL' && process.env.CLONEBOX_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  if (json) printJson({ error: { code: e.code, message: e.message } });
  return e.exitCode;
}
