/**
 * Writer round trips against QEMU: random sparse content is written by Qcow2Writer and, in parallel,
 * into a raw reference file. Then
 *  - `qemu-img check` is clean (exit 0: no errors, no leaks, no corruptions),
 *  - `qemu-img compare` finds the image identical to the raw reference,
 *  - `qemu-img map` of the image alone shows exactly the data / zero clusters we wrote,
 *  - clonebox's own reader reads back the same bytes.
 * Plus overlays on a backing file (relative names), abort()/finish() file hygiene, and L2 table
 * eviction (more than the writer's 16 MiB L2 cache).
 *
 * Seed: QCOW2_WRITER_SEED (printed below) replays a run.
 */
import { copyFile, type FileHandle, mkdir, open, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { Chain } from '../src/qcow2/chain.js';
import { Qcow2Image } from '../src/qcow2/reader.js';
import { type CreateOptions, Qcow2Writer } from '../src/qcow2/writer.js';
import { assertSameBytes, readFileRange } from './helpers/bytes.js';
import { type MapExtent, mergeExtents, qemuCheck, qemuCompare, qemuImg, qemuIo, qemuMapAlone, qemuRaw } from './helpers/qemu.js';
import { type Rng, rng, seedFromEnv } from './helpers/random.js';
import { makeTempDir, useTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * 1024;
const G = 1024 * M;
const SEED = seedFromEnv('QCOW2_WRITER_SEED', 77031);
console.log(`qcow2-writer: seed ${SEED} (set QCOW2_WRITER_SEED to replay)`);

const tmp = useTempDir('clonebox-writer-');

/**
 * A Qcow2Writer and a raw reference file receiving the same operations, plus the cluster-level model
 * of what the image alone must hold (data / zero per cluster, unallocated elsewhere).
 */
class Twin {
  readonly clusters = new Map<number, 'data' | 'zero'>();
  dataWrites = 0;
  zeroWrites = 0;
  rewrites = 0;
  /** One scratch buffer reused for every write, to prove the writer copies what it keeps. */
  private scratch: Buffer;

  private constructor(
    readonly w: Qcow2Writer,
    readonly raw: FileHandle,
    readonly rawPath: string,
    readonly r: Rng,
  ) {
    this.scratch = Buffer.alloc(0);
  }

  static async create(file: string, opts: CreateOptions, r: Rng, rawPath = `${file}.ref.raw`, rawExists = false): Promise<Twin> {
    const w = await Qcow2Writer.create(file, opts);
    const raw = await open(rawPath, rawExists ? 'r+' : 'w+');
    if (!rawExists) await raw.truncate(opts.virtualSize);
    return new Twin(w, raw, rawPath, r);
  }

  get cs(): number {
    return this.w.clusterSize;
  }

  get vs(): number {
    return this.w.virtualSize;
  }

  get clusterCount(): number {
    return Math.ceil(this.vs / this.cs);
  }

  /** Writes random data to `n` clusters from cluster index `c` (the disk's last cluster may be short). */
  async data(c: number, n = 1): Promise<void> {
    const guest = c * this.cs;
    const len = Math.min(n * this.cs, this.vs - guest);
    if (this.scratch.length < len) this.scratch = Buffer.alloc(len);
    const buf = this.scratch.subarray(0, len);
    this.r.bytes(len).copy(buf);
    for (let i = c; i < c + n && i < this.clusterCount; i++) if (this.clusters.get(i) === 'data') this.rewrites++;
    await this.w.write(guest, buf);
    await this.raw.write(buf, 0, len, guest);
    buf.fill(0xee); // the caller may reuse its buffer once write() returns
    for (let i = c; i < c + n && i < this.clusterCount; i++) this.clusters.set(i, 'data');
    this.dataWrites++;
  }

  /** Marks `n` clusters from index `c` as zero. */
  async zero(c: number, n = 1): Promise<void> {
    const guest = c * this.cs;
    const len = Math.min(n * this.cs, this.vs - guest);
    await this.w.writeZero(guest, len);
    await this.raw.write(Buffer.alloc(len), 0, len, guest);
    for (let i = c; i < c + n && i < this.clusterCount; i++) this.clusters.set(i, 'zero');
    this.zeroWrites++;
  }

  async finish(): Promise<void> {
    await this.w.finish();
    await this.raw.close();
  }

  /** What `qemu-img map` of the image alone must say. */
  expectedMap(): MapExtent[] {
    const out: MapExtent[] = [];
    let pos = 0;
    for (const c of [...this.clusters.keys()].sort((a, b) => a - b)) {
      const off = c * this.cs;
      if (off > pos) out.push({ offset: pos, length: off - pos, kind: 'unallocated' });
      const end = Math.min(off + this.cs, this.vs);
      out.push({ offset: off, length: end - off, kind: this.clusters.get(c)! });
      pos = end;
    }
    if (pos < this.vs) out.push({ offset: pos, length: this.vs - pos, kind: 'unallocated' });
    return mergeExtents(out);
  }
}

/** The checks every written image must pass. */
async function verify(file: string, twin: Twin, opts: { readBack?: boolean; map?: boolean } = {}): Promise<void> {
  const chk = await qemuCheck(file);
  expect(chk.result['check-errors'], chk.stdout).toBe(0);
  expect(chk.result.corruptions ?? 0, chk.stdout).toBe(0);
  expect(chk.result.leaks ?? 0, chk.stdout).toBe(0);
  expect(chk.code, chk.stdout + chk.stderr).toBe(0);
  const cmp = await qemuCompare(file, twin.rawPath, { formatA: 'qcow2', formatB: 'raw' });
  expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
  expect(cmp.stdout).toMatch(/Images are identical/);
  if (opts.map === false) return;
  const map = await qemuMapAlone(file);
  expect(map).toEqual(twin.expectedMap());
  const info = JSON.parse((await qemuImg(['info', '--output=json', '-U', file])).stdout);
  expect(info['virtual-size']).toBe(twin.vs);
  expect(info['cluster-size']).toBe(twin.cs);
  expect(info['format-specific'].data.compat).toBe('1.1');
  if (opts.readBack !== false) {
    // clonebox reads back what it wrote (every data cluster), and maps it as qemu does.
    const img = await Qcow2Image.open(file);
    try {
      const got: MapExtent[] = [];
      for await (const e of img.extents()) got.push(e);
      expect(got).toEqual(map);
      for await (const run of img.runs()) {
        if (run.kind !== 'data') continue;
        assertSameBytes(await img.readRun(run), await readFileRange(twin.rawPath, run.offset, run.length), 'read back', run.offset);
      }
    } finally {
      await img.close();
    }
  }
}

async function listDir(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

describe('Qcow2Writer round trips through qemu-img', () => {
  const sizes: Array<{ name: string; cs: number; vs: number; ops: number; maxRun: number }> = [
    { name: '512-byte clusters', cs: 512, vs: 3 * M + 7 * 512, ops: 400, maxRun: 8 },
    { name: '64K clusters, last cluster partial', cs: 64 * K, vs: 64 * M + 3 * 512, ops: 250, maxRun: 8 },
    { name: '2M clusters, last cluster partial', cs: 2 * M, vs: 41 * M + 512, ops: 30, maxRun: 3 },
  ];
  for (const sz of sizes) {
    it(`random sparse content: ${sz.name}`, async () => {
      const r = rng(SEED + sz.cs);
      const dir = await makeTempDir('clonebox-writer-');
      const file = path.join(dir, 'disk.qcow2');
      const t = await Twin.create(file, { virtualSize: sz.vs, clusterSize: sz.cs }, r);
      const n = t.clusterCount;
      for (let i = 0; i < sz.ops; i++) {
        const k = r.float();
        const c = r.int(0, n);
        const len = r.int(1, Math.min(sz.maxRun, n - c) + 1);
        if (k < 0.55) await t.data(c, len);
        else if (k < 0.75) await t.zero(c, len);
        else {
          // Rewrite a cluster written before (same host cluster reused), or write over a zero cluster.
          const known = [...t.clusters.keys()];
          if (known.length) await t.data(r.pick(known), 1);
        }
      }
      await t.data(n - 1, 1); // the last, partial cluster of the disk
      await t.zero(n - 3, 1);
      await t.data(n - 3, 1); // data over a preallocated zero
      await t.finish();
      expect(await listDir(dir)).toEqual(['disk.qcow2', 'disk.qcow2.ref.raw']);
      expect(t.dataWrites).toBeGreaterThan(sz.ops / 3);
      expect(t.zeroWrites).toBeGreaterThan(sz.ops / 10);
      expect(t.rewrites).toBeGreaterThan(0);
      await verify(file, t);
    });
  }

  it('sparse writes at 3 GiB in a 4 GiB disk (L1 entries far apart)', async () => {
    const r = rng(SEED + 3);
    const file = path.join(tmp(), 'big.qcow2');
    const t = await Twin.create(file, { virtualSize: 4 * G, clusterSize: 64 * K }, r);
    const cl = (off: number) => off / t.cs;
    await t.data(0, 2);
    await t.data(cl(3 * G), 16);
    await t.zero(cl(3 * G + M), 32);
    await t.data(cl(3 * G + 512 * M), 3); // the next L2 table
    await t.data(cl(4 * G - 64 * K), 1); // the disk's last cluster
    await t.data(cl(1 * G + 640 * K), 4);
    await t.data(cl(3 * G), 1); // rewrite
    await t.finish();
    expect(t.expectedMap().filter((e) => e.kind === 'data').length).toBe(5);
    await verify(file, t, { readBack: true });
  });

  it('an empty image (no writes) and a zero-sized one pass qemu-img check', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    for (const [name, vs, cs] of [
      ['empty.qcow2', 10 * M, 64 * K],
      ['tiny.qcow2', 512, 512],
      ['zero.qcow2', 0, 64 * K],
    ] as const) {
      const file = path.join(dir, name);
      const t = await Twin.create(file, { virtualSize: vs, clusterSize: cs }, rng(SEED));
      await t.finish();
      await verify(file, t);
    }
  });

  it('a fully zeroed disk (writeZero over the whole range) holds zero clusters only', async () => {
    const file = path.join(tmp(), 'allzero.qcow2');
    const t = await Twin.create(file, { virtualSize: 8 * M + 512, clusterSize: 64 * K }, rng(SEED + 9));
    await t.zero(0, t.clusterCount);
    await t.finish();
    expect(t.expectedMap()).toEqual([{ offset: 0, length: 8 * M + 512, kind: 'zero' }]);
    await verify(file, t);
  });

  it('more than 16 MiB of L2 tables (512-byte clusters): evicted tables are written back and re-read', async () => {
    // 512-byte clusters: one L2 table (512 B) maps 32 KiB. The writer caches 16 MiB of L2 tables, i.e.
    // 32768 tables; touching 40000 distinct tables forces evictions, and the second pass writes into
    // evicted tables again (re-read from disk, updated, written back).
    const r = rng(SEED + 512);
    const file = path.join(tmp(), 'evict.qcow2');
    const vs = 2 * G;
    const t = await Twin.create(file, { virtualSize: vs, clusterSize: 512 }, r);
    const tables = vs / (64 * 512);
    const perm = Array.from({ length: tables }, (_, i) => i);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = r.int(0, i + 1);
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    const touched = perm.slice(0, 34_000); // > 32768 tables in the cache
    const start = Date.now();
    for (const tbl of touched) await t.data(tbl * 64 + r.int(0, 64), 1);
    // Second pass, in the order the tables were first touched: the oldest are long evicted.
    for (let i = 0; i < 2500; i++) {
      const tbl = touched[i]!;
      const k = r.float();
      if (k < 0.4)
        await t.data(tbl * 64 + r.int(0, 64), 1); // another cluster of an evicted table
      else if (k < 0.7) await t.zero(tbl * 64 + r.int(0, 64), 1);
      else {
        // rewrite exactly the cluster written in the first pass
        const c = [...Array(64).keys()].map((x) => tbl * 64 + x).find((x) => t.clusters.get(x) === 'data');
        if (c !== undefined) await t.data(c, 1);
      }
    }
    await t.finish();
    console.log(`qcow2-writer: ${t.dataWrites + t.zeroWrites} writes into ${touched.length} L2 tables in ${Date.now() - start} ms`);
    expect(t.rewrites).toBeGreaterThan(400);
    // qemu-img check + compare (a lost update of an evicted table changes content, which compare sees).
    // The map and full read-back are skipped here for time (~70k extents); the reader is spot-checked below.
    await verify(file, t, { readBack: false, map: false });
    // Spot-check clonebox's reader on the evicted-and-rewritten tables.
    const img = await Qcow2Image.open(file);
    try {
      for (let i = 0; i < 200; i++) {
        const tbl = touched[i]!;
        const off = tbl * 64 * 512;
        assertSameBytes(await img.read(off, 32 * K), await readFileRange(t.rawPath, off, 32 * K), `L2 table ${tbl}`, off);
      }
    } finally {
      await img.close();
    }
  });
});

describe('Qcow2Writer overlays on a backing file', () => {
  it('overlay with a relative backing name reads through correctly (qemu-img compare)', async () => {
    const r = rng(SEED + 11);
    const dir = tmp();
    const base = path.join(dir, 'ov-base.qcow2');
    await qemuImg(['create', '-f', 'qcow2', base, '8M']);
    await qemuIo(base, ['write -P 0x11 0 3M', 'write -P 0x22 5M 1M', 'write -z 3M 64k']);
    const ref = path.join(dir, 'ov-top.ref.raw');
    await qemuRaw(base, ref); // the overlay's reference starts as the base's content
    const top = path.join(dir, 'ov-top.qcow2');
    const t = await Twin.create(top, { virtualSize: 8 * M, clusterSize: 64 * K, backingFile: 'ov-base.qcow2', backingFormat: 'qcow2' }, r, ref, true);
    await t.data(1, 2); // over base data
    await t.zero(10, 3); // zero clusters hide base data
    await t.data(60, 1); // where the base is unallocated
    await t.zero(80, 1);
    await t.data(127, 1); // the last cluster
    await t.finish();
    // qemu runs from another directory: the relative name must resolve against the overlay's directory.
    const chk = await qemuCheck(top);
    expect(chk.code, chk.stdout).toBe(0);
    const cmp = await qemuCompare(top, ref, { formatA: 'qcow2', formatB: 'raw' });
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    expect(await qemuMapAlone(top)).toEqual(t.expectedMap());
    const info = JSON.parse((await qemuImg(['info', '--output=json', top])).stdout);
    expect(info['backing-filename']).toBe('ov-base.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    // And clonebox's Chain sees the same disk.
    const chain = await Chain.open(top);
    try {
      expect(chain.layers.map((l) => path.basename(l.path))).toEqual(['ov-top.qcow2', 'ov-base.qcow2']);
      assertSameBytes(await chain.read(0, 8 * M), await readFileRange(ref, 0, 8 * M), 'chain read');
    } finally {
      await chain.close();
    }
  });

  it('overlay in a subdirectory ("../base") over a raw backing file, and a writer-made chain of three', async () => {
    const r = rng(SEED + 12);
    const dir = tmp();
    await mkdir(path.join(dir, 'layers'), { recursive: true });
    const base = path.join(dir, 'w3-base.raw');
    const fh = await open(base, 'w');
    await fh.write(r.bytes(2 * M), 0, 2 * M, 0);
    await fh.close();
    const ref = path.join(dir, 'w3.ref.raw');
    await copyFile(base, ref);
    const mid = path.join(dir, 'layers', 'w3-mid.qcow2');
    const tm = await Twin.create(mid, { virtualSize: 2 * M, clusterSize: 4 * K, backingFile: '../w3-base.raw', backingFormat: 'raw' }, r, ref, true);
    await tm.data(3, 5);
    await tm.zero(100, 10);
    await tm.finish();
    expect((await qemuCompare(mid, ref, { formatA: 'qcow2', formatB: 'raw' })).code).toBe(0);
    expect((await qemuCheck(mid)).code).toBe(0);
    const top = path.join(dir, 'layers', 'w3-top.qcow2');
    const tt = await Twin.create(top, { virtualSize: 2 * M, clusterSize: 64 * K, backingFile: 'w3-mid.qcow2', backingFormat: 'qcow2' }, r, ref, true);
    await tt.data(0, 1);
    await tt.zero(20, 2);
    await tt.finish();
    expect((await qemuCheck(top)).code).toBe(0);
    const cmp = await qemuCompare(top, ref, { formatA: 'qcow2', formatB: 'raw' });
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    expect(await qemuMapAlone(top)).toEqual(tt.expectedMap());
    const chain = await Chain.open(top);
    try {
      expect(chain.layers.length).toBe(3);
      assertSameBytes(await chain.read(0, 2 * M), await readFileRange(ref, 0, 2 * M), 'chain read');
    } finally {
      await chain.close();
    }
  });
});

describe('Qcow2Writer file hygiene', () => {
  it('abort() leaves no file at all, and is safe to repeat', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const w = await Qcow2Writer.create(path.join(dir, 'gone.qcow2'), { virtualSize: 4 * M, clusterSize: 64 * K });
    expect((await listDir(dir)).length).toBe(1); // the temporary file, while writing
    expect((await listDir(dir))[0]).not.toBe('gone.qcow2');
    await w.write(0, Buffer.alloc(128 * K, 1));
    await w.writeZero(1 * M, 64 * K);
    await w.abort();
    await w.abort();
    expect(await listDir(dir)).toEqual([]);
  });

  it('finish() leaves exactly the image, under its final name', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const w = await Qcow2Writer.create(path.join(dir, 'done.qcow2'), { virtualSize: 4 * M, clusterSize: 64 * K });
    expect(await listDir(dir)).not.toContain('done.qcow2'); // not visible before finish()
    await w.write(64 * K, Buffer.alloc(64 * K, 7));
    await w.finish();
    expect(await listDir(dir)).toEqual(['done.qcow2']);
    expect((await qemuCheck(path.join(dir, 'done.qcow2'))).code).toBe(0);
    // abort() after finish() must not delete the finished image.
    await w.abort();
    expect(await listDir(dir)).toEqual(['done.qcow2']);
  });

  it('refuses misaligned and out-of-range writes with a CloneboxError, and bad create options', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const w = await Qcow2Writer.create(path.join(dir, 'strict.qcow2'), { virtualSize: 1 * M, clusterSize: 64 * K });
    try {
      await expect(w.write(512, Buffer.alloc(64 * K))).rejects.toBeInstanceOf(CloneboxError);
      await expect(w.write(0, Buffer.alloc(1000))).rejects.toBeInstanceOf(CloneboxError); // partial, not the last cluster
      await expect(w.write(1 * M, Buffer.alloc(64 * K))).rejects.toBeInstanceOf(CloneboxError);
      await expect(w.writeZero(100, 64 * K)).rejects.toBeInstanceOf(CloneboxError);
    } finally {
      await w.abort();
    }
    for (const cs of [256, 3000, 4 * M]) {
      await expect(Qcow2Writer.create(path.join(dir, 'bad.qcow2'), { virtualSize: M, clusterSize: cs })).rejects.toMatchObject({ code: 'BAD_SIZE' });
    }
    await expect(Qcow2Writer.create(path.join(dir, 'bad.qcow2'), { virtualSize: M, backingFile: 'x'.repeat(1024) })).rejects.toBeInstanceOf(CloneboxError);
    await expect(Qcow2Writer.create(path.join(dir, 'bad.qcow2'), { virtualSize: 2 ** 60, clusterSize: 512 })).rejects.toMatchObject({ code: 'BAD_SIZE' });
    // QEMU sees whole 512-byte sectors only (it rounds the header's size down): such a size is refused.
    await expect(Qcow2Writer.create(path.join(dir, 'bad.qcow2'), { virtualSize: 1000, clusterSize: 512 })).rejects.toMatchObject({ code: 'BAD_SIZE' });
    expect(await listDir(dir)).toEqual([]);
  });
});

