/**
 * Seeded pseudo-random numbers for tests, so that a failure can be reproduced from the printed seed.
 * Not for cryptography.
 */
import { createCipheriv } from 'node:crypto';

export interface Rng {
  /** The seed this generator started from (print it in failure messages). */
  readonly seed: number;
  /** Uniform 32-bit unsigned integer. */
  u32(): number;
  /** Uniform float in [0, 1). */
  float(): number;
  /** Uniform integer in [min, max) (max exclusive). */
  int(min: number, max: number): number;
  /** True with probability p. */
  chance(p: number): boolean;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
  /** A buffer of n pseudo-random bytes. */
  bytes(n: number): Buffer;
}

/**
 * mulberry32: a tiny, fast 32-bit PRNG with good enough statistics for generating test data.
 * `seedFromEnv(name, fallback)` below lets a failing run be replayed with the seed it printed.
 */
export function rng(seed: number): Rng {
  let a = seed >>> 0;
  const u32 = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  const float = () => u32() / 4294967296;
  return {
    seed: seed >>> 0,
    u32,
    float,
    int: (min, max) => min + Math.floor(float() * (max - min)),
    chance: (p) => float() < p,
    pick: (items) => items[Math.floor(float() * items.length)]!,
    bytes: (n) => {
      if (n >= 4096) {
        // Large buffers: AES-128-CTR keyed from the generator (deterministic, ~GB/s instead of a JS loop).
        const key = Buffer.allocUnsafe(16);
        for (let k = 0; k < 16; k += 4) key.writeUInt32LE(u32(), k);
        const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
        return Buffer.concat([cipher.update(Buffer.alloc(n)), cipher.final()]);
      }
      const out = Buffer.allocUnsafe(n);
      let i = 0;
      for (; i + 4 <= n; i += 4) out.writeUInt32LE(u32(), i);
      for (; i < n; i++) out[i] = u32() & 0xff;
      return out;
    },
  };
}

/**
 * The seed for a test: `process.env[name]` when set (to replay a failure), otherwise `fallback`
 * (a fixed number keeps CI deterministic; pass Date.now() for exploratory runs).
 */
export function seedFromEnv(name: string, fallback: number): number {
  const v = process.env[name];
  if (v !== undefined && v !== '' && Number.isFinite(Number(v))) return Number(v) >>> 0;
  return fallback >>> 0;
}

/**
 * Bytes that compress well but are not trivially constant (text-like), so that qcow2 compressed
 * clusters really are stored compressed.
 */
export function compressibleBytes(r: Rng, n: number): Buffer {
  const words = ['clonebox', 'qcow2', 'cluster', 'snapshot', 'layer', 'backing', 'refcount', 'extent', '\n', ' '];
  const out = Buffer.alloc(n);
  let off = 0;
  while (off < n) off += out.write(`${r.pick(words)} `, off);
  return out;
}
