/**
 * When a named policy runs: its `when` (a daily "HH:MM", a list of them, or cron expressions, read by
 * croner) in local time or in its time zone. Pure functions of the policy and a time; the scheduler
 * (scheduler.ts) decides what is due from them. croner is loaded with this module, which only the
 * commands that read schedules import.
 */
import { Cron } from 'croner';
import { CloneboxError } from '../errors.js';
import type { NamedPolicy } from './settings.js';

const DAILY = /^([01]?\d|2[0-3]):([0-5]\d)$/;

/** The cron form of one `when` entry: "HH:MM" becomes "M H * * *"; a cron expression is checked and kept. */
export function cronOf(when: string, timezone: string | null): string {
  const text = when.trim();
  const daily = DAILY.exec(text);
  const expr = daily ? `${Number(daily[2])} ${Number(daily[1])} * * *` : text;
  const fields = expr.split(/\s+/).length;
  if (fields !== 5 && fields !== 6) {
    // croner would also take an ISO date (a one-off run): a schedule must repeat.
    throw CloneboxError.USAGE(
      `invalid schedule ${JSON.stringify(when)}: neither a daily time "HH:MM" nor a cron expression of 5 fields (6 with seconds first)`,
      {
        hint: 'e.g. "00:00", ["09:00", "17:30"], "0 */6 * * *" (every 6 hours), "0 3 * * 1" (Mondays at 03:00)',
      },
    );
  }
  try {
    new Cron(expr, { paused: true, ...(timezone ? { timezone } : {}) });
  } catch (err) {
    throw CloneboxError.USAGE(`invalid schedule ${JSON.stringify(when)}: ${(err as Error).message.replace(/^CronPattern: /, '')}`, {
      hint: 'use a daily time "HH:MM", a list of them, or a cron expression such as "0 */6 * * *"',
    });
  }
  return expr;
}

/** Whether `tz` is an IANA time zone this Node knows. */
export function checkTimezone(tz: string): string {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
  } catch {
    throw CloneboxError.USAGE(`unknown time zone ${JSON.stringify(tz)}`, { hint: 'use an IANA name such as Europe/Paris or UTC' });
  }
  return tz;
}

/** The first time the policy is due strictly after `after`, or null when it has no schedule. */
export function nextRun(p: Pick<NamedPolicy, 'when' | 'timezone'>, after: Date): Date | null {
  let best: Date | null = null;
  for (const expr of p.when) {
    const next = new Cron(expr, { paused: true, ...(p.timezone ? { timezone: p.timezone } : {}) }).nextRun(after);
    if (next && (best === null || next < best)) best = next;
  }
  return best;
}
