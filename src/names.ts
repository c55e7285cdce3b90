/** Parsing and validation of user-given names and sizes (contract: "Conventions"). */
import { CloneboxError } from './errors.js';

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkName(kind: 'VM' | 'snapshot' | 'team' | 'workstation', name: string): string {
  if (!NAME_RE.test(name) || name === '.' || name === '..') {
    throw new CloneboxError('BAD_NAME', `invalid ${kind} name ${JSON.stringify(name)}`, {
      hint: 'names start with a letter or digit and use only letters, digits, ".", "_" and "-" (at most 128)',
    });
  }
  return name;
}

const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** "512M", "20G", "1048576", "1.5G" (binary units, optional trailing "iB"/"B"). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new CloneboxError('BAD_SIZE', `invalid ${what} ${JSON.stringify(text)}`, { hint: 'use bytes or a K/M/G/T suffix, e.g. 512M or 20G' });
  const n = Number(m[1]) * UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER) throw new CloneboxError('BAD_SIZE', `${what} ${text} is too large`);
  return Math.round(n);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}

/**
 * The name among `candidates` a mistyped `name` most likely meant ("did you mean"): the nearest by
 * edit distance, at most a third of the name's length (at least 1) away, or one that differs only in
 * case; null when none is that close.
 */
export function closestName(name: string, candidates: Iterable<string>): string | null {
  const limit = Math.max(1, Math.floor(name.length / 3));
  let best: string | null = null;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = c.toLowerCase() === name.toLowerCase() ? 0 : editDistance(name, c);
    if (d <= limit && d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance, with an adjacent swap counting as one edit (a typo's usual shape). */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 3) return Number.POSITIVE_INFINITY;
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}
