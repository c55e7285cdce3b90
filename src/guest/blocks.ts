/** Sorted, disjoint runs of block numbers: the changed blocks of a filesystem and what is left to explain of them. */

export interface Run {
  start: number;
  count: number;
}

export class BlockRuns {
  private runs: Run[] = [];

  static of(runs: Run[]): BlockRuns {
    const r = new BlockRuns();
    const sorted = runs.filter((x) => x.count > 0).sort((a, b) => a.start - b.start);
    for (const x of sorted) r.append(x.start, x.count);
    return r;
  }

  /** Adds a run starting at or after every run already held (merging with the last one). */
  append(start: number, count: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && start <= last.start + last.count) last.count = Math.max(last.count, start + count - last.start);
    else this.runs.push({ start, count });
  }

  get list(): readonly Run[] {
    return this.runs;
  }

  get size(): number {
    return this.runs.length;
  }

  get blocks(): number {
    return this.runs.reduce((s, r) => s + r.count, 0);
  }

  /** Index of the first run ending after `b`. */
  private firstEndingAfter(b: number): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = this.runs[mid]!;
      if (r.start + r.count <= b) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The parts of [start, start+count) held here. */
  intersect(start: number, count: number): Run[] {
    const out: Run[] = [];
    for (let i = this.firstEndingAfter(start); i < this.runs.length; i++) {
      const r = this.runs[i]!;
      if (r.start >= start + count) break;
      const s = Math.max(r.start, start);
      const e = Math.min(r.start + r.count, start + count);
      out.push({ start: s, count: e - s });
    }
    return out;
  }

  overlaps(start: number, count: number): boolean {
    const i = this.firstEndingAfter(start);
    const r = this.runs[i];
    return r !== undefined && r.start < start + count;
  }

  /** Removes [start, start+count). */
  remove(start: number, count: number): void {
    const i = this.firstEndingAfter(start);
    const end = start + count;
    const keep: Run[] = [];
    let j = i;
    for (; j < this.runs.length; j++) {
      const r = this.runs[j]!;
      if (r.start >= end) break;
      if (r.start < start) keep.push({ start: r.start, count: start - r.start });
      if (r.start + r.count > end) keep.push({ start: end, count: r.start + r.count - end });
    }
    if (j > i) this.runs.splice(i, j - i, ...keep);
  }
}
