/** Times for `restore --at` and `time-travel --to` (src/snapshots/when.ts): what is read, as what span, and what is refused. */
import { describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { parseTime } from '../src/snapshots/when.js';

// 2026-11-22 10:00:00.000 local time: relative forms count from here.
const NOW = new Date(2026, 10, 22, 10, 0, 0, 0);
const until = (s: string) => parseTime(s, NOW).until;

describe('parseTime', () => {
  it('reads a time to the second as that whole second, in the zone given', () => {
    expect(until('2026-11-22 10:00:05 +01:00').toISOString()).toBe('2026-11-22T09:00:05.999Z');
    expect(until('2026-11-22T09:00:05Z').toISOString()).toBe('2026-11-22T09:00:05.999Z');
    expect(until('2026-11-22T09:00:05.250Z').toISOString()).toBe('2026-11-22T09:00:05.250Z');
    expect(until('2026-11-22 04:00:05 -0500').toISOString()).toBe('2026-11-22T09:00:05.999Z');
    expect(until('2026-11-22 09:00:05 UTC').toISOString()).toBe('2026-11-22T09:00:05.999Z');
  });

  it('reads a time without a zone as local time, and a date or minute as its whole span', () => {
    expect(until('2026-11-22 10:00:05')).toEqual(new Date(2026, 10, 22, 10, 0, 5, 999));
    expect(until('2026-11-22 10:00')).toEqual(new Date(2026, 10, 22, 10, 0, 59, 999));
    expect(until('2026-11-21')).toEqual(new Date(2026, 10, 21, 23, 59, 59, 999));
    expect(until('08:30')).toEqual(new Date(2026, 10, 22, 8, 30, 59, 999));
  });

  it('reads relative times from now', () => {
    expect(until('now')).toEqual(NOW);
    expect(until('2h ago')).toEqual(new Date(NOW.getTime() - 2 * 3600_000));
    expect(until('3 days ago')).toEqual(new Date(NOW.getTime() - 3 * 86_400_000));
    expect(until('90 min ago')).toEqual(new Date(NOW.getTime() - 90 * 60_000));
    expect(until('1 week ago')).toEqual(new Date(NOW.getTime() - 7 * 86_400_000));
    expect(until('2 months ago')).toEqual(new Date(2026, 8, 22, 10, 0, 0, 0));
    expect(until('yesterday 14:30')).toEqual(new Date(2026, 10, 21, 14, 30, 59, 999));
    expect(until('Yesterday')).toEqual(new Date(2026, 10, 21, 23, 59, 59, 999));
    expect(until('today 09:15:30')).toEqual(new Date(2026, 10, 22, 9, 15, 30, 999));
  });

  it.each([
    ['5', /ambiguous time "5"/],
    ['20261122', /ambiguous time/],
    ['last tuesday', /unreadable time/],
    ['2 fortnights ago', /unknown unit "fortnights"/],
    ['2026-02-30 10:00', /no such date/],
    ['2026-11-22 25:00', /no such time/],
    ['yesterday 7pm', /unreadable time/],
    ['', /unreadable time/],
  ])('refuses %j as a usage error with the accepted forms', (text, message) => {
    let err: unknown;
    try {
      parseTime(text, NOW);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CloneboxError);
    const e = err as CloneboxError;
    expect(e.code).toBe('USAGE');
    expect(e.message).toMatch(message);
    expect(e.hint).toMatch(/2h ago/);
  });
});
