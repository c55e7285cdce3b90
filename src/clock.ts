/**
 * THE clock of clonebox. Every time that is recorded or compared with recorded times (snapshot and
 * VM creation, retention, expiry, schedules) comes from now(), so that `CLONEBOX_NOW=<ISO time>`
 * makes every command live at that instant: schedules and retention can be tested over weeks in
 * seconds. Elapsed-time measurements (throughput, timeouts, lock waits) use the real clock.
 */
import { CloneboxError } from './errors.js';

/** The current time: CLONEBOX_NOW when set (read at each call, so a test may step it), else the system clock. */
export function now(): Date {
  const fixed = process.env.CLONEBOX_NOW;
  if (fixed === undefined || fixed === '') return new Date();
  const t = Date.parse(fixed);
  if (Number.isNaN(t)) {
    throw CloneboxError.USAGE(`CLONEBOX_NOW=${JSON.stringify(fixed)} is not a time`, { hint: 'use ISO-8601, e.g. 2026-11-22T10:00:00Z, or unset it' });
  }
  return new Date(t);
}

/** now() as an ISO-8601 string (UTC), the form records keep. */
export function nowIso(): string {
  return now().toISOString();
}
