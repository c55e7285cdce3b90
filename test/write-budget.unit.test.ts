/**
 * The write budget (src/qcow2/budget.ts): what a chain described by someone else would cost on disk,
 * counted as its pieces arrive, refused beyond the free space (NO_SPACE) or the caller's cap
 * (BUDGET_EXCEEDED). Compared with the writer's real output in test/bundle-security.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { checkVirtualSize, DEFAULT_MAX_VIRTUAL_SIZE, WriteBudget } from '../src/qcow2/budget.js';

const K = 1024;
const M = K * K;
const G = K * M;
const T = K * G;

function codeOf(fn: () => void): string | null {
  try {
    fn();
  } catch (err) {
    if (err instanceof CloneboxError) return err.code;
    throw err;
  }
  return null;
}

describe('WriteBudget', () => {
  it("counts a zero range's L2 tables: one cluster per 512 MiB with 64K clusters", () => {
    const b = new WriteBudget({ free: null, maxWrite: null, what: 'test' });
    b.beginLayer(T, 64 * K);
    const start = b.bytes;
    // Header and L1 (1 TiB / 512 MiB = 2048 entries = 16 KiB, one cluster).
    expect(start).toBe(2 * 64 * K);
    b.zero(0, T);
    expect(b.bytes - start).toBe(2048 * 64 * K); // 128 MiB, as the review measured
  });

  it('counts each data cluster and each L2 table once, also when pieces are smaller than a cluster', () => {
    const b = new WriteBudget({ free: null, maxWrite: null, what: 'test' });
    b.beginLayer(G, 64 * K);
    const start = b.bytes;
    for (let o = 0; o < 16 * M; o += 64 * K) b.data(o, 64 * K);
    // 256 data clusters and one L2 table.
    expect(b.bytes - start).toBe(257 * 64 * K);
    // Pieces smaller than a cluster (blocks of a 2 MiB cluster) count the cluster once.
    const c = new WriteBudget({ free: null, maxWrite: null, what: 'test' });
    c.beginLayer(G, 2 * M);
    const s2 = c.bytes;
    for (let o = 0; o < 2 * M; o += 64 * K) c.data(o, 64 * K);
    expect(c.bytes - s2).toBe(2 * 2 * M);
    b.endLayer();
    expect(b.bytes).toBeGreaterThan(start + 257 * 64 * K); // refcounts
  });

  it('refuses beyond the free space with NO_SPACE and beyond the cap with BUDGET_EXCEEDED', () => {
    const free = new WriteBudget({ free: 4 * M, maxWrite: null, what: 'import of x.cbx' });
    free.beginLayer(64 * G, 64 * K);
    expect(codeOf(() => free.zero(0, 64 * G))).toBe('NO_SPACE');
    const capped = new WriteBudget({ free: 100 * G, maxWrite: 1 * M, what: 'import of x.cbx' });
    capped.beginLayer(64 * G, 64 * K);
    let msg = '';
    try {
      capped.zero(0, 64 * G);
    } catch (err) {
      msg = (err as Error).message;
      expect((err as CloneboxError).code).toBe('BUDGET_EXCEEDED');
    }
    expect(msg).toContain('import of x.cbx');
    expect(codeOf(() => checkVirtualSize(DEFAULT_MAX_VIRTUAL_SIZE + 512, DEFAULT_MAX_VIRTUAL_SIZE, 'bundle x'))).toBe('BUDGET_EXCEEDED');
    expect(codeOf(() => checkVirtualSize(DEFAULT_MAX_VIRTUAL_SIZE, DEFAULT_MAX_VIRTUAL_SIZE, 'bundle x'))).toBeNull();
  });
});
