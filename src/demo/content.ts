/**
 * Realistic-looking disk content for the demo, deterministic from a seed: random regions (compressed
 * or encrypted files), text regions (logs, configs: compress well), repeated blocks (copies of the
 * same file: deduplicate) and zeros.
 */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    // xorshift32: fast and good enough for filler bytes.
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  fill(buf: Buffer): Buffer {
    for (let i = 0; i + 4 <= buf.length; i += 4) buf.writeUInt32LE(this.next(), i);
    return buf;
  }
}

const WORDS = [
  'kernel',
  'systemd',
  'started',
  'session',
  'nginx',
  'GET',
  '/api/v1/items',
  '200',
  'user',
  'cron',
  'backup',
  'completed',
  'postgres',
  'checkpoint',
  'eth0',
  'link',
  'up',
  'apt',
  'upgrade',
  'libc6',
  'warning',
  'disk',
  'ok',
];

export function textBlock(rng: Prng, size: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  while (n < size) {
    const words = 6 + (rng.next() % 10);
    let line = `2026-11-${String(1 + (rng.next() % 28)).padStart(2, '0')}T${String(rng.next() % 24).padStart(2, '0')}:00:00Z`;
    for (let i = 0; i < words; i++) line += ` ${WORDS[rng.next() % WORDS.length]}`;
    lines.push(line);
    n += line.length + 1;
  }
  return Buffer.from(lines.join('\n')).subarray(0, size);
}

export function randomBlock(rng: Prng, size: number): Buffer {
  return rng.fill(Buffer.allocUnsafe(size));
}
