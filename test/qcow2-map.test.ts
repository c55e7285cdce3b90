/**
 * The reader against QEMU: images of every variant the qcow2 issue lists are made with the real
 * qemu-img / qemu-io from random data, then
 *  - `clonebox image map --json` must equal `qemu-img map --output=json` of the file opened alone
 *    (merged the same way),
 *  - `clonebox image info --json` must report what `qemu-img info` reports (and what we asked for),
 *  - every data run the reader yields must hold the bytes QEMU reads there (raw convert of the file
 *    opened alone), and for chains Chain.read must equal QEMU's raw convert of the whole chain.
 *
 * Seed: QCOW2_MAP_SEED (printed below) replays a run.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Chain } from '../src/qcow2/chain.js';
import { Qcow2Image, type Run } from '../src/qcow2/reader.js';
import { readData } from '../src/qcow2/stream.js';
import { assertSameBytes, readFileRange } from './helpers/bytes.js';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { type MapExtent, qemuCheck, qemuCreate, qemuImg, qemuIo, qemuMapAlone, qemuRaw, qemuRawAlone } from './helpers/qemu.js';
import { compressibleBytes, type Rng, rng, seedFromEnv } from './helpers/random.js';
import { useTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * 1024;
const SEED = seedFromEnv('QCOW2_MAP_SEED', 20240602);
console.log(`qcow2-map: seed ${SEED} (set QCOW2_MAP_SEED to replay)`);

const tmp = useTempDir('clonebox-map-');

/** Writes random bytes to a fresh file and returns a qemu-io command writing them at `off`. */
class DataSource {
  private n = 0;
  constructor(
    private readonly dir: string,
    readonly r: Rng,
  ) {}
  async file(buf: Buffer): Promise<string> {
    const f = path.join(this.dir, `src-${this.n++}.bin`);
    await writeFile(f, buf);
    return f;
  }
  /** `write -s RANDOMFILE off len`. */
  async w(off: number, len: number): Promise<string> {
    return `write -s ${await this.file(this.r.bytes(len))} ${off} ${len}`;
  }
  /** Same with compressible (text-like) bytes. */
  async wText(off: number, len: number): Promise<string> {
    return `write -s ${await this.file(compressibleBytes(this.r, len))} ${off} ${len}`;
  }
  /** A raw file of `size` bytes mixing random, compressible and zero stretches of `chunk` bytes. */
  async mixedRaw(name: string, size: number, chunk: number): Promise<string> {
    const buf = Buffer.alloc(size);
    for (let off = 0; off < size; off += chunk) {
      const len = Math.min(chunk, size - off);
      const k = this.r.int(0, 4);
      if (k === 0) this.r.bytes(len).copy(buf, off);
      else if (k === 1 || k === 2) compressibleBytes(this.r, len).copy(buf, off);
      // k === 3: zeros
      if (this.r.chance(0.2)) buf.fill(0, off, off + this.r.int(0, len)); // partly zero clusters too
    }
    const f = path.join(this.dir, name);
    await writeFile(f, buf);
    return f;
  }
}

interface Expected {
  version: 2 | 3;
  cluster_size: number;
  virtual_size: number;
  backing_file: string | null;
  backing_format: string | null;
  compression_type: 'zlib' | 'zstd';
  extended_l2: boolean;
}

interface Built {
  file: string;
  expect: Expected;
  /** Kinds that must appear in the map (so that a variant cannot pass without exercising its feature). */
  kinds: Array<'data' | 'zero' | 'unallocated'>;
  /** The reader must yield at least this many compressed runs. */
  minCompressed?: number;
  /** Some extent must be shorter than a cluster or not cluster aligned (extended L2 subclusters). */
  subclusterGranular?: boolean;
  /** A warning `image map` must print on stderr. */
  warning?: RegExp;
}

interface Variant {
  name: string;
  /** The image has a backing chain: Chain.read is compared with QEMU's view of the whole chain. */
  chain?: boolean;
  build(dir: string, src: DataSource): Promise<Built>;
}

