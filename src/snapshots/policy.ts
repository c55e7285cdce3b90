/**
 * Retention for auto-created snapshots, with restic's `forget` semantics:
 *  - keep-last N: the N newest;
 *  - keep-hourly/daily/weekly/monthly/yearly N: for the last N hours (days, ISO weeks, months, years)
 *    that have snapshots, the newest snapshot of each;
 *  - keep-within D: every snapshot created within D of the newest snapshot;
 *  - keep-for D: every snapshot younger than D (age counted from now; a named policy's `keep: "5d"`);
 * a snapshot is kept when any rule keeps it. With no keep rule at all, every snapshot is kept.
 * Then two caps (HawkFish's retention limits): max-snapshots keeps at most N auto snapshots and
 * max-size keeps their total size under SIZE, dropping the oldest first.
 *
 * Counting is the user's: the current snapshot, when it is one of the policy's snapshots, is a
 * candidate that is always kept and takes one of the places of keep-last and max-snapshots (so
 * `keep-last 2` leaves two, and max-snapshots 3 over five snapshots leaves three). Manual snapshots
 * are never candidates (the caller passes only auto ones). Time buckets use local time, as restic does.
 */
import { now } from '../clock.js';
import { CloneboxError } from '../errors.js';

export interface Policy {
  keep_last?: number;
  keep_hourly?: number;
  keep_daily?: number;
  keep_weekly?: number;
  keep_monthly?: number;
  keep_yearly?: number;
  keep_within?: string;
  keep_for?: string;
  max_snapshots?: number;
  max_size?: number;
}

export const POLICY_KEYS = [
  'keep_last',
  'keep_hourly',
  'keep_daily',
  'keep_weekly',
  'keep_monthly',
  'keep_yearly',
  'keep_within',
  'keep_for',
  'max_snapshots',
  'max_size',
] as const;

/** The same policy with its keys in POLICY_KEYS order, so that equal policies compare equal as JSON. */
export function canonicalPolicy(p: Policy): Policy {
  const out: Record<string, unknown> = {};
  for (const k of POLICY_KEYS) if (p[k] !== undefined) out[k] = p[k];
  return out as Policy;
}

export interface Candidate {
  name: string;
  created_at: string;
  size_bytes: number;
}

export interface PrunePlan {
  keep: { name: string; reasons: string[] }[];
  remove: { name: string; reason: string }[];
  /** Kept now, but removed when the policy's next auto snapshot is taken (now): what would go next. */
  next?: { name: string; reason: string }[];
}

/** "1y2m3w4d5h30min" style durations (restic's y/m/d/h plus w and min); returns milliseconds. */
export function parseDuration(text: string): number {
  const re = /(\d+)\s*(min|y|m|w|d|h)/gy; // "min" before "m", or "30min" would read as 30 months
  let ms = 0;
  let matched = 0;
  const t = text.trim();
  for (const m of t.matchAll(re)) {
    matched += m[0].length;
    const n = Number(m[1]);
    const unit = m[2];
    const day = 86_400_000;
    ms += n * (unit === 'y' ? 365 * day : unit === 'm' ? 30 * day : unit === 'w' ? 7 * day : unit === 'd' ? day : unit === 'h' ? 3_600_000 : 60_000);
  }
  if (t.length === 0 || matched !== t.length) {
    throw new CloneboxError('USAGE', `invalid duration ${JSON.stringify(text)}`, { hint: 'use e.g. 7d, 12h, 2w, 1y6m, 90min' });
  }
  return ms;
}

function isoWeek(d: Date): string {
  const t = new Date(d.getFullYear(), d.getMonth(), d.getDate());
  const day = (t.getDay() + 6) % 7; // Monday = 0
  t.setDate(t.getDate() - day + 3); // Thursday of this week decides the year
  const firstThursday = new Date(t.getFullYear(), 0, 4);
  const week = 1 + Math.round(((t.getTime() - firstThursday.getTime()) / 86_400_000 - 3 + ((firstThursday.getDay() + 6) % 7)) / 7);
  return `${t.getFullYear()}-W${week}`;
}

const BUCKETS: [keyof Policy, string, (d: Date) => string][] = [
  ['keep_hourly', 'hourly', (d) => `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}-${d.getHours()}`],
  ['keep_daily', 'daily', (d) => `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`],
  ['keep_weekly', 'weekly', isoWeek],
  ['keep_monthly', 'monthly', (d) => `${d.getFullYear()}-${d.getMonth()}`],
  ['keep_yearly', 'yearly', (d) => `${d.getFullYear()}`],
];

function hasKeepRule(p: Policy): boolean {
  return ['keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_yearly', 'keep_within', 'keep_for'].some(
    (k) => p[k as keyof Policy] !== undefined,
  );
}

