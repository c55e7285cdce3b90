/** Retention rules with restic's `forget` semantics, plus the max-snapshots / max-size caps. */
import { describe, expect, it } from 'vitest';
import { type Candidate, parseDuration, planPrune, validatePolicy } from '../src/snapshots/policy.js';

const H = 3_600_000;
const D = 24 * H;
/** Snapshots every `step` ms going back from a fixed local noon, newest first in names s0, s1... */
function series(n: number, step: number, size = 100): Candidate[] {
  const base = new Date(2026, 10, 22, 12, 0, 0).getTime();
  return Array.from({ length: n }, (_, i) => ({ name: `s${i}`, created_at: new Date(base - i * step).toISOString(), size_bytes: size }));
}
const kept = (c: Candidate[], p: Parameters<typeof planPrune>[1]) => planPrune(c, p).keep.map((k) => k.name);

describe('retention policy', () => {
  it('keeps everything when no keep rule is set', () => {
    expect(kept(series(5, H), {})).toEqual(['s0', 's1', 's2', 's3', 's4']);
  });

  it('keep-last keeps the newest N', () => {
    const p = planPrune(series(5, H), { keep_last: 2 });
    expect(p.keep.map((k) => k.name)).toEqual(['s0', 's1']);
    expect(p.remove.map((r) => r.name)).toEqual(['s2', 's3', 's4']);
  });

  it('keep-hourly keeps the newest of each of the last N hours that have snapshots', () => {
    // Every 20 minutes for 5 hours: 3 per hour; the newest of each hour is kept.
    const c = series(15, H / 3);
    expect(kept(c, { keep_hourly: 3 })).toEqual(['s0', 's1', 's4']);
  });

  it('keep-daily / weekly / monthly / yearly bucket by calendar', () => {
    const daily = series(10, 12 * H); // two per day
    expect(kept(daily, { keep_daily: 3 })).toEqual(['s0', 's2', 's4']); // s1 is the same day's midnight
    const weekly = series(30, D);
    expect(kept(weekly, { keep_weekly: 2 }).length).toBe(2);
    const monthly = series(100, D);
    expect(kept(monthly, { keep_monthly: 4 })).toEqual(['s0', 's22', 's53', 's83']);
    const yearly = series(5, 200 * D);
    expect(kept(yearly, { keep_yearly: 10 })).toEqual(['s0', 's2', 's4']); // 2026, 2025, 2024: s1 and s3 share a year with a newer one
  });

  it('keep-within keeps all within the duration of the newest snapshot', () => {
    expect(kept(series(10, D), { keep_within: '3d' })).toEqual(['s0', 's1', 's2', 's3']);
    expect(kept(series(10, H), { keep_within: '2h30min' })).toEqual(['s0', 's1', 's2']);
  });

  it('rules combine (union) and caps drop the oldest kept', () => {
    const c = series(10, D);
    expect(kept(c, { keep_last: 1, keep_within: '2d' })).toEqual(['s0', 's1', 's2']);
    const capped = planPrune(c, { keep_within: '9d', max_snapshots: 4 });
    expect(capped.keep.map((k) => k.name)).toEqual(['s0', 's1', 's2', 's3']);
    expect(capped.remove.filter((r) => r.reason.startsWith('over max-snapshots')).length).toBe(6);
    const sized = planPrune(series(5, D, 300), { max_size: 1000 });
    expect(sized.keep.map((k) => k.name)).toEqual(['s0', 's1', 's2']);
    expect(sized.remove.map((r) => r.name)).toEqual(['s4', 's3']);
  });

  it('the current snapshot counts: it is kept and takes one of the places (issue #13)', () => {
    // The design's test: max_snapshots 3 over five auto snapshots leaves three, the current included.
    const five = series(5, H);
    expect(kept(five, { max_snapshots: 3 })).toEqual(['s0', 's1', 's2']);
    expect(planPrune(five, { max_snapshots: 3 }, { current: 's0' }).keep.map((k) => k.name)).toEqual(['s0', 's1', 's2']);
    // keep-last 2 keeps two, whichever of them is current (after a restore to an older one, too).
    expect(planPrune(five, { keep_last: 2 }, { current: 's0' }).keep.map((k) => k.name)).toEqual(['s0', 's1']);
    const restored = planPrune(five, { keep_last: 2 }, { current: 's3' });
    expect(restored.keep.map((k) => k.name)).toEqual(['s3', 's0']);
    expect(restored.keep[0]!.reasons).toEqual(['current', 'last']);
    // The caps never drop the current snapshot, even when it alone is over the size.
    const big = planPrune(series(3, D, 5000), { max_size: 1000 }, { current: 's2' });
    expect(big.keep.map((k) => k.name)).toEqual(['s2']);
    expect(planPrune(five, { max_snapshots: 1 }, { current: 's4' }).keep.map((k) => k.name)).toEqual(['s4']);
  });

  it('keep-for keeps what is younger than the duration, counted from now', () => {
    const base = new Date(2026, 10, 22, 12, 0, 0).getTime();
    const c = series(10, D);
    expect(planPrune(c, { keep_for: '3d' }, { now: base }).keep.map((k) => k.name)).toEqual(['s0', 's1', 's2']);
    expect(planPrune(c, { keep_for: '3d' }, { now: base + 2 * D }).keep.map((k) => k.name)).toEqual(['s0']);
    expect(planPrune(c, { keep_for: '3d' }, { now: base + 9 * D, current: 's0' }).keep.map((k) => k.name)).toEqual(['s0']);
  });

  it('refuses counts and sizes of 0 (they would prune every auto snapshot): #17 bug 10', () => {
    for (const k of ['keep_last', 'keep_daily', 'max_snapshots', 'max_size'] as const) {
      expect(() => validatePolicy({ [k]: 0 })).toThrow(/at least 1/);
    }
    expect(() => validatePolicy({ keep_last: 1.5 })).toThrow(/whole number/);
    expect(() => validatePolicy({ keep_for: '0d' })).toThrow(/longer than 0/);
    expect(validatePolicy({ keep_last: 1, max_size: 1 })).toEqual({ keep_last: 1, max_size: 1 });
  });

  it('parses durations and rejects nonsense', () => {
    expect(parseDuration('1y2m3w4d5h6min')).toBe(365 * D + 60 * D + 21 * D + 4 * D + 5 * H + 6 * 60_000);
    for (const bad of ['', '3', 'd', '2 fortnights', '5s', '1d x']) expect(() => parseDuration(bad)).toThrow(/invalid duration/);
  });
});