describe('Qcow2Writer in place, reading back what it wrote (sync/placed.ts)', () => {
  it('reads back blocks across two write batches, and writes at its path itself', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const file = path.join(dir, '.layer.sync-test');
    const cs = 16 * K;
    const w = await Qcow2Writer.create(file, { virtualSize: 64 * M, clusterSize: cs, inPlace: true });
    expect(await listDir(dir)).toEqual(['.layer.sync-test']); // no temporary name
    const r = rng(SEED);
    const blocks: { host: number; data: Buffer }[] = [];
    let straddled = 0;
    // One cluster first: the 64 KiB blocks after it do not line up with the 4 MiB batches.
    let guest = 0;
    for (const len of [cs, ...Array<number>(100).fill(64 * K)]) {
      const data = Buffer.alloc(len);
      for (let i = 0; i < len; i += 4) data.writeUInt32LE(r.int(0, 2 ** 32 - 1), i);
      const host = await w.write(guest, data);
      expect(host).toBeGreaterThan(0);
      blocks.push({ host, data });
      guest += len;
      // The writer gathers contiguous clusters into 4 MiB batches from its first data cluster (a read
      // back writes nothing out): read back each block whose head is in one batch and tail in the next.
      const first = blocks[0]!.host;
      if (Math.floor((host - first) / (4 * M)) !== Math.floor((host + len - 1 - first) / (4 * M))) {
        straddled++;
        assertSameBytes(await w.readBack(host, len), data, `block at ${host}, across two batches`);
      }
    }
    expect(straddled, 'no block lay across two batches').toBeGreaterThan(0);
    for (const b of blocks) assertSameBytes(await w.readBack(b.host, b.data.length), b.data, `block at ${b.host}`);
    await expect(w.readBack(2 ** 40, 64 * K)).rejects.toBeInstanceOf(CloneboxError);
    await w.finish({ durable: false });
    expect(await listDir(dir)).toEqual(['.layer.sync-test']);
    expect((await qemuCheck(file)).code).toBe(0);
    const fh = await open(file, 'r');
    try {
      for (const b of blocks) {
        const got = Buffer.alloc(b.data.length);
        await fh.read(got, 0, got.length, b.host);
        assertSameBytes(got, b.data, `on disk at ${b.host}`);
      }
    } finally {
      await fh.close();
    }
  });

  it('reads back from the file, the batch being written and the filling batch, blocking and not', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const file = path.join(dir, '.mixed.sync-test');
    const w = await Qcow2Writer.create(file, { virtualSize: 256 * M, clusterSize: 64 * K, inPlace: true });
    const flyingOf = () => (w as unknown as { flying: { host: number; len: number } | null }).flying;
    const r = rng(SEED + 5);
    const written: { host: number; data: Buffer }[] = [];
    const same = async (host: number, data: Buffer, what: string) => assertSameBytes(await w.readBack(host, data.length), data, what);
    let fromFlying = 0;
    let large = 0;
    let guest = 0;
    for (let i = 0; i < 400; i++) {
      const data = r.bytes(64 * K);
      const expected = Buffer.from(data);
      const host = await w.write(guest, data);
      data.fill(0xee); // the writer keeps its own copy: what is read back must not see this
      guest += data.length;
      written.push({ host, data: expected });
      const f = flyingOf();
      const pick = written[r.int(0, written.length - 1)]!;
      if (f && pick.host >= f.host && pick.host < f.host + f.len) fromFlying++;
      await same(pick.host, pick.data, `block at ${pick.host}`);
      if (i % 50 === 49 && i >= 96) {
        // Over 4 MiB: read through the thread pool, laid over by both batches.
        const from = written.length - 96;
        const want = Buffer.concat(written.slice(from).map((b) => b.data));
        await same(written[from]!.host, want, `the last 6 MiB at ${written[from]!.host}`);
        large++;
      }
    }
    expect(fromFlying, 'no read back came from the batch being written').toBeGreaterThan(0);
    expect(large).toBe(7);
    await w.finish({ durable: false });
    expect((await qemuCheck(file)).code).toBe(0);
  });

  it('abandon() leaves the file with every block handed to it', async () => {
    const dir = await makeTempDir('clonebox-writer-');
    const file = path.join(dir, '.kept.sync-test');
    const w = await Qcow2Writer.create(file, { virtualSize: 8 * M, clusterSize: 64 * K, inPlace: true });
    const data = Buffer.alloc(64 * K, 0x5a);
    const host = await w.write(0, data);
    await w.abandon();
    await w.abandon();
    const got = Buffer.alloc(data.length);
    const fh = await open(file, 'r');
    await fh.read(got, 0, got.length, host);
    await fh.close();
    assertSameBytes(got, data, 'abandoned block');
  });
});
