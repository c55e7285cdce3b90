/**
 * Crash testing: `CLONEBOX_CRASH_AT=N` makes the process SIGKILL itself at the N-th crash point it
 * passes, so a test can stop a multi-step operation at every step in turn and check what the next
 * command makes of it. One counter for the whole process: the VM journal's steps (store/journal.ts) and
 * the archive's (src/archive/) count alike.
 *
 * `CLONEBOX_CRASH_AT=NAME` (not a number) kills at the first crash point of that name instead: a step
 * that runs beside others (a pull's syncs of placed blocks) has no fixed number.
 *
 * `CLONEBOX_CRASH_LOG=FILE` appends the name of every crash point passed to FILE (one per line, before
 * the kill), so a test can say at which named step the process died and check that each was reached.
 */
import { appendFileSync } from 'node:fs';

let counter = 0;

/** A numbered point at which a crash test may kill us; `name` says which step it is (for the log). */
export function crashPoint(name: string): void {
  const spec = process.env.CLONEBOX_CRASH_AT;
  const at = Number(spec);
  const log = process.env.CLONEBOX_CRASH_LOG;
  if (log) appendFileSync(log, `${name}\n`);
  if (spec === name) process.kill(process.pid, 'SIGKILL');
  if (!Number.isInteger(at) || at <= 0) return;
  counter++;
  if (counter === at) process.kill(process.pid, 'SIGKILL');
}
