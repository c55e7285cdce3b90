/**
 * Times as users type them for `restore --at` and `time-travel --to`: what `snapshot list` shows
 * (`2026-11-22 10:00:05 +01:00`), ISO-8601, a date, a time of today, `yesterday 14:30`, `2h ago`,
 * `3 days ago`, `now`. A time stands for the whole span it names: `10:00:05` is that second up to its
 * last millisecond, `2026-11-22` the whole day, so a snapshot shown as made at 10:00:05 (created at
 * 10:00:05.734) is picked by the time the list shows. Bare numbers (`5`) and anything else are refused
 * rather than guessed (JavaScript's Date.parse reads `5` as 2001-05-01).
 */
import { now as clockNow } from '../clock.js';
import { CloneboxError } from '../errors.js';

export interface ParsedTime {
  /** The last millisecond of the span the text names: snapshots created at or before it qualify. */
  until: Date;
}

const UNIT_MS: Record<string, number> = {
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
  w: 604_800_000,
  week: 604_800_000,
  weeks: 604_800_000,
};

const CALENDAR_UNITS: Record<string, 'month' | 'year'> = { month: 'month', months: 'month', y: 'year', year: 'year', years: 'year' };

const FORMS =
  'use what `snapshot list` shows (2026-11-22 10:00:05 +01:00), ISO-8601 (2026-11-22T09:00:05Z), a date, HH:MM (today), "yesterday 14:30", or "2h ago" / "3 days ago"';

function bad(text: string, why = 'unreadable time'): CloneboxError {
  return CloneboxError.USAGE(`${why} ${JSON.stringify(text)}`, { hint: FORMS });
}

/** A wall-clock time HH:MM[:SS[.fff]] on the local day of `day`: the end of the span it names. */
function onDay(day: Date, clock: string | undefined, text: string): Date {
  const d = new Date(day.getFullYear(), day.getMonth(), day.getDate());
  if (clock === undefined) return new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1, 0, 0, 0, -1);
  const m = /^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3})\d*)?)?$/.exec(clock);
  if (!m) throw bad(text);
  const [h, min, s, ms] = [Number(m[1]), Number(m[2]), m[3] === undefined ? null : Number(m[3]), m[4]];
  if (h > 23 || min > 59 || (s !== null && s > 59)) throw bad(text, 'no such time');
  if (s === null) return new Date(d.getFullYear(), d.getMonth(), d.getDate(), h, min, 59, 999);
  if (ms === undefined) return new Date(d.getFullYear(), d.getMonth(), d.getDate(), h, min, s, 999);
  return new Date(d.getFullYear(), d.getMonth(), d.getDate(), h, min, s, Number(ms.padEnd(3, '0')));
}

const ABSOLUTE = /^(\d{4})-(\d{2})-(\d{2})(?:[t ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?\s*(z|utc|gmt|[+-]\d{2}(?::?\d{2})?)?$/;

function absolute(text: string, m: RegExpExecArray): Date {
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const h = m[4] === undefined ? null : Number(m[4]);
  const min = m[5] === undefined ? 0 : Number(m[5]);
  const s = m[6] === undefined ? null : Number(m[6]);
  const frac = m[7];
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || (h !== null && h > 23) || min > 59 || (s !== null && s > 59)) throw bad(text, 'no such time');
  // The end of the span: the day, the minute, the second, or the millisecond given.
  const parts: [number, number, number, number, number, number, number] =
    h === null
      ? [y, mo - 1, d, 23, 59, 59, 999]
      : s === null
        ? [y, mo - 1, d, h, min, 59, 999]
        : frac === undefined
          ? [y, mo - 1, d, h, min, s, 999]
          : [y, mo - 1, d, h, min, s, Number(frac.slice(0, 3).padEnd(3, '0'))];
  const zone = m[8];
  let t: number;
  if (zone === undefined) {
    const local = new Date(...parts);
    if (local.getDate() !== d) throw bad(text, 'no such date');
    t = local.getTime();
  } else {
    t = Date.UTC(...parts);
    if (new Date(t).getUTCDate() !== d) throw bad(text, 'no such date');
    if (zone !== 'z' && zone !== 'utc' && zone !== 'gmt') {
      const z = /^([+-])(\d{2}):?(\d{2})?$/.exec(zone)!;
      const offset = (Number(z[2]) * 60 + Number(z[3] ?? 0)) * 60_000;
      if (Number(z[2]) > 14 || Number(z[3] ?? 0) > 59) throw bad(text, 'no such time zone offset in');
      t -= z[1] === '+' ? offset : -offset;
    }
  }
  return new Date(t);
}

/** Reads a time as described at the top of this module; relative forms count from `now` (CLONEBOX_NOW when set). */
export function parseTime(input: string, now: Date = clockNow()): ParsedTime {
  const text = input.trim().toLowerCase().replace(/\s+/g, ' ');
  if (text === 'now') return { until: now };
  let m = /^(\d+(?:\.\d+)?) ?([a-z]+) ago$/.exec(text);
  if (m) {
    const n = Number(m[1]);
    const unit = m[2]!;
    if (UNIT_MS[unit] !== undefined) return { until: new Date(now.getTime() - n * UNIT_MS[unit]) };
    const cal = CALENDAR_UNITS[unit];
    if (cal && Number.isInteger(n)) {
      const d = new Date(now);
      if (cal === 'month') d.setMonth(d.getMonth() - n);
      else d.setFullYear(d.getFullYear() - n);
      return { until: d };
    }
    throw bad(input, `unknown unit ${JSON.stringify(m[2])} in`);
  }
  m = /^(today|yesterday)(?: (?:at )?(.+))?$/.exec(text);
  if (m) {
    const day = new Date(now.getFullYear(), now.getMonth(), now.getDate() - (m[1] === 'yesterday' ? 1 : 0));
    return { until: onDay(day, m[2], input) };
  }
  if (/^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(text)) return { until: onDay(now, text, input) };
  m = ABSOLUTE.exec(text);
  if (m) return { until: absolute(input, m) };
  if (/^\d+$/.test(text)) throw bad(input, 'ambiguous time');
  throw bad(input);
}
