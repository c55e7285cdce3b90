/**
 * Realistic data for bench chains, written into a qcow2 disk with qemu-io: log-like text, random
 * bytes, one-byte patterns and zero writes, in regions placed at random free offsets. Shared by the
 * bundle and sync benches (each decides the mix of its layers).
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MiB, sh } from './harness.mjs';

/** Log-like text: compresses about 3-4x with zstd -3, never repeats exactly. */
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
  ];
  const parts = [];
  let n = 0;
  let t = 1700000000 + Math.floor(rnd() * 1e6);
  while (n < size) {
    t += Math.floor(rnd() * 5);
    let line = `${t}.${String(Math.floor(rnd() * 1e6)).padStart(6, '0')} host${Math.floor(rnd() * 16)} pid=${Math.floor(rnd() * 65536)} `;
    const k = 4 + Math.floor(rnd() * 10);
    for (let i = 0; i < k; i++) line += words[Math.floor(rnd() * words.length)] + (i + 1 < k ? ' ' : '\n');
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

/**
 * Region helpers for one disk of `size` bytes with `cs`-byte clusters; source files go to `src`.
 *   region(kind, len, align)  a region of kind 'random' | 'text' | 'pattern' | 'zero' at a free offset
 *   cmd(region)               its qemu-io write command
 *   pick(len, align)          a free offset (marks it used); `used.fill(0)` starts a new layer's plan
 *   apply(cmds)               runs the commands on the disk (400 per qemu-io process)
 *   shuffle(array)            in place, with the seeded generator
 */
export function regionWriter({ src, rnd, disk, size, cs }) {
  let nsrc = 0;
  let pat = 0;
  const source = async (kind, len) => {
    const f = path.join(src, `s${nsrc++}.bin`);
    await writeFile(f, kind === 'random' ? randomBytes(len) : textBytes(len, rnd));
    return f;
  };
  const used = new Uint8Array(size / cs);
  const pick = (len, align = MiB) => {
    for (;;) {
      const a = align / cs;
      const c = Math.floor((rnd() * (used.length - len / cs)) / a) * a;
      if (used.subarray(c, c + len / cs).some((x) => x)) continue;
      used.fill(1, c, c + len / cs);
      return c * cs;
    }
  };
  const apply = (cmds) => {
    for (let i = 0; i < cmds.length; i += 400) sh('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 400).flatMap((c) => ['-c', c]), disk]);
  };
  const shuffle = (a) => {
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  };
  const region = async (kind, len, align = MiB) => ({
    off: pick(len, align),
    len,
    kind,
    pat: ((pat++ * 37) % 255) + 1,
    file: kind === 'pattern' || kind === 'zero' ? null : await source(kind, len),
  });
  const cmd = (r) =>
    r.kind === 'zero'
      ? `write -q -z ${r.off} ${r.len}`
      : r.kind === 'pattern'
        ? `write -q -P ${r.pat} ${r.off} ${r.len}`
        : `write -q -s ${r.file} ${r.off} ${r.len}`;
  return { used, pick, apply, shuffle, region, cmd };
}
