/**
 * Builds a realistic qcow2 layer with qemu-io: large sequential extents, medium ones and many scattered
 * single clusters, written in shuffled order (so host order differs from guest order, as in a layer a
 * VM has been writing to), with a mix of incompressible random bytes, compressible text-like bytes,
 * one-byte patterns, and some zero clusters. Offsets come from a seeded PRNG, so the layout is the
 * same on every run; the random bytes differ (they only need to be incompressible).
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MiB, sh } from './harness.mjs';

/** mulberry32: small deterministic PRNG. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Text-like bytes (log lines from a small vocabulary): deflate shrinks them about 3-4x. */
function textBytes(size, rnd) {
  const words = [
    'kernel',
    'systemd',
    'started',
    'session',
    'user',
    'eth0',
    'link',
    'up',
    'down',
    'disk',
    'sda1',
    'mounted',
    'read-only',
    'error',
    'warning',
    'cron',
    'job',
    'finished',
    'nginx',
    'GET',
    'POST',
    '/api/v1/items',
    '200',
    '404',
    '500',
    'latency',
    'ms',
    'cache',
    'miss',
    'hit',
    'postgres',
    'query',
    'checkpoint',
    'complete',
    'backup',
    'snapshot',
    'ok',
    'failed',
    'retry',
    'timeout',
  ];
  const parts = [];
  let n = 0;
  let t = 1700000000;
  while (n < size) {
    t += Math.floor(rnd() * 5);
    let line = `${t}.${String(Math.floor(rnd() * 1e6)).padStart(6, '0')} host${Math.floor(rnd() * 16)} `;
    const k = 4 + Math.floor(rnd() * 10);
    for (let i = 0; i < k; i++) line += words[Math.floor(rnd() * words.length)] + (i + 1 < k ? ' ' : '\n');
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

/**
 * Creates `file` (qcow2, `virtualSize`, `clusterSize`) holding `dataMiB` MiB of data (rounded to the
 * layout's units) and returns a description of what was written.
 */
export async function makeLayer(dir, file, { virtualSize = 2048 * MiB, dataMiB = 384, clusterSize = 65536, seed = 42 } = {}) {
  const rnd = prng(seed);
  const randSrc = path.join(dir, 'src-random.bin');
  const textSrc = path.join(dir, 'src-text.bin');
  await writeFile(randSrc, randomBytes(16 * MiB));
  await writeFile(textSrc, textBytes(16 * MiB, rnd));

  const cs = clusterSize;
  const nClusters = Math.floor(virtualSize / cs);
  const used = new Uint8Array(nClusters);
  /** Picks a free, aligned range of `len` bytes (aligned to min(len, 1 MiB)). */
  const pick = (len) => {
    const align = Math.max(1, Math.min(len, MiB) / cs);
    const n = len / cs;
    for (let tries = 0; tries < 100000; tries++) {
      const c = Math.floor((rnd() * (nClusters - n)) / align) * align;
      let free = true;
      for (let i = 0; i < n && free; i++) if (used[c + i]) free = false;
      if (!free) continue;
      used.fill(1, c, c + n);
      return c * cs;
    }
    throw new Error('layer layout: no free range left (virtual size too small for the data)');
  };
  // Fractions of the data: 25% in 16 MiB extents, 17% in 4 MiB, 8% in 1 MiB patterns,
  // 17% in 256 KiB pieces, 33% as single scattered clusters.
  const total = dataMiB * MiB;
  const plan = [
    { len: 16 * MiB, share: 0.25, kinds: ['random', 'random', 'text'] },
    { len: 4 * MiB, share: 0.17, kinds: ['text', 'random'] },
    { len: 1 * MiB, share: 0.08, kinds: ['pattern'] },
    { len: 256 * 1024, share: 0.17, kinds: ['random', 'text'] },
    { len: cs, share: 0.33, kinds: ['random', 'random', 'text', 'pattern'] },
  ];
  const ops = [];
  let written = 0;
  const byKind = { random: 0, text: 0, pattern: 0 };
  for (const p of plan) {
    const count = Math.max(1, Math.round((total * p.share) / p.len));
    for (let i = 0; i < count; i++) {
      const kind = p.kinds[i % p.kinds.length];
      ops.push({ off: pick(p.len), len: p.len, kind });
      written += p.len;
      byKind[kind] += p.len;
    }
  }
  // Zero clusters (v3 zero flag): 2% of the data size in 1 MiB pieces.
  const zeros = Math.max(1, Math.round((total * 0.02) / MiB));
  for (let i = 0; i < zeros; i++) ops.push({ off: pick(MiB), len: MiB, kind: 'zero' });
  // Shuffle so host allocation order differs from guest order.
  for (let i = ops.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [ops[i], ops[j]] = [ops[j], ops[i]];
  }
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, file, String(virtualSize)]);
  const cmds = ops.map((o, i) => {
    if (o.kind === 'zero') return `write -q -z ${o.off} ${o.len}`;
    if (o.kind === 'pattern') return `write -q -P ${((i * 37) % 255) + 1} ${o.off} ${o.len}`;
    return `write -q -s ${o.kind === 'random' ? randSrc : textSrc} ${o.off} ${o.len}`;
  });
  // qemu-io runs one -c after another on one open image; batch them to keep argv reasonable.
  for (let i = 0; i < cmds.length; i += 500) {
    sh('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 500).flatMap((c) => ['-c', c]), file]);
  }
  return { virtual_size: virtualSize, cluster_size: cs, data_bytes: written, data_by_kind: byKind, zero_bytes: zeros * MiB, writes: ops.length };
}
