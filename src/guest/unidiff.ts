/**
 * Unified diff of two texts (`diff -u` format, three lines of context), by Myers' O(ND) algorithm
 * with a bound on D: two texts further apart than that are reported as too different to show.
 */

/** Edit distance at most (insertions plus deletions) for which a diff is computed. */
const MAX_EDITS = 1000;

type Op = { kind: ' ' | '-' | '+'; line: string };

function lines(t: string): string[] {
  if (t === '') return [];
  const l = t.split('\n');
  if (l[l.length - 1] === '') l.pop();
  return l;
}

/** The edit script from a to b, or null when more than MAX_EDITS edits apart. */
function myers(a: string[], b: string[]): Op[] | null {
  const n = a.length;
  const m = b.length;
  const max = Math.min(n + m, MAX_EDITS);
  const off = max + 1;
  const v = new Int32Array(2 * max + 3);
  const trace: Int32Array[] = [];
  let found = -1;
  for (let d = 0; d <= max && found < 0; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1]! < v[off + k + 1]!) ? v[off + k + 1]! : v[off + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) {
        found = d;
        break;
      }
    }
  }
  if (found < 0) return null;
  const ops: Op[] = [];
  let x = n;
  let y = m;
  for (let d = found; d > 0; d--) {
    const pv = trace[d]!;
    const k = x - y;
    const prevK = k === -d || (k !== d && pv[off + k - 1]! < pv[off + k + 1]!) ? k + 1 : k - 1;
    const px = pv[off + prevK]!;
    const py = px - prevK;
    while (x > px && y > py) {
      x--;
      y--;
      ops.push({ kind: ' ', line: a[x]! });
    }
    if (x === px) ops.push({ kind: '+', line: b[--y]! });
    else ops.push({ kind: '-', line: a[--x]! });
  }
  while (x > 0) {
    ops.push({ kind: ' ', line: a[--x]! });
    y--;
  }
  return ops.reverse();
}

/** `--- a/path`, `+++ b/path` and hunks; null when the texts are too far apart to show. */
export function unifiedDiff(path: string, before: string, after: string, context = 3): string | null {
  const a = lines(before);
  const b = lines(after);
  const ops = myers(a, b);
  if (ops === null) return null;
  const out = [`--- a${path}`, `+++ b${path}`];
  let i = 0;
  // positions (1-based line numbers) before each op
  const posA: number[] = [];
  const posB: number[] = [];
  let la = 1;
  let lb = 1;
  for (const op of ops) {
    posA.push(la);
    posB.push(lb);
    if (op.kind !== '+') la++;
    if (op.kind !== '-') lb++;
  }
  while (i < ops.length) {
    while (i < ops.length && ops[i]!.kind === ' ') i++;
    if (i >= ops.length) break;
    const start = Math.max(0, i - context);
    let end = i;
    // extend over changes separated by at most 2*context unchanged lines
    for (;;) {
      while (end < ops.length && ops[end]!.kind !== ' ') end++;
      let gap = end;
      while (gap < ops.length && ops[gap]!.kind === ' ') gap++;
      if (gap < ops.length && gap - end <= 2 * context) end = gap;
      else {
        end = Math.min(ops.length, end + context);
        break;
      }
    }
    const hunk = ops.slice(start, end);
    const ca = hunk.filter((o) => o.kind !== '+').length;
    const cb = hunk.filter((o) => o.kind !== '-').length;
    const sa = ca === 0 ? posA[start]! - 1 : posA[start]!;
    const sb = cb === 0 ? posB[start]! - 1 : posB[start]!;
    out.push(`@@ -${sa},${ca} +${sb},${cb} @@`);
    for (const o of hunk) out.push(`${o.kind}${o.line}`);
    i = end;
  }
  return `${out.join('\n')}\n`;
}
