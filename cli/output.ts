/** Rendering: JSON documents, tables, warnings, and the contract's one-line errors. No business logic here. */
import { CloneboxError, type Warning } from '../src/index.js';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** `1 pack`, `2 packs`: a count with its noun in the right number (`plural` when not noun + s). */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

export function printLine(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/**
 * How talkative the command is (`--quiet`, `--verbose`), set once by run.ts before an action runs.
 * quiet: no progress lines and no informational notes on stderr (results, warnings and errors stay);
 * verbose: also the stack of an INTERNAL error and a sync's phase timings.
 */
export const verbosity = { quiet: false, verbose: false };

/** An informational line on stderr (what was resolved, what was kept); dropped by --quiet. */
export function note(text: string): void {
  if (!verbosity.quiet) process.stderr.write(`clonebox: ${text}\n`);
}

function warn(message: string): void {
  process.stderr.write(`clonebox: warning: ${message}\n`);
}

/** The library's warnings: a sync's notices are plain lines, everything else a warning line. */
export function printWarning(w: Warning): void {
  if (w.code === 'NOTICE') note(w.message);
  else warn(w.message);
}

/** A usage error (exit 2) found while parsing. */
export function usage(message: string, hint?: string): CloneboxError {
  return CloneboxError.USAGE(message, hint === undefined ? {} : { hint });
}

/** Left-aligned columns; numbers (right: true) right-aligned. */
export function table(headers: string[], rows: string[][], right: boolean[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (cells: string[]) =>
    cells
      .map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [fmt(headers), ...rows.map(fmt)].join('\n');
}

/** Prints an error as the contract says and returns the exit code to use. */
export function reportError(err: unknown, json: boolean): number {
  const e =
    err instanceof CloneboxError
      ? err
      : new CloneboxError('INTERNAL', `${(err as Error)?.message ?? String(err)}`, {
          hint: 'this is a bug in clonebox; please report it with the command you ran',
        });
  process.stderr.write(`clonebox: error: ${e.message}\n`);
  if (e.hint) process.stderr.write(`hint: ${e.hint}\n`);
  if (e.code === 'INTERNAL' && (process.env.CLONEBOX_DEBUG || verbosity.verbose) && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  if (json) printJson({ error: { code: e.code, message: e.message } });
  return e.exitCode;
}
