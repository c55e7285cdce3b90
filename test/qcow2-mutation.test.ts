/**
 * Mutation test of the qcow2 reader: real images made by qemu-img (plain, compressed with deflate and
 * zstd, extended L2, with a backing file name, v2) get random bytes flipped — mostly in the header and
 * the tables, where a flip means something — many times over. After each mutation the image is opened,
 * every run enumerated, every data run read, and info() taken. Each outcome must be a success or a
 * CloneboxError, within a bounded time and without memory ballooning. A sample of the successful reads
 * is compared with what QEMU reads from the same mutated file (when QEMU can read it).
 *
 * Seed: QCOW2_MUTATION_SEED=<n> replays a run; QCOW2_MUTATION_SEED=random explores new mutations.
 * QCOW2_MUTATIONS=<n> changes the number of mutations per image, QCOW2_MUTATION_QEMU_SAMPLES=<n> the number
 * of successful reads compared with QEMU's per image.
 */
import { type FileHandle, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { Qcow2Image } from '../src/qcow2/reader.js';
import { readData } from '../src/qcow2/stream.js';
import { assertSameBytes } from './helpers/bytes.js';
import { run } from './helpers/process.js';
import { type Layout, parseLayout } from './helpers/qcow2-layout.js';
import { aloneSpec, qemuImg, qemuIo } from './helpers/qemu.js';
import { compressibleBytes, type Rng, rng } from './helpers/random.js';
import { useTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * 1024;
const SEED =
  process.env.QCOW2_MUTATION_SEED === 'random' ? (Date.now() ^ (process.pid << 16)) >>> 0 : Number(process.env.QCOW2_MUTATION_SEED ?? 0x00c0ffee) >>> 0;
const PER_IMAGE = Number(process.env.QCOW2_MUTATIONS ?? 340);
const ITERATION_LIMIT_MS = 2000;
const RSS_GROWTH_LIMIT = 300 * M;
/** Successful reads compared with QEMU's (each costs a qemu-img run). */
const QEMU_SAMPLES_PER_IMAGE = Number(process.env.QCOW2_MUTATION_QEMU_SAMPLES ?? 8);

console.log(`qcow2-mutation: seed ${SEED}, ${PER_IMAGE} mutations per image (QCOW2_MUTATION_SEED=${SEED} replays)`);

const tmp = useTempDir('clonebox-mutation-');

interface Image {
  name: string;
  file: string;
  buf: Buffer;
  lay: Layout;
  /** [start, end) byte ranges of metadata: header cluster start, L1, L2 tables, refcount table. */
  hot: Array<[number, number]>;
}

const images: Image[] = [];

async function build(name: string, make: (file: string, dir: string, r: Rng) => Promise<void>, r: Rng): Promise<void> {
  const dir = tmp();
  const file = path.join(dir, `${name}.qcow2`);
  await make(file, dir, r);
  const buf = await readFile(file);
  const lay = parseLayout(buf);
  const hot: Array<[number, number]> = [[0, Math.min(1024, lay.cs)]];
  if (lay.l1Size) hot.push([lay.l1Offset, lay.l1Offset + lay.l1Size * 8]);
  for (const t of lay.l2Tables) if (t) hot.push([t, t + lay.cs]);
  hot.push([lay.refcountTableOffset, lay.refcountTableOffset + 64]);
  images.push({ name, file, buf, lay, hot });
}

beforeAll(async () => {
  const r = rng(SEED ^ 0x1234567);
  const srcFile = async (dir: string, n: string, b: Buffer) => {
    const f = path.join(dir, n);
    await writeFile(f, b);
    return f;
  };
  await build(
    'plain',
    async (f, dir) => {
      await qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', f, '1M']);
      const cmds: string[] = [];
      for (let i = 0; i < 12; i++) {
        const off = r.int(0, 1000) * 1000;
        cmds.push(`write -s ${await srcFile(dir, `p${i}`, r.bytes(3000))} ${off} 3000`);
      }
      cmds.push('write -z 512k 8k', 'discard 4k 4k', 'write -z 900k 4k');
      await qemuIo(f, cmds);
    },
    r,
  );
  const text = compressibleBytes(r, 512 * K);
  await build(
    'deflate',
    async (f, dir) => {
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=16k', await srcFile(dir, 'text.raw', text), f]);
    },
    r,
  );
  await build(
    'zstd',
    async (f, dir) => {
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=16k,compression_type=zstd', await srcFile(dir, 'text2.raw', text), f]);
    },
    r,
  );
  await build(
    'extl2',
    async (f, dir) => {
      await qemuImg(['create', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k', f, '1M']);
      await qemuIo(f, [
        `write -s ${await srcFile(dir, 'e0', r.bytes(5000))} 1000 5000`,
        'write -z 40k 2k',
        'discard 64k 1k',
        `write -s ${await srcFile(dir, 'e1', r.bytes(40_000))} 300k 40000`,
      ]);
    },
    r,
  );
  await build(
    'backing',
    async (f, dir) => {
      await qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', path.join(dir, 'base.qcow2'), '512k']);
      await qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', f, '512k'], { cwd: dir });
      await qemuIo(f, [`write -s ${await srcFile(dir, 'b0', r.bytes(10_000))} 5000 10000`, 'write -z 100k 4k']);
    },
    r,
  );
  await build(
    'v2',
    async (f, dir) => {
      await qemuImg(['create', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', f, '256k']);
      await qemuIo(f, [`write -s ${await srcFile(dir, 'v0', r.bytes(20_000))} 700 20000`]);
    },
    r,
  );
  for (const img of images) {
    // Not vacuous: each base image reads fine before any mutation.
    const o = await readAll(img.file);
    expect(o, img.name).toMatchObject({ ok: true });
  }
});

type Outcome = { ok: true; bytes: Buffer | null } | { ok: false; code: string };

/**
 * Open, info(), enumerate every run and read every data run; the whole disk when small. Then the
 * streaming reader (stream.ts) must agree: the same bytes when this succeeded, a CloneboxError when
 * reading failed after the open.
 */
async function readAll(file: string): Promise<Outcome> {
  let img: Qcow2Image | null = null;
  let result: Outcome;
  try {
    img = await Qcow2Image.open(file, { warn: () => undefined });
    await img.info();
    for await (const run of img.runs()) {
      if (run.kind !== 'data') continue;
      const b = await img.readRun(run);
      if (b.length !== run.length) throw new Error(`readRun returned ${b.length} bytes for a ${run.length}-byte run at ${run.offset}`);
    }
    result = { ok: true, bytes: img.virtualSize <= 16 * M ? await img.read(0, img.virtualSize) : null };
  } catch (err) {
    if (!(err instanceof CloneboxError)) {
      await img?.close().catch(() => undefined);
      throw err;
    }
    result = { ok: false, code: err.code };
  }
  if (img) {
    try {
      let streamError: CloneboxError | null = null;
      try {
        for await (const ch of readData(img, { maxBatchBytes: 64 * K })) {
          if (result.ok && result.bytes) assertSameBytes(ch.data, result.bytes.subarray(ch.offset, ch.offset + ch.data.length), 'readData chunk', ch.offset);
        }
      } catch (err) {
        if (!(err instanceof CloneboxError)) throw new Error(`readData threw a non-CloneboxError: ${(err as Error)?.stack ?? err}`);
        streamError = err;
      }
      if (result.ok && streamError) throw new Error(`readData failed (${streamError.code}: ${streamError.message}) where runs()/readRun() read fine`);
      if (!result.ok && !streamError) throw new Error(`readData read fine where runs()/readRun() failed with ${result.code}`);
    } finally {
      await img.close().catch(() => undefined);
    }
  }
  return result;
}

const INTERESTING_U64 = [0n, 1n, 0xffffffffffffffffn, 1n << 63n, 1n << 62n, (1n << 63n) | (1n << 62n), 0x00fffffffffffe00n, 0x7fffffffffffffffn];
const INTERESTING_U32 = [0, 1, 8, 9, 21, 22, 63, 64, 104, 112, 0x7fffffff, 0xffffffff, 0x80000000];

interface Mutation {
  describe: string;
  /** Applies the mutation to the working file; returns a function restoring the original bytes. */
  apply(fh: FileHandle, img: Image): Promise<() => Promise<void>>;
}

function pickOffset(r: Rng, img: Image): number {
  const k = r.float();
  if (k < 0.75) {
    const [s, e] = r.pick(img.hot);
    return Math.min(img.buf.length - 1, r.int(s, Math.max(s + 1, e)));
  }
  return r.int(0, img.buf.length);
}

function makeMutation(r: Rng, img: Image): Mutation {
  const k = r.float();
  if (k < 0.05) {
    const len = r.chance(0.5) ? r.int(0, img.buf.length) : r.int(0, Math.min(img.buf.length, 2 * img.lay.cs));
    return {
      describe: `truncate to ${len}`,
      async apply(fh) {
        await fh.truncate(len);
        return async () => {
          await fh.write(img.buf, len, img.buf.length - len, len);
        };
      },
    };
  }
  const edits: Array<[number, Buffer]> = [];
  const n = r.chance(0.6) ? 1 : r.int(2, 9);
  for (let i = 0; i < n; i++) {
    const kind = r.float();
    const at = pickOffset(r, img);
    if (kind < 0.45) {
      const b = Buffer.from([img.buf[at]! ^ (1 << r.int(0, 8))]);
      edits.push([at, b]);
    } else if (kind < 0.7) {
      edits.push([at, Buffer.from([r.int(0, 256)])]);
    } else if (kind < 0.88) {
      const a = at - (at % 8);
      if (a + 8 > img.buf.length) continue;
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(r.chance(0.5) ? r.pick(INTERESTING_U64) : BigInt(r.int(0, img.buf.length * 2)) & ~511n);
      edits.push([a, b]);
    } else {
      const a = at - (at % 4);
      if (a + 4 > img.buf.length) continue;
      const b = Buffer.alloc(4);
      b.writeUInt32BE(r.pick(INTERESTING_U32) >>> 0);
      edits.push([a, b]);
    }
  }
  return {
    describe: edits.map(([a, b]) => `@${a}=${b.toString('hex')}`).join(' '),
    async apply(fh) {
      for (const [a, b] of edits) await fh.write(b, 0, b.length, a);
      return async () => {
        for (const [a, b] of edits) await fh.write(img.buf, a, b.length, a);
      };
    },
  };
}

describe('mutated qcow2 images never crash, hang or balloon the reader', () => {
  it('builds the base images', () => {
    expect(images.map((i) => i.name)).toEqual(['plain', 'deflate', 'zstd', 'extl2', 'backing', 'v2']);
  });

  for (const name of ['plain', 'deflate', 'zstd', 'extl2', 'backing', 'v2']) {
    it(`${name}: ${PER_IMAGE} mutations end in success or a CloneboxError`, async () => {
      const img = images.find((i) => i.name === name)!;
      const r = rng(SEED + img.name.length * 7919 + img.name.charCodeAt(0));
      const work = path.join(tmp(), `${name}-mutant.qcow2`);
      await writeFile(work, img.buf);
      const fh = await open(work, 'r+');
      const rss0 = process.memoryUsage().rss;
      let maxRss = rss0;
      const tally = new Map<string, number>();
      let compared = 0;
      let slowest = 0;
      try {
        for (let i = 0; i < PER_IMAGE; i++) {
          const m = makeMutation(r, img);
          const restore = await m.apply(fh, img);
          const where = `seed ${SEED}, image ${name}, mutation #${i}: ${m.describe}`;
          const t0 = Date.now();
          let timer: NodeJS.Timeout | undefined;
          let o: Outcome;
          try {
            o = await Promise.race([
              readAll(work),
              new Promise<never>((_, reject) => {
                timer = setTimeout(() => reject(new Error(`hang (> ${ITERATION_LIMIT_MS * 5} ms)`)), ITERATION_LIMIT_MS * 5);
              }),
            ]);
          } catch (err) {
            throw new Error(`${where}: ${(err as Error)?.stack ?? err}`);
          } finally {
            clearTimeout(timer);
          }
          const ms = Date.now() - t0;
          slowest = Math.max(slowest, ms);
          if (ms > ITERATION_LIMIT_MS) throw new Error(`${where}: took ${ms} ms`);
          maxRss = Math.max(maxRss, process.memoryUsage().rss);
          if (maxRss - rss0 > RSS_GROWTH_LIMIT) throw new Error(`${where}: rss grew by ${((maxRss - rss0) / M).toFixed(0)} MiB`);
          const key = o.ok ? 'ok' : o.code;
          tally.set(key, (tally.get(key) ?? 0) + 1);
          // Differential check on a sample of successful reads: QEMU must read the same bytes (when it
          // can read the mutated file at all; it refuses some things clonebox tolerates, and vice versa).
          if (o.ok && o.bytes && compared < QEMU_SAMPLES_PER_IMAGE && (QEMU_SAMPLES_PER_IMAGE > PER_IMAGE / 10 || r.chance(0.1))) {
            const raw = `${work}.raw`;
            const q = await run('qemu-img', ['convert', '-O', 'raw', aloneSpec(work), raw]);
            if (q.code === 0) {
              compared++;
              try {
                assertSameBytes(o.bytes, await readFile(raw), where);
              } catch (err) {
                await writeFile(path.join(tmp(), `${name}-mismatch-${i}.qcow2`), await readFile(work));
                throw err;
              }
            }
          }
          await restore();
        }
      } finally {
        await fh.close();
      }
      const summary = [...tally.entries()]
        .sort()
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
      console.log(`qcow2-mutation ${name}: ${summary}; compared with qemu: ${compared}; slowest ${slowest} ms; rss +${((maxRss - rss0) / M).toFixed(0)} MiB`);
      const total = [...tally.values()].reduce((a, b) => a + b, 0);
      expect(total).toBe(PER_IMAGE);
      // Not vacuous: the mutations hit both outcomes, and several distinct error codes.
      expect(tally.get('ok') ?? 0).toBeGreaterThan(PER_IMAGE / 20);
      expect(total - (tally.get('ok') ?? 0)).toBeGreaterThan(PER_IMAGE / 5);
      expect(tally.size).toBeGreaterThanOrEqual(3);
      // The unmutated file is intact again (restores worked).
      expect((await readFile(work)).equals(img.buf)).toBe(true);
    });
  }
});