const COUNT_KEYS = ['keep_last', 'keep_hourly', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_yearly', 'max_snapshots'] as const;

/**
 * Refuses what would prune everything by accident or cannot be read: a count or size of 0 (clear a
 * key instead), a count that is not a whole number, a duration that does not parse. `where` prefixes
 * the message (a file position, a command).
 */
export function validatePolicy(p: Policy, where = ''): Policy {
  const at = where ? `${where}: ` : '';
  for (const k of COUNT_KEYS) {
    const v = p[k];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 1) {
      throw CloneboxError.USAGE(`${at}${k} must be a whole number of at least 1, got ${JSON.stringify(v)}`, {
        hint: `to drop the rule, clear it (--${k.replace(/_/g, '-')} none)`,
      });
    }
  }
  if (p.max_size !== undefined && (!Number.isSafeInteger(p.max_size) || p.max_size < 1)) {
    throw CloneboxError.USAGE(`${at}max_size must be at least 1 byte, got ${JSON.stringify(p.max_size)}`, {
      hint: 'to drop the rule, clear it (--max-size none)',
    });
  }
  for (const k of ['keep_within', 'keep_for'] as const) {
    const v = p[k];
    if (v !== undefined && parseDuration(v) <= 0) throw CloneboxError.USAGE(`${at}${k} must be longer than 0, got ${JSON.stringify(v)}`);
  }
  return p;
}

export interface PlanOptions {
  /** The VM's current snapshot when it is one of the candidates: always kept, and counted. */
  current?: string | null;
  /** The time keep-for counts ages from (ms since the epoch). */
  now?: number;
}

export function planPrune(candidates: Candidate[], p: Policy, opts: PlanOptions = {}): PrunePlan {
  const byAge = [...candidates].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : a.name < b.name ? 1 : -1));
  const pinned = opts.current != null ? (byAge.find((c) => c.name === opts.current) ?? null) : null;
  // The current snapshot stands first in line: it is always kept, so it takes the first place of
  // keep-last and is the last one the caps would drop (never).
  const sorted = pinned ? [pinned, ...byAge.filter((c) => c !== pinned)] : byAge;
  const reasons = new Map<string, string[]>(sorted.map((c) => [c.name, []]));
  if (pinned) reasons.get(pinned.name)!.push('current');
  const keepAll = !hasKeepRule(p);
  if (keepAll) for (const c of sorted) reasons.get(c.name)!.push('no keep rule');
  if (p.keep_last !== undefined) for (const c of sorted.slice(0, p.keep_last)) reasons.get(c.name)!.push('last');
  for (const [key, label, bucketOf] of BUCKETS) {
    const n = p[key] as number | undefined;
    if (n === undefined) continue;
    const seen = new Set<string>();
    for (const c of byAge) {
      if (seen.size >= n) break;
      const b = bucketOf(new Date(c.created_at));
      if (seen.has(b)) continue;
      seen.add(b);
      reasons.get(c.name)!.push(label);
    }
  }
  if (p.keep_within !== undefined && byAge.length > 0) {
    const newest = Date.parse(byAge[0]!.created_at);
    const within = parseDuration(p.keep_within);
    for (const c of byAge) if (newest - Date.parse(c.created_at) <= within) reasons.get(c.name)!.push('within');
  }
  if (p.keep_for !== undefined) {
    const at = opts.now ?? now().getTime();
    const keepFor = parseDuration(p.keep_for);
    for (const c of byAge) if (at - Date.parse(c.created_at) < keepFor) reasons.get(c.name)!.push('young');
  }
  const kept = sorted.filter((c) => reasons.get(c.name)!.length > 0);
  const remove: PrunePlan['remove'] = sorted.filter((c) => reasons.get(c.name)!.length === 0).map((c) => ({ name: c.name, reason: 'no rule keeps it' }));
  // The caps drop from the end of the line: the oldest kept first, the current snapshot never (it is first).
  if (p.max_snapshots !== undefined) {
    while (kept.length > Math.max(p.max_snapshots, pinned ? 1 : 0)) remove.push({ name: kept.pop()!.name, reason: `over max-snapshots ${p.max_snapshots}` });
  }
  if (p.max_size !== undefined) {
    let total = kept.reduce((a, c) => a + c.size_bytes, 0);
    while (kept.length > (pinned ? 1 : 0) && total > p.max_size) {
      const c = kept.pop()!;
      total -= c.size_bytes;
      remove.push({ name: c.name, reason: `over max-size ${p.max_size}` });
    }
  }
  return { keep: kept.map((c) => ({ name: c.name, reasons: reasons.get(c.name)! })), remove };
}