const v3 = (cluster_size: number, virtual_size: number, extra: Partial<Expected> = {}): Expected => ({
  version: 3,
  cluster_size,
  virtual_size,
  backing_file: null,
  backing_format: null,
  compression_type: 'zlib',
  extended_l2: false,
  ...extra,
});

const variants: Variant[] = [
  {
    name: 'compat=0.10 (v2) with writes, zero writes and discards',
    async build(dir, s) {
      const f = path.join(dir, 'v2.qcow2');
      await qemuCreate(f, 8 * M, { options: ['compat=0.10'] });
      await qemuIo(f, [
        await s.w(0, 100_000),
        await s.w(3 * M + 333, 5000),
        'write -z 5M 128k',
        await s.w(6 * M, 256 * K),
        'discard 6208k 128k',
        await s.w(8 * M - 512, 512),
      ]);
      return { file: f, expect: { ...v3(65536, 8 * M), version: 2 }, kinds: ['data', 'unallocated'] };
    },
  },
  {
    name: 'cluster_size=512 with many unaligned writes, zero writes and discards',
    async build(dir, s) {
      const f = path.join(dir, 'c512.qcow2');
      await qemuCreate(f, 2 * M, { options: ['cluster_size=512'] });
      const cmds: string[] = [];
      for (let i = 0; i < 60; i++) {
        const off = s.r.int(0, 2 * M - 4096);
        cmds.push(await s.w(off, s.r.int(1, 4096)));
      }
      for (let i = 0; i < 10; i++) cmds.push(`write -z ${s.r.int(0, 4000) * 512} ${s.r.int(1, 8) * 512}`);
      for (let i = 0; i < 10; i++) cmds.push(`write -z -u ${s.r.int(0, 4000) * 512} ${s.r.int(1, 8) * 512}`);
      for (let i = 0; i < 10; i++) cmds.push(`discard ${s.r.int(0, 4000) * 512} ${s.r.int(1, 16) * 512}`);
      await qemuIo(f, cmds);
      return { file: f, expect: v3(512, 2 * M), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'cluster_size=2M with unaligned writes, zero writes and a discard',
    async build(dir, s) {
      const f = path.join(dir, 'c2m.qcow2');
      await qemuCreate(f, 24 * M, { options: ['cluster_size=2M'] });
      await qemuIo(f, [
        await s.w(1000, 70_000),
        await s.w(4 * M - 100, 300),
        await s.w(9 * M, 3 * M),
        'write -z 14M 2M',
        await s.w(16 * M, 2 * M),
        'write -z 16M 2M',
        await s.w(18 * M, 4 * M),
        'discard 20M 2M',
        await s.w(24 * M - 1, 1),
      ]);
      return { file: f, expect: v3(2 * M, 24 * M), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'extended_l2=on (64K clusters, 2K subclusters) with subcluster writes, zeroes and discards',
    async build(dir, s) {
      const f = path.join(dir, 'extl2.qcow2');
      await qemuCreate(f, 8 * M, { options: ['extended_l2=on', 'cluster_size=64k'] });
      await qemuIo(f, [
        // cluster 0: subclusters 0, 3, 5..6 written, 10..12 zeroed inside the allocated cluster
        await s.w(0, 2 * K),
        await s.w(6 * K, 2 * K),
        await s.w(10 * K, 4 * K),
        'write -z 20k 6k',
        // cluster 2: fully written, then subclusters discarded and zeroed with unmap
        await s.w(128 * K, 64 * K),
        'discard 132k 4k',
        'write -z -u 150k 2k',
        'discard 160k 32k',
        // cluster 4: unaligned write inside one subcluster and across subclusters
        await s.w(256 * K + 3333, 1000),
        await s.w(256 * K + 30_000, 5000),
        // cluster 6: zero subclusters without any allocation
        'write -z 390k 4k',
        // clusters 8..: a longer write across cluster boundaries, then a zero write across one
        await s.w(512 * K + 2 * K, 200 * K),
        'write -z 570k 20k',
        await s.w(8 * M - 2 * K, 2 * K),
      ]);
      return { file: f, expect: v3(64 * K, 8 * M, { extended_l2: true }), kinds: ['data', 'zero', 'unallocated'], subclusterGranular: true };
    },
  },
  {
    name: 'extended_l2=on with 2M clusters (64K subclusters)',
    async build(dir, s) {
      const f = path.join(dir, 'extl2-2m.qcow2');
      await qemuCreate(f, 12 * M, { options: ['extended_l2=on', 'cluster_size=2M'] });
      await qemuIo(f, [
        await s.w(64 * K, 64 * K),
        await s.w(300 * K, 100 * K),
        'write -z 1M 128k',
        await s.w(4 * M, 2 * M),
        'discard 4352k 64k',
        'write -z -u 5M 64k',
        'write -z 8M 192k',
      ]);
      return { file: f, expect: v3(2 * M, 12 * M, { extended_l2: true }), kinds: ['data', 'zero', 'unallocated'], subclusterGranular: true };
    },
  },
  {
    name: 'compressed clusters (deflate, qemu-img convert -c) plus later writes over them',
    async build(dir, s) {
      const raw = await s.mixedRaw('compress-src.raw', 6 * M, 64 * K);
      const f = path.join(dir, 'deflate.qcow2');
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, f]);
      await qemuIo(f, [
        await s.w(100, 1000), // partial overwrite of a (maybe) compressed cluster: copy-on-write
        'write -z 1M 64k',
        await s.wText(2 * M, 64 * K),
        'write -z -u 3M 64k',
        `write -c -s ${await s.file(compressibleBytes(s.r, 64 * K))} 3M 64k`,
        'discard 4M 128k',
      ]);
      return { file: f, expect: v3(64 * K, 6 * M), kinds: ['data', 'zero'], minCompressed: 10 };
    },
  },
  {
    name: 'compressed clusters (deflate) with 4K clusters',
    async build(dir, s) {
      const raw = await s.mixedRaw('compress4k-src.raw', 2 * M, 4 * K);
      const f = path.join(dir, 'deflate4k.qcow2');
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, f]);
      return { file: f, expect: v3(4 * K, 2 * M), kinds: ['data'], minCompressed: 50 };
    },
  },
  {
    name: 'compressed clusters (deflate) with 2M clusters',
    async build(dir, s) {
      const raw = await s.mixedRaw('compress2m-src.raw', 16 * M, 2 * M);
      const f = path.join(dir, 'deflate2m.qcow2');
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M', raw, f]);
      return { file: f, expect: v3(2 * M, 16 * M), kinds: ['data'], minCompressed: 2 };
    },
  },
  {
    name: 'compressed clusters with compression_type=zstd',
    async build(dir, s) {
      const raw = await s.mixedRaw('zstd-src.raw', 6 * M, 64 * K);
      const f = path.join(dir, 'zstd.qcow2');
      await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, f]);
      await qemuIo(f, [await s.w(70_000, 5000), 'write -z -u 5M 64k', `write -c -s ${await s.file(compressibleBytes(s.r, 64 * K))} 5M 64k`]);
      return { file: f, expect: v3(64 * K, 6 * M, { compression_type: 'zstd' }), kinds: ['data'], minCompressed: 10 };
    },
  },
  {
    name: 'zero writes: write -z (preallocated zero on allocated clusters) and write -z -u',
    async build(dir, s) {
      const f = path.join(dir, 'zeroes.qcow2');
      await qemuCreate(f, 4 * M);
      await qemuIo(f, [
        await s.w(0, 1 * M),
        'write -z 64k 128k',
        'write -z -u 320k 128k',
        'write -z 2M 256k',
        'write -z -u 3M 64k',
        'write -z 512k 1000', // unaligned zero write inside a data cluster
      ]);
      const qm = await qemuImg(['map', '--output=json', f]);
      // Not vacuous: qemu reports a zero range that still has a host offset (QCOW2 "zero, allocated").
      expect(JSON.parse(qm.stdout).some((e: { zero: boolean; data: boolean; offset?: number }) => e.zero && !e.data && e.offset !== undefined)).toBe(true);
      return { file: f, expect: v3(64 * K, 4 * M), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'discards of whole and partial clusters',
    async build(dir, s) {
      const f = path.join(dir, 'discards.qcow2');
      await qemuCreate(f, 4 * M, { options: ['refcount_bits=64', 'lazy_refcounts=on'] });
      await qemuIo(f, [await s.w(0, 3 * M), 'discard 64k 64k', 'discard 200k 300k', 'discard 1M 1M', 'discard 2100k 1k']);
      return { file: f, expect: v3(64 * K, 4 * M), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'unaligned writes (1000 bytes at 3333 and others)',
    async build(dir, s) {
      const f = path.join(dir, 'unaligned.qcow2');
      await qemuCreate(f, 4 * M, { options: ['refcount_bits=1'] });
      await qemuIo(f, [await s.w(3333, 1000), await s.w(65535, 2), await s.w(200_001, 131_071), await s.w(1 * M + 511, 1), await s.w(4 * M - 1000, 1000)]);
      return { file: f, expect: v3(64 * K, 4 * M), kinds: ['data', 'unallocated'] };
    },
  },
  {
    name: 'virtual size not a cluster multiple (64K clusters)',
    async build(dir, s) {
      const size = 10 * M + 3 * 512;
      const f = path.join(dir, 'oddsize.qcow2');
      await qemuCreate(f, size);
      await qemuIo(f, [await s.w(size - 1536, 1536), await s.w(5 * M, 100), `write -z ${10 * M} 1k`, await s.w(0, 512)]);
      return { file: f, expect: v3(64 * K, size), kinds: ['data', 'unallocated'] };
    },
  },
  {
    name: 'virtual size not a cluster multiple (2M clusters, zero tail)',
    async build(dir, s) {
      const size = 5 * M + 512;
      const f = path.join(dir, 'oddsize2m.qcow2');
      await qemuCreate(f, size, { options: ['cluster_size=2M'] });
      await qemuIo(f, [await s.w(0, 4096), `write -z ${4 * M} ${M + 512}`]);
      return { file: f, expect: v3(2 * M, size), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'large sparse virtual size with data past 4 GiB (several L2 tables)',
    async build(dir, s) {
      const f = path.join(dir, 'sparse.qcow2');
      await qemuCreate(f, 6 * 1024 * M);
      await qemuIo(f, [await s.w(0, 4096), await s.w(512 * M - 100, 200), await s.w(5 * 1024 * M + 12345, 70_000), 'write -z 3G 1M']);
      return { file: f, expect: v3(64 * K, 6 * 1024 * M), kinds: ['data', 'zero', 'unallocated'] };
    },
  },
  {
    name: 'overlay on a qcow2 backing file (map of the overlay alone)',
    chain: true,
    async build(dir, s) {
      const base = path.join(dir, 'chain-base.qcow2');
      await qemuCreate(base, 4 * M);
      await qemuIo(base, [await s.w(0, 4 * M)]);
      const top = path.join(dir, 'chain-top.qcow2');
      await qemuCreate(top, 4 * M, { backing: 'chain-base.qcow2' });
      await qemuIo(top, [
        await s.w(3333, 1000), // partial cluster: qemu copies the rest of the cluster up from the base
        'write -z 1M 128k',
        'write -z 1600k 1000',
        'discard 2M 64k',
        await s.w(3 * M, 64 * K),
      ]);
      return {
        file: top,
        expect: v3(64 * K, 4 * M, { backing_file: 'chain-base.qcow2', backing_format: 'qcow2' }),
        kinds: ['data', 'zero', 'unallocated'],
      };
    },
  },
  {
    name: 'three-layer chain over a raw base, the top one larger than its backing file',
    chain: true,
    async build(dir, s) {
      const raw = path.join(dir, 'chain3-base.raw');
      await writeFile(raw, s.r.bytes(2 * M - 3996)); // raw base, shorter than the layer above it
      const mid = path.join(dir, 'chain3-mid.qcow2');
      await qemuCreate(mid, 2 * M, { options: ['cluster_size=4k'], backing: 'chain3-base.raw', backingFormat: 'raw' });
      await qemuIo(mid, [await s.w(4096, 8192), 'write -z 1M 64k', 'discard 1536k 8k']);
      const top = path.join(dir, 'chain3-top.qcow2');
      await qemuCreate(top, 3 * M, { options: ['cluster_size=16k'], backing: 'chain3-mid.qcow2' });
      await qemuIo(top, [await s.w(10_000, 20_000), await s.w(2 * M + 100, 1000), 'write -z 1040k 16k']);
      return {
        file: top,
        expect: v3(16 * K, 3 * M, { backing_file: 'chain3-mid.qcow2', backing_format: 'qcow2' }),
        kinds: ['data', 'zero', 'unallocated'],
      };
    },
  },
  {
    name: 'extended_l2 overlay on a backing file (subcluster copy-on-write)',
    chain: true,
    async build(dir, s) {
      const base = path.join(dir, 'el2-base.qcow2');
      await qemuCreate(base, 2 * M);
      await qemuIo(base, [await s.w(0, 2 * M)]);
      const top = path.join(dir, 'el2-top.qcow2');
      await qemuCreate(top, 2 * M, { options: ['extended_l2=on'], backing: 'el2-base.qcow2' });
      await qemuIo(top, [await s.w(3333, 1000), 'write -z 70k 4k', 'discard 140k 2k', await s.w(1 * M, 64 * K)]);
      return {
        file: top,
        expect: v3(64 * K, 2 * M, { backing_file: 'el2-base.qcow2', backing_format: 'qcow2', extended_l2: true }),
        kinds: ['data', 'zero', 'unallocated'],
        subclusterGranular: true,
      };
    },
  },
  {
    name: 'overlay in a subdirectory, backing "../name" with no recorded backing format (probed)',
    chain: true,
    async build(dir, s) {
      const base = path.join(dir, 'nofmt-base.qcow2');
      await qemuCreate(base, 1 * M, { options: ['cluster_size=4k'] });
      await qemuIo(base, [await s.w(0, 700 * K), 'write -z 800k 64k']);
      await mkdir(path.join(dir, 'sub'), { recursive: true });
      const top = path.join(dir, 'sub', 'nofmt-top.qcow2');
      await qemuCreate(top, 1 * M, { backing: '../nofmt-base.qcow2' });
      await qemuIo(top, [await s.w(5000, 10_000), 'write -z 512k 64k']);
      // Turn the backing-format header extension into an unknown (ignored) one: QEMU then probes.
      const buf = await readFile(top);
      const at = buf.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]), 112);
      expect(at).toBeGreaterThan(0);
      buf.writeUInt32BE(0x0badf00d, at);
      await writeFile(top, buf);
      return {
        file: top,
        expect: v3(64 * K, 1 * M, { backing_file: '../nofmt-base.qcow2', backing_format: null }),
        kinds: ['data', 'zero', 'unallocated'],
      };
    },
  },
  {
    name: 'preallocation=metadata (every cluster allocated, file sparse)',
    async build(dir, s) {
      const f = path.join(dir, 'prealloc.qcow2');
      await qemuCreate(f, 2 * M, { options: ['preallocation=metadata'] });
      await qemuIo(f, [await s.w(100_000, 5000), 'write -z 1M 64k']);
      return { file: f, expect: v3(64 * K, 2 * M), kinds: ['data', 'zero'] };
    },
  },
  {
    name: 'internal snapshot present (only the active state counts, with a warning)',
    async build(dir, s) {
      const f = path.join(dir, 'intsnap.qcow2');
      await qemuCreate(f, 2 * M);
      await qemuIo(f, [await s.w(0, 256 * K), await s.w(1 * M, 64 * K)]);
      await qemuImg(['snapshot', '-c', 'snap1', f]);
      await qemuIo(f, [await s.w(64 * K, 64 * K), 'discard 1M 64k', 'write -z 128k 64k', await s.w(1536 * K, 10)]);
      return { file: f, expect: v3(64 * K, 2 * M), kinds: ['data', 'zero', 'unallocated'], warning: /internal snapshot/ };
    },
  },
];

function extentSummary(e: MapExtent[]): string {
  return e.map((x) => `${x.kind}@${x.offset}+${x.length}`).join(' ');
}

describe('image map / image info / reads agree with qemu-img', () => {
  let src: DataSource;
  beforeAll(() => {
    src = new DataSource(tmp(), rng(SEED));
  });

  it('covers every variant the issue lists', () => {
    expect(variants.length).toBeGreaterThanOrEqual(21);
    expect(variants.filter((v) => v.chain).length).toBe(4);
  });

  for (const v of variants) {
    describe(v.name, () => {
      let built: Built;
      beforeAll(async () => {
        built = await v.build(tmp(), src);
      });

      it('image map --json equals qemu-img map of the file alone', async () => {
        const want = await qemuMapAlone(built.file);
        const r = await runCli(['image', 'map', built.file, '--json'], { home: path.join(tmp(), 'home') });
        expect(r.stderr.match(/error/) ? r.stderr : '').toBe('');
        expect(r.code).toBe(0);
        const got = parseJsonOutput<MapExtent[]>(r);
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          // Compact diff: the full lists of extents, one token each.
          expect(extentSummary(got)).toBe(extentSummary(want));
        }
        expect(got).toEqual(want);
        // Exactly the contract's keys, covering [0, virtual_size) without gaps.
        let pos = 0;
        for (const e of got) {
          expect(Object.keys(e).sort()).toEqual(['kind', 'length', 'offset']);
          expect(e.offset).toBe(pos);
          expect(e.length).toBeGreaterThan(0);
          pos += e.length;
        }
        expect(pos).toBe(built.expect.virtual_size);
        for (const kind of built.kinds)
          expect(
            got.some((e) => e.kind === kind),
            `map has a ${kind} extent`,
          ).toBe(true);
        if (built.subclusterGranular) {
          expect(got.some((e) => e.offset % built.expect.cluster_size !== 0 || e.length < built.expect.cluster_size)).toBe(true);
        }
        if (built.warning) expect(r.stderr).toMatch(built.warning);
      });

      it('image info --json reports the header as qemu-img info does', async () => {
        const r = await runCli(['image', 'info', built.file, '--json'], { home: path.join(tmp(), 'home') });
        expect(r.code).toBe(0);
        const info = parseJsonOutput<Record<string, unknown>>(r);
        expect(Object.keys(info).sort()).toEqual([
          'backing_chain',
          'backing_file',
          'backing_format',
          'cluster_size',
          'compression_type',
          'data_bytes',
          'extended_l2',
          'format',
          'version',
          'virtual_size',
          'zero_bytes',
        ]);
        expect(info).toMatchObject({ format: 'qcow2', ...built.expect });
        // Cross-check with qemu-img info itself.
        const q = JSON.parse((await qemuImg(['info', '--output=json', '-U', built.file])).stdout);
        expect(info.virtual_size).toBe(q['virtual-size']);
        expect(info.cluster_size).toBe(q['cluster-size']);
        expect(info.version).toBe(q['format-specific'].data.compat === '0.10' ? 2 : 3);
        expect(info.backing_file).toBe(q['backing-filename'] ?? null);
        expect(info.backing_format).toBe(q['backing-filename-format'] ?? null);
        expect(info.compression_type).toBe(q['format-specific'].data['compression-type']);
        expect(info.extended_l2).toBe(q['format-specific'].data['extended-l2'] ?? false);
        // data_bytes / zero_bytes: this file alone, as qemu maps it.
        const map = await qemuMapAlone(built.file);
        const sum = (k: string) => map.filter((e) => e.kind === k).reduce((a, e) => a + e.length, 0);
        expect(info.data_bytes).toBe(sum('data'));
        expect(info.zero_bytes).toBe(sum('zero'));
      });

      it('every data run reads the bytes qemu reads (file alone)', async () => {
        const raw = path.join(tmp(), `${path.basename(built.file)}.alone.raw`);
        await qemuRawAlone(built.file, raw);
        const img = await Qcow2Image.open(built.file);
        try {
          let dataRuns = 0;
          let compressed = 0;
          let dataBytes = 0;
          const runs: Run[] = [];
          for await (const run of img.runs()) runs.push(run);
          for (const run of runs) {
            if (run.kind !== 'data') continue;
            dataRuns++;
            if (run.compressed) compressed++;
            const got = await img.readRun(run);
            assertSameBytes(got, await readFileRange(raw, run.offset, run.length), `data run at ${run.offset}+${run.length}`, run.offset);
            dataBytes += run.length;
          }
          expect(dataRuns).toBeGreaterThan(0);
          expect(dataBytes).toBe((await img.info()).data_bytes);
          expect(compressed).toBeGreaterThanOrEqual(built.minCompressed ?? 0);
          if (built.minCompressed) {
            // qemu agrees that the file holds compressed clusters.
            const chk = await qemuCheck(built.file);
            expect(chk.result['compressed-clusters'] ?? 0).toBeGreaterThan(0);
          }
          // Whole-image comparison (non-data reads as zeros) where the image is small enough to hold.
          if (img.virtualSize <= 64 * M) {
            assertSameBytes(await img.read(0, img.virtualSize), await readFileRange(raw, 0, img.virtualSize), 'whole image');
          }
          // Unaligned sub-range reads cut runs (and compressed clusters) in the middle.
          const r = rng(SEED ^ 0x5a5a);
          for (let i = 0; i < 20; i++) {
            const off = r.int(0, img.virtualSize - 1);
            const len = Math.min(r.int(1, 300_000), img.virtualSize - off);
            assertSameBytes(await img.read(off, len), await readFileRange(raw, off, len), `read(${off}, ${len})`, off);
          }
        } finally {
          await img.close();
        }
      });

      it('the streaming reader (readData) yields the same bytes, in order, with and without buffer reuse', async () => {
        const raw = path.join(tmp(), `${path.basename(built.file)}.alone.raw`);
        await qemuRawAlone(built.file, raw);
        const img = await Qcow2Image.open(built.file);
        try {
          const dataBytes = (await img.info()).data_bytes;
          for (const opts of [{}, { reuseBuffers: true, maxBatchBytes: 256 * K, readAheadBytes: 1 * M, syncReadMaxBytes: 0 }]) {
            let total = 0;
            let end = 0;
            for await (const ch of readData(img, opts)) {
              expect(ch.offset).toBeGreaterThanOrEqual(end);
              assertSameBytes(ch.data, await readFileRange(raw, ch.offset, ch.data.length), `readData chunk ${JSON.stringify(opts)}`, ch.offset);
              end = ch.offset + ch.data.length;
              total += ch.data.length;
            }
            expect(total).toBe(dataBytes);
          }
          // A clipped range.
          const start = Math.floor(img.virtualSize / 3) + 777;
          const stop = Math.min(img.virtualSize, start + 3 * M + 5);
          let got = 0;
          for await (const ch of readData(img, { start, end: stop })) {
            expect(ch.offset).toBeGreaterThanOrEqual(start);
            expect(ch.offset + ch.data.length).toBeLessThanOrEqual(stop);
            assertSameBytes(ch.data, await readFileRange(raw, ch.offset, ch.data.length), 'readData clipped', ch.offset);
            got += ch.data.length;
          }
          let want = 0;
          for await (const r of img.runsIn(start, stop)) if (r.kind === 'data') want += r.length;
          expect(got).toBe(want);
        } finally {
          await img.close();
        }
      });

      if (!v.chain) return;
      it('Chain.read equals qemu-img convert of the whole chain', async () => {
        const raw = path.join(tmp(), `${path.basename(built.file)}.chain.raw`);
        await qemuRaw(built.file, raw);
        const chain = await Chain.open(built.file);
        try {
          expect(chain.layers.length).toBeGreaterThanOrEqual(2);
          const vs = chain.virtualSize;
          assertSameBytes(await chain.read(0, vs), await readFileRange(raw, 0, vs), 'whole chain');
          const r = rng(SEED ^ 0xc0ffee);
          for (let i = 0; i < 30; i++) {
            const off = r.int(0, vs - 1);
            const len = Math.min(r.int(1, 200_000), vs - off);
            assertSameBytes(await chain.read(off, len), await readFileRange(raw, off, len), `chain read(${off}, ${len})`, off);
          }
          // resolve() pieces are contiguous and cover the disk.
          let pos = 0;
          for await (const p of chain.resolve()) {
            expect(p.offset).toBe(pos);
            pos += p.length;
          }
          expect(pos).toBe(vs);
        } finally {
          await chain.close();
        }
      });
    });
  }
});
