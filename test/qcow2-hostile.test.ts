/**
 * Hostile images: real images made by qemu-img, then patched byte by byte. Every case must end in a
 * CloneboxError with the expected code (checked precisely), or in a correct read (the same bytes QEMU
 * reads) — never another exception type, a hang, or a giant allocation. The CLI must report the same
 * errors in the contract's format.
 */
import { copyFile, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { inflateRawSync, constants as zc } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { CloneboxError } from '../src/errors.js';
import { Chain } from '../src/qcow2/chain.js';
import { assertSameBytes } from './helpers/bytes.js';
import { parseCliError, runCli } from './helpers/cli.js';
import { type Outcome, outcome } from './helpers/hostile.js';
import { runChecked } from './helpers/process.js';
import { HDR, type Layout, parseLayout } from './helpers/qcow2-layout.js';
import { qemuImg, qemuIo, qemuRawAlone } from './helpers/qemu.js';
import { compressibleBytes, rng } from './helpers/random.js';
import { useTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * 1024;
const tmp = useTempDir('clonebox-hostile-');

/** Asserts a refusal with exactly `code`, whose message names the file. */
async function expectCode(file: string, code: string, message?: RegExp): Promise<void> {
  const o = await outcome(file);
  if (o.ok) throw new Error(`${path.basename(file)}: expected ${code}, but it opened and read fine`);
  expect({ code: o.code, message: o.message }).toMatchObject({ code });
  expect(o.message).toContain(file);
  if (message) expect(o.message).toMatch(message);
}

/** Asserts a successful read whose bytes equal `want` (the original image's, or QEMU's reading). */
async function expectRead(file: string, want: Buffer): Promise<Outcome & { ok: true }> {
  const o = await outcome(file);
  if (!o.ok) throw new Error(`${path.basename(file)}: expected a correct read, got ${o.code}: ${o.message}`);
  assertSameBytes(o.bytes!, want, path.basename(file));
  return o;
}

/** What QEMU reads from `file` opened alone. */
async function qemuBytes(file: string): Promise<Buffer> {
  const raw = `${file}.qemu.raw`;
  await qemuRawAlone(file, raw);
  return readFile(raw);
}

interface Base {
  file: string;
  buf: Buffer;
  lay: Layout;
  /** The guest bytes of the unpatched image (alone). */
  bytes: Buffer;
}

let caseNo = 0;
/** Writes a patched copy of a base image and returns its path. */
async function patched(base: Base, name: string, patch: (b: Buffer, lay: Layout) => Buffer | undefined): Promise<string> {
  const b = Buffer.from(base.buf);
  const out = patch(b, base.lay) ?? b;
  const file = path.join(tmp(), `case-${String(++caseNo).padStart(3, '0')}-${name.replace(/[^a-z0-9]+/gi, '-')}.qcow2`);
  await writeFile(file, out);
  return file;
}

async function makeBase(name: string, build: (file: string) => Promise<void>): Promise<Base> {
  const file = path.join(tmp(), name);
  await build(file);
  const buf = await readFile(file);
  return { file, buf, lay: parseLayout(buf), bytes: await qemuBytes(file) };
}

let plain: Base;
let compressed: Base;
let zstd: Base;
let extl2: Base;
let backed: Base;

beforeAll(async () => {
  const r = rng(4242);
  const dir = tmp();
  const src = async (n: string, b: Buffer) => {
    const f = path.join(dir, n);
    await writeFile(f, b);
    return f;
  };
  plain = await makeBase('plain.qcow2', async (f) => {
    await qemuImg(['create', '-f', 'qcow2', f, '4M']);
    await qemuIo(f, [
      `write -s ${await src('p0', r.bytes(64 * K))} 0 64k`,
      `write -s ${await src('p1', r.bytes(128 * K))} 1M 128k`,
      'write -z 2M 64k',
      `write -s ${await src('p2', r.bytes(64 * K))} 3M 64k`,
      'write -z 3M 64k',
      `write -s ${await src('p3', r.bytes(64 * K))} 4032k 64k`,
    ]);
  });
  const text = compressibleBytes(r, 1 * M);
  const textRaw = await src('text.raw', text);
  compressed = await makeBase('compressed.qcow2', async (f) => {
    await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', textRaw, f]);
  });
  zstd = await makeBase('zstd.qcow2', async (f) => {
    await qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', textRaw, f]);
  });
  extl2 = await makeBase('extl2.qcow2', async (f) => {
    await qemuImg(['create', '-f', 'qcow2', '-o', 'extended_l2=on', f, '1M']);
    await qemuIo(f, [`write -s ${await src('e0', r.bytes(6 * K))} 2k 6k`, 'write -z 64k 4k', `write -s ${await src('e1', r.bytes(64 * K))} 128k 64k`]);
  });
  backed = await makeBase('backed.qcow2', async (f) => {
    await qemuImg(['create', '-f', 'qcow2', path.join(dir, 'backed-base.qcow2'), '1M']);
    await qemuImg(['create', '-f', 'qcow2', '-b', 'backed-base.qcow2', '-F', 'qcow2', f, '1M'], { cwd: dir });
    await qemuIo(f, ['write -P 0x5a 0 64k']);
  });
  // Not vacuous: the bases hold what the cases below patch.
  expect(plain.lay.entries.filter((e) => e.kind === 'data').length).toBeGreaterThanOrEqual(4);
  expect(plain.lay.entries.some((e) => e.kind === 'zero' && e.host !== 0)).toBe(true);
  expect(compressed.lay.entries.filter((e) => e.kind === 'compressed').length).toBeGreaterThanOrEqual(10);
  expect(zstd.lay.entries.filter((e) => e.kind === 'compressed').length).toBeGreaterThanOrEqual(10);
  expect(extl2.lay.extendedL2).toBe(true);
  expect(backed.buf.readBigUInt64BE(HDR.backingFileOffset)).toBeGreaterThan(0n);
});

const firstData = (lay: Layout) => lay.entries.find((e) => e.kind === 'data')!;
const firstCompressed = (lay: Layout) => lay.entries.find((e) => e.kind === 'compressed')!;

describe('hostile headers', () => {
  it('not qcow2: wrong magic, empty file, 3 bytes, random junk, a directory', async () => {
    await expectCode(await patched(plain, 'magic', (b) => void b.writeUInt32BE(0x514649fa, 0)), 'NOT_QCOW2');
    await expectCode(await patched(plain, 'empty', () => Buffer.alloc(0)), 'NOT_QCOW2');
    await expectCode(await patched(plain, 'three', (b) => b.subarray(0, 3)), 'NOT_QCOW2');
    await expectCode(await patched(plain, 'junk', () => rng(1).bytes(100_000)), 'NOT_QCOW2');
    await expectCode(tmp(), 'NOT_QCOW2');
    await expectCode(path.join(tmp(), 'does-not-exist.qcow2'), 'IO', /no such file/);
  });

  it('versions other than 2 and 3 are unsupported', async () => {
    for (const v of [0, 1, 4, 0xffffffff]) {
      await expectCode(await patched(plain, `version-${v}`, (b) => void b.writeUInt32BE(v, HDR.version)), 'QCOW2_UNSUPPORTED', /version/);
    }
  });

  it('cluster_bits 0, 8, 22, 63 and 2^32-1 are refused before any allocation', async () => {
    for (const bits of [0, 8, 22, 63, 0xffffffff]) {
      await expectCode(await patched(plain, `cluster-bits-${bits}`, (b) => void b.writeUInt32BE(bits, HDR.clusterBits)), 'QCOW2_CORRUPT', /cluster_bits/);
    }
  });

  it('absurd virtual sizes', async () => {
    await expectCode(await patched(plain, 'size-2^63', (b) => void b.writeBigUInt64BE(1n << 63n, HDR.size)), 'QCOW2_CORRUPT', /virtual size/);
    await expectCode(await patched(plain, 'size-max', (b) => void b.writeBigUInt64BE(0xffffffffffffffffn, HDR.size)), 'QCOW2_CORRUPT');
    // Not a multiple of 512: QEMU rounds down to whole sectors, and clonebox must agree with it.
    const odd = await patched(plain, 'size-odd', (b) => void b.writeBigUInt64BE(BigInt(4 * M - 512 + 300), HDR.size));
    const q = JSON.parse((await qemuImg(['info', '--output=json', odd])).stdout);
    expect(q['virtual-size']).toBe(4 * M - 512);
    const o = await expectRead(odd, await qemuBytes(odd));
    expect(o.info.virtual_size).toBe(4 * M - 512);
    // A virtual size the L1 table cannot map.
    await expectCode(await patched(plain, 'size-vs-l1', (b) => void b.writeBigUInt64BE(1n << 40n, HDR.size)), 'QCOW2_CORRUPT', /L1 table has/);
  });

  it('l1_size absurdly large, exactly at the limit, zero', async () => {
    await expectCode(await patched(plain, 'l1-size-max', (b) => void b.writeUInt32BE(0xffffffff, HDR.l1Size)), 'QCOW2_TOO_LARGE');
    await expectCode(await patched(plain, 'l1-size-32m', (b) => void b.writeUInt32BE(4 * M + 1, HDR.l1Size)), 'QCOW2_TOO_LARGE');
    // Exactly 32 MiB of L1 is allowed, but this file is far too short for it: refused before reading.
    await expectCode(await patched(plain, 'l1-size-limit', (b) => void b.writeUInt32BE(4 * M, HDR.l1Size)), 'QCOW2_TRUNCATED');
    await expectCode(await patched(plain, 'l1-size-0', (b) => void b.writeUInt32BE(0, HDR.l1Size)), 'QCOW2_CORRUPT', /L1 table has 0 entries/);
  });

  it('L1 table offset past EOF, misaligned, inside the header, above 2^53', async () => {
    await expectCode(await patched(plain, 'l1-past-eof', (b) => void b.writeBigUInt64BE(1n << 40n, HDR.l1TableOffset)), 'QCOW2_TRUNCATED');
    await expectCode(
      await patched(plain, 'l1-misaligned', (b, l) => void b.writeBigUInt64BE(BigInt(l.l1Offset + 8), HDR.l1TableOffset)),
      'QCOW2_CORRUPT',
      /aligned/,
    );
    await expectCode(await patched(plain, 'l1-in-header', (b) => void b.writeBigUInt64BE(0n, HDR.l1TableOffset)), 'QCOW2_CORRUPT', /header/);
    await expectCode(await patched(plain, 'l1-huge', (b) => void b.writeBigUInt64BE(1n << 60n, HDR.l1TableOffset)), 'QCOW2_CORRUPT', /out of range/);
  });

  it('backing file name longer than 1023 bytes, outside the header cluster, offset absurd', async () => {
    await expectCode(await patched(backed, 'backing-1024', (b) => void b.writeUInt32BE(1024, HDR.backingFileSize)), 'QCOW2_CORRUPT', /1024 bytes/);
    await expectCode(await patched(backed, 'backing-4g', (b) => void b.writeUInt32BE(0xffffffff, HDR.backingFileSize)), 'QCOW2_CORRUPT');
    await expectCode(
      await patched(backed, 'backing-outside', (b, l) => void b.writeBigUInt64BE(BigInt(l.cs + 16), HDR.backingFileOffset)),
      'QCOW2_CORRUPT',
      /outside the header cluster/,
    );
    await expectCode(
      await patched(backed, 'backing-straddles', (b, l) => void b.writeBigUInt64BE(BigInt(l.cs - 4), HDR.backingFileOffset)),
      'QCOW2_CORRUPT',
      /outside the header cluster/,
    );
    await expectCode(await patched(backed, 'backing-2^62', (b) => void b.writeBigUInt64BE(1n << 62n, HDR.backingFileOffset)), 'QCOW2_CORRUPT');
    // A name of exactly 1023 bytes inside the header cluster is fine (it is only a name).
    const o = await expectRead(
      await patched(backed, 'backing-1023', (b) => {
        b.fill(0x61, 2048, 2048 + 1023);
        b.writeBigUInt64BE(2048n, HDR.backingFileOffset);
        b.writeUInt32BE(1023, HDR.backingFileSize);
      }),
      backed.bytes,
    );
    expect(o.info.backing_file).toBe('a'.repeat(1023));
  });

  it('header_length, refcount_order, compression type and feature bits', async () => {
    await expectCode(await patched(plain, 'hdrlen-100', (b) => void b.writeUInt32BE(100, HDR.headerLength)), 'QCOW2_CORRUPT', /header_length/);
    await expectCode(await patched(plain, 'hdrlen-113', (b) => void b.writeUInt32BE(113, HDR.headerLength)), 'QCOW2_CORRUPT', /header_length/);
    await expectCode(await patched(plain, 'hdrlen-big', (b, l) => void b.writeUInt32BE(l.cs + 8, HDR.headerLength)), 'QCOW2_CORRUPT', /header_length/);
    await expectCode(await patched(plain, 'refcount-order-7', (b) => void b.writeUInt32BE(7, HDR.refcountOrder)), 'QCOW2_CORRUPT', /refcount_order/);
    await expectCode(
      await patched(plain, 'compression-2', (b) => {
        b.writeUInt8(2, HDR.compressionType);
        b.writeBigUInt64BE(8n, HDR.incompatibleFeatures);
      }),
      'QCOW2_UNSUPPORTED',
      /compression type 2/,
    );
    await expectCode(await patched(plain, 'zstd-without-bit', (b) => void b.writeUInt8(1, HDR.compressionType)), 'QCOW2_CORRUPT', /compression/);
    for (const bit of [5, 17, 63]) {
      await expectCode(
        await patched(plain, `incompat-bit-${bit}`, (b) => void b.writeBigUInt64BE(1n << BigInt(bit), HDR.incompatibleFeatures)),
        'QCOW2_UNSUPPORTED',
        /unknown incompatible feature/,
      );
    }
    await expectCode(
      await patched(plain, 'data-file-bit', (b) => void b.writeBigUInt64BE(4n, HDR.incompatibleFeatures)),
      'QCOW2_UNSUPPORTED',
      /external data file/,
    );
    await expectCode(
      await patched(plain, 'data-file-ext', (b, l) => {
        // A data-file header extension (even without the feature bit) before the end marker.
        const at = l.headerLength;
        b.copy(b, at + 16, at, l.cs - 16);
        b.writeUInt32BE(0x44415441, at);
        b.writeUInt32BE(6, at + 4);
        b.write('x.data', at + 8);
      }),
      'QCOW2_UNSUPPORTED',
      /external data file/,
    );
    await expectCode(
      await patched(plain, 'extl2-small-clusters', (b) => {
        b.writeBigUInt64BE(16n, HDR.incompatibleFeatures);
        b.writeUInt32BE(12, HDR.clusterBits);
      }),
      'QCOW2_CORRUPT',
      /extended L2/,
    );
    for (const method of [1, 2, 0x80000000]) {
      await expectCode(await patched(plain, `crypt-${method}`, (b) => void b.writeUInt32BE(method, HDR.cryptMethod)), 'QCOW2_UNSUPPORTED', /encrypted/);
    }
    // Known, harmless bits: dirty (lazy refcounts) and corrupt (QEMU still allows read-only access).
    await expectRead(await patched(plain, 'dirty-bit', (b) => void b.writeBigUInt64BE(1n, HDR.incompatibleFeatures)), plain.bytes);
    await expectRead(await patched(plain, 'corrupt-bit', (b) => void b.writeBigUInt64BE(2n, HDR.incompatibleFeatures)), plain.bytes);
    // Unknown compatible / autoclear bits are ignorable by definition.
    await expectRead(
      await patched(plain, 'compat-bits', (b) => {
        b.writeBigUInt64BE(0xfffffffffffffffen, HDR.compatibleFeatures);
        b.writeBigUInt64BE(0xffffffffffffffffn, HDR.autoclearFeatures);
      }),
      plain.bytes,
    );
  });

  it('header extensions that run past the header cluster', async () => {
    await expectCode(await patched(plain, 'ext-overrun', (b, l) => void b.writeUInt32BE(l.cs, l.headerLength + 4)), 'QCOW2_CORRUPT', /extension/);
    await expectCode(await patched(plain, 'ext-4g', (b, l) => void b.writeUInt32BE(0xffffffff, l.headerLength + 4)), 'QCOW2_CORRUPT', /extension/);
  });

  it('refcount table: misaligned or too large is refused; overlapping or past EOF still reads correctly', async () => {
    await expectCode(
      await patched(plain, 'rt-misaligned', (b, l) => void b.writeBigUInt64BE(BigInt(l.refcountTableOffset + 512), HDR.refcountTableOffset)),
      'QCOW2_CORRUPT',
      /refcount table/,
    );
    await expectCode(
      await patched(plain, 'rt-clusters-max', (b) => void b.writeUInt32BE(0xffffffff, HDR.refcountTableClusters)),
      'QCOW2_TOO_LARGE',
      /refcount table/,
    );
    await expectCode(await patched(plain, 'rt-huge', (b) => void b.writeBigUInt64BE(1n << 61n, HDR.refcountTableOffset)), 'QCOW2_CORRUPT');
    // The reader never needs refcounts: tables that overlap the header, the L1 table or an L2 table,
    // or lie past the end of the file, do not change what the image reads as.
    await expectRead(await patched(plain, 'rt-on-header', (b) => void b.writeBigUInt64BE(0n, HDR.refcountTableOffset)), plain.bytes);
    await expectRead(await patched(plain, 'rt-on-l1', (b, l) => void b.writeBigUInt64BE(BigInt(l.l1Offset), HDR.refcountTableOffset)), plain.bytes);
    await expectRead(
      await patched(plain, 'rt-on-l2', (b, l) => {
        b.writeBigUInt64BE(BigInt(l.l2Tables[0]!), HDR.refcountTableOffset);
        b.writeUInt32BE(3, HDR.refcountTableClusters);
      }),
      plain.bytes,
    );
    await expectRead(await patched(plain, 'rt-past-eof', (b) => void b.writeBigUInt64BE(1n << 40n, HDR.refcountTableOffset)), plain.bytes);
  });

  it('a bogus internal snapshot table is ignored (active state only); an absurd offset is refused', async () => {
    await expectRead(
      await patched(plain, 'snapshots', (b) => {
        b.writeUInt32BE(0xffffffff, HDR.nbSnapshots);
        b.writeBigUInt64BE(1n << 40n, HDR.snapshotsOffset);
      }),
      plain.bytes,
    );
    await expectCode(
      await patched(plain, 'snapshots-2^60', (b) => {
        b.writeUInt32BE(1, HDR.nbSnapshots);
        b.writeBigUInt64BE(1n << 60n, HDR.snapshotsOffset);
      }),
      'QCOW2_CORRUPT',
      /snapshots_offset/,
    );
  });
});

describe('hostile L1 / L2 tables', () => {
  it('L1 entry pointing past EOF, misaligned, into the header', async () => {
    const l1 = (v: bigint) => (b: Buffer, l: Layout) => void b.writeBigUInt64BE(v, l.l1Offset);
    await expectCode(await patched(plain, 'l1e-past-eof', l1((1n << 40n) | (1n << 63n))), 'QCOW2_TRUNCATED', /L2 table/);
    await expectCode(
      await patched(plain, 'l1e-misaligned', (b, l) => void b.writeBigUInt64BE(BigInt(l.l2Tables[0]! + 512), l.l1Offset)),
      'QCOW2_CORRUPT',
      /aligned/,
    );
    await expectCode(await patched(plain, 'l1e-header', l1(0x200n)), 'QCOW2_CORRUPT');
  });

  it('L1 entries that all alias one L2 table over a huge virtual size are refused, not enumerated for hours', async () => {
    // 131072 L1 entries (1 MiB) pointing at the same L2 table: 64 TiB of "allocated" guest space in a
    // ~1.5 MiB file. Enumerating it would walk 2^30 L2 entries.
    const entries = 131072;
    const file = await patched(plain, 'l1-alias', (b, l) => {
      const l1 = Buffer.alloc(entries * 8);
      for (let i = 0; i < entries; i++) l1.writeBigUInt64BE(BigInt(l.l2Tables[0]!) | (1n << 63n), i * 8);
      const at = Math.ceil(b.length / l.cs) * l.cs;
      const out = Buffer.concat([b, Buffer.alloc(at - b.length), l1]);
      out.writeBigUInt64BE(BigInt(entries) * 512n * 1024n * 1024n, HDR.size);
      out.writeUInt32BE(entries, HDR.l1Size);
      out.writeBigUInt64BE(BigInt(at), HDR.l1TableOffset);
      return out;
    });
    await expectCode(file, 'QCOW2_CORRUPT', /L2 table/);
  });

  it('L2 data entry past EOF, misaligned, pointing into the header', async () => {
    const d = firstData(plain.lay);
    await expectCode(await patched(plain, 'l2e-past-eof', (b) => void b.writeBigUInt64BE((1n << 40n) | (1n << 63n), d.at)), 'QCOW2_TRUNCATED', /data cluster/);
    await expectCode(
      await patched(plain, 'l2e-misaligned', (b) => void b.writeBigUInt64BE(BigInt(d.host + 4096) | (1n << 63n), d.at)),
      'QCOW2_CORRUPT',
      /aligned/,
    );
    await expectCode(await patched(plain, 'l2e-header', (b) => void b.writeBigUInt64BE(0x200n | (1n << 63n), d.at)), 'QCOW2_CORRUPT');
    // A preallocated zero cluster with a misaligned offset is corrupt too (QEMU says so).
    const z = plain.lay.entries.find((e) => e.kind === 'zero' && e.host !== 0)!;
    await expectCode(await patched(plain, 'l2e-zero-misaligned', (b) => void b.writeBigUInt64BE(BigInt(z.host + 512) | 1n, z.at)), 'QCOW2_CORRUPT', /aligned/);
  });

  it('L2 data entries aliasing metadata (L1 table, L2 table, refcount block) read what QEMU reads', async () => {
    const d = firstData(plain.lay);
    for (const [name, target] of [
      ['l1', plain.lay.l1Offset],
      ['l2', plain.lay.l2Tables[0]!],
      ['refcount', plain.lay.refcountTableOffset],
    ] as const) {
      const file = await patched(plain, `alias-${name}`, (b) => void b.writeBigUInt64BE(BigInt(target) | (1n << 63n), d.at));
      const o = await expectRead(file, await qemuBytes(file));
      expect(o.dataRuns).toBeGreaterThan(0);
    }
  });

  it('a compressed descriptor with a giant sector count still reads the cluster (input is clamped)', async () => {
    for (const base of [compressed, zstd]) {
      const c = firstCompressed(base.lay);
      const x = 62n - BigInt(base.lay.clusterBits - 8);
      const file = await patched(base, `giant-sectors-${base === zstd ? 'zstd' : 'zlib'}`, (b) => {
        const offset = c.value & ((1n << x) - 1n);
        b.writeBigUInt64BE((1n << 62n) | (((1n << (62n - x)) - 1n) << x) | offset, c.at);
      });
      await expectRead(file, base.bytes);
      assertSameBytes(await qemuBytes(file), base.bytes, 'qemu agrees');
    }
  });

  it('compressed clusters pointing past EOF, into the header, or at garbage', async () => {
    for (const base of [compressed, zstd]) {
      const tag = base === zstd ? 'zstd' : 'zlib';
      const c = firstCompressed(base.lay);
      const x = 62n - BigInt(base.lay.clusterBits - 8);
      const desc = (offset: bigint) => (1n << 62n) | (c.value & ~((1n << x) - 1n) & ~(1n << 62n)) | offset;
      await expectCode(
        await patched(base, `compressed-past-eof-${tag}`, (b) => void b.writeBigUInt64BE(desc(BigInt(b.length + 4096)), c.at)),
        'QCOW2_TRUNCATED',
        /compressed/,
      );
      await expectCode(await patched(base, `compressed-header-${tag}`, (b) => void b.writeBigUInt64BE(desc(100n), c.at)), 'QCOW2_CORRUPT', /header/);
      // Point the descriptor at the L1 table (not compressed data): it must not decompress.
      await expectCode(
        await patched(base, `compressed-garbage-${tag}`, (b, l) => void b.writeBigUInt64BE(desc(BigInt(l.l1Offset)), c.at)),
        'QCOW2_CORRUPT',
        /decompress/,
      );
      // Random bytes where the compressed data was.
      await expectCode(await patched(base, `compressed-random-${tag}`, (b) => void rng(7).bytes(512).copy(b, c.host)), 'QCOW2_CORRUPT', /compressed cluster/);
    }
  });

  it('extended L2: allocated and zero at once, allocated without a host cluster, host past EOF', async () => {
    const e = extl2.lay.entries.find((x) => x.kind === 'data')!;
    await expectCode(
      await patched(extl2, 'extl2-both', (b) => void b.writeBigUInt64BE(0x00000001_00000001n, e.at + 8)),
      'QCOW2_CORRUPT',
      /both allocated and zero/,
    );
    await expectCode(await patched(extl2, 'extl2-no-host', (b) => void b.writeBigUInt64BE(0n, e.at)), 'QCOW2_CORRUPT', /without a host cluster/);
    await expectCode(await patched(extl2, 'extl2-past-eof', (b) => void b.writeBigUInt64BE((1n << 40n) | (1n << 63n), e.at)), 'QCOW2_TRUNCATED');
    // Zero bits without a host cluster are valid and read as zeros.
    const o = await expectRead(
      await patched(extl2, 'extl2-all-zero', (b) => {
        b.writeBigUInt64BE(0n, e.at);
        b.writeBigUInt64BE(0xffffffff_00000000n, e.at + 8);
      }),
      (() => {
        const want = Buffer.from(extl2.bytes);
        want.fill(0, e.guest, e.guest + extl2.lay.cs);
        return want;
      })(),
    );
    expect(o.info.zero_bytes).toBeGreaterThanOrEqual(extl2.lay.cs);
  });
});

/** Bytes of deflate input a compressed cluster at `host` really uses (zlib reports what it consumed). */
function compressedLength(base: Base, host: number): number {
  const r = inflateRawSync(base.buf.subarray(host, host + base.lay.cs + 1024), { info: true, finishFlush: zc.Z_SYNC_FLUSH }) as unknown as {
    buffer: Buffer;
    engine: { bytesWritten: number };
  };
  expect(r.buffer.length).toBe(base.lay.cs);
  return r.engine.bytesWritten;
}

describe('truncated files', () => {
  /**
   * The expected outcome of cutting `base` at `len`: NOT_QCOW2 below the magic, QCOW2_TRUNCATED while
   * any header, extension, L1 or L2 byte or any data/compressed cluster's first byte is cut off,
   * otherwise a read equal to QEMU's (bytes past EOF read as zeros).
   */
  function expected(base: Base, len: number): 'NOT_QCOW2' | 'QCOW2_TRUNCATED' | 'read' {
    const l = base.lay;
    if (len < 4) return 'NOT_QCOW2';
    let extEnd = l.headerLength;
    for (;;) {
      const t = base.buf.readUInt32BE(extEnd);
      const n = base.buf.readUInt32BE(extEnd + 4);
      extEnd += 8 + ((n + 7) & ~7);
      if (t === 0) break;
    }
    const backingEnd = Number(base.buf.readBigUInt64BE(HDR.backingFileOffset)) + base.buf.readUInt32BE(HDR.backingFileSize);
    if (len < Math.max(extEnd, backingEnd) || len < l.l1Offset + l.l1Size * 8) return 'QCOW2_TRUNCATED';
    if (l.l2Tables.some((t) => t && t + l.cs > len)) return 'QCOW2_TRUNCATED';
    if (l.entries.some((e) => (e.kind === 'data' || e.kind === 'compressed') && e.host >= len)) return 'QCOW2_TRUNCATED';
    // A compressed stream cut by the end of the file.
    if (l.entries.some((e) => e.kind === 'compressed' && len < e.host + compressedLength(base, e.host))) return 'QCOW2_TRUNCATED';
    return 'read';
  }

  for (const which of ['plain', 'compressed', 'backed'] as const) {
    it(`${which} image cut at many lengths`, async () => {
      const base = which === 'plain' ? plain : which === 'compressed' ? compressed : backed;
      const l = base.lay;
      const size = base.buf.length;
      const lens = new Set<number>([
        0,
        1,
        3,
        4,
        5,
        50,
        71,
        72,
        73,
        100,
        103,
        104,
        105,
        111,
        112,
        113,
        120,
        200,
        300,
        511,
        512,
        1000,
        l.cs - 1,
        l.cs,
        l.cs + 1,
        l.l1Offset,
        l.l1Offset + 4,
        l.l1Offset + l.l1Size * 8 - 1,
        l.l1Offset + l.l1Size * 8,
        size - 1,
        size - 511,
      ]);
      for (const t of l.l2Tables) if (t) for (const x of [t, t + 8, t + l.cs - 1, t + l.cs]) lens.add(x);
      for (const e of l.entries) if (e.host) for (const x of [e.host, e.host + 1, e.host + 700, e.host + l.cs - 1]) lens.add(x);
      const r = rng(99 + size);
      for (let i = 0; i < 15; i++) lens.add(r.int(0, size));
      const counts = { NOT_QCOW2: 0, QCOW2_TRUNCATED: 0, read: 0 };
      for (const len of [...lens].filter((x) => x >= 0 && x < size).sort((a, b) => a - b)) {
        const file = await patched(base, `${which}-cut-${len}`, (b) => b.subarray(0, len));
        const want = expected(base, len);
        counts[want]++;
        if (want === 'read') {
          // QEMU reads bytes past the end of the file as zeros; so must we.
          await expectRead(file, await qemuBytes(file));
        } else {
          const o = await outcome(file);
          expect(o.ok ? 'read' : o.code, `cut at ${len}: ${o.ok ? '' : o.message}`).toBe(want);
        }
      }
      expect(counts.QCOW2_TRUNCATED).toBeGreaterThan(20);
      expect(counts.NOT_QCOW2).toBe(3);
      expect(counts.read).toBeGreaterThan(0);
    });
  }
});

describe('hostile backing chains', () => {
  it('a chain that loops (a -> b -> a, and a -> a) is refused', async () => {
    const dir = tmp();
    const a = path.join(dir, 'loop-a.qcow2');
    const b = path.join(dir, 'loop-b.qcow2');
    await qemuImg(['create', '-f', 'qcow2', a, '1M']);
    await qemuImg(['create', '-f', 'qcow2', b, '1M']);
    await qemuImg(['rebase', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', a], { cwd: dir });
    await qemuImg(['rebase', '-u', '-b', 'loop-a.qcow2', '-F', 'qcow2', b], { cwd: dir });
    await expect(Chain.open(a)).rejects.toMatchObject({ name: 'CloneboxError', code: 'QCOW2_CORRUPT', message: expect.stringMatching(/loops/) });
    const self = path.join(dir, 'loop-self.qcow2');
    await qemuImg(['create', '-f', 'qcow2', self, '1M']);
    await qemuImg(['rebase', '-u', '-b', 'loop-self.qcow2', '-F', 'qcow2', self], { cwd: dir });
    await expect(Chain.open(self)).rejects.toMatchObject({ code: 'QCOW2_CORRUPT' });
    // A loop through a symlinked name is the same file.
    const c = path.join(dir, 'loop-c.qcow2');
    await symlink('loop-c.qcow2', path.join(dir, 'loop-c-link.qcow2'));
    await qemuImg(['create', '-f', 'qcow2', c, '1M']);
    await qemuImg(['rebase', '-u', '-b', 'loop-c-link.qcow2', '-F', 'qcow2', c], { cwd: dir });
    await expect(Chain.open(c)).rejects.toMatchObject({ code: 'QCOW2_CORRUPT' });
    // The file itself still opens alone: the map of one file never needs its backing file.
    expect((await outcome(a)).ok).toBe(true);
  });

  it('missing backing file, unsupported backing format, json: backing name', async () => {
    const dir = tmp();
    const top = path.join(dir, 'orphan.qcow2');
    await qemuImg(['create', '-f', 'qcow2', path.join(dir, 'orphan-base.qcow2'), '1M']);
    await qemuImg(['create', '-f', 'qcow2', '-b', 'orphan-base.qcow2', '-F', 'qcow2', top, '1M'], { cwd: dir });
    await copyFile(top, path.join(dir, 'orphan2.qcow2'));
    await writeFile(path.join(dir, 'orphan-base.qcow2'), ''); // now not an image at all
    await expect(Chain.open(top)).rejects.toMatchObject({ code: 'NOT_QCOW2' });
    const missing = await patched(backed, 'missing-backing', (b) => {
      const off = Number(b.readBigUInt64BE(HDR.backingFileOffset));
      b.write('no-such-base.qcow2'.padEnd(b.readUInt32BE(HDR.backingFileSize), '\0').slice(0, b.readUInt32BE(HDR.backingFileSize)), off);
    });
    await expect(Chain.open(missing)).rejects.toMatchObject({ code: 'BACKING_MISSING' });
    const vmdk = await patched(backed, 'backing-vmdk', (b, l) => {
      const at = l.extension(0xe2792aca);
      b.write('vmdk\0', at + 8);
      b.writeUInt32BE(4, at + 4);
    });
    await expect(Chain.open(vmdk)).rejects.toMatchObject({ code: 'QCOW2_UNSUPPORTED' });
    const json = await patched(backed, 'backing-json', (b) => {
      const name = 'json:{"driver":"null-co"}';
      b.write(name, 2048);
      b.writeBigUInt64BE(2048n, HDR.backingFileOffset);
      b.writeUInt32BE(name.length, HDR.backingFileSize);
    });
    await expect(Chain.open(json)).rejects.toMatchObject({ code: 'QCOW2_UNSUPPORTED' });
  });

  it('a backing "file" that is a FIFO or a directory is refused without hanging', async () => {
    const dir = tmp();
    const fifo = path.join(dir, 'fifo-base');
    await runChecked('mkfifo', [fifo]);
    const cases = [
      ['fifo-top', 'fifo-base', 'qcow2'],
      ['fifo-raw-top', 'fifo-base', 'raw'],
      ['fifo-probed-top', 'fifo-base', null],
      ['dir-top', '.', 'qcow2'],
      ['dir-probed-top', '.', null],
    ] as const;
    for (const [name, target, fmt] of cases) {
      const top = path.join(dir, `${name}.qcow2`);
      await qemuImg(['create', '-f', 'qcow2', top, '1M']);
      await qemuImg(['rebase', '-u', '-b', target, '-F', fmt ?? 'qcow2', top], { cwd: dir });
      if (fmt === null) {
        // No recorded backing format: the chain probes the file (turn the extension into an unknown one).
        const b = await readFile(top);
        const at = parseLayout(b).extension(0xe2792aca);
        expect(at).toBeGreaterThan(0);
        b.writeUInt32BE(0x0badf00d, at);
        await writeFile(top, b);
      }
      const t0 = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const res = await Promise.race([
        Chain.open(top).then(
          async (c) => {
            await c.close();
            return 'opened';
          },
          (err: unknown) => err,
        ),
        new Promise((resolve) => {
          timer = setTimeout(() => resolve('hang'), 5000);
        }),
      ]);
      clearTimeout(timer);
      expect(res, `${name}`).toBeInstanceOf(CloneboxError);
      expect(['NOT_QCOW2', 'BACKING_MISSING']).toContain((res as CloneboxError).code);
      expect(Date.now() - t0).toBeLessThan(5000);
    }
  });
});

describe('CLI error reporting for hostile images', () => {
  const cases: Array<[string, (dir: string) => Promise<string>, string]> = [
    ['not qcow2', async () => patched(plain, 'cli-junk', () => Buffer.from('hello world, definitely not an image\n'.repeat(10))), 'NOT_QCOW2'],
    ['unsupported feature', async () => patched(plain, 'cli-crypt', (b) => void b.writeUInt32BE(2, HDR.cryptMethod)), 'QCOW2_UNSUPPORTED'],
    ['corrupt header', async () => patched(plain, 'cli-bits', (b) => void b.writeUInt32BE(63, HDR.clusterBits)), 'QCOW2_CORRUPT'],
    ['truncated', async () => patched(plain, 'cli-cut', (b) => b.subarray(0, 90)), 'QCOW2_TRUNCATED'],
    ['too large', async () => patched(plain, 'cli-l1', (b) => void b.writeUInt32BE(0xffffffff, HDR.l1Size)), 'QCOW2_TOO_LARGE'],
    [
      'corrupt L2 entry',
      async () => patched(plain, 'cli-l2', (b, l) => void b.writeBigUInt64BE(BigInt(firstData(l).host + 512), firstData(l).at)),
      'QCOW2_CORRUPT',
    ],
    ['missing file', async (dir) => path.join(dir, 'nope.qcow2'), 'IO'],
  ];
  for (const [name, make, code] of cases) {
    it(`${name}: one error line (+ hint), exit 1, and {"error": {code, message}} with --json`, async () => {
      const file = await make(tmp());
      const home = path.join(tmp(), 'cli-home');
      for (const sub of ['map', 'info']) {
        const human = await runCli(['image', sub, file], { home });
        expect(human.code, human.stderr).toBe(1);
        const h = parseCliError(human, false);
        expect(h.message).toContain(file);
        const json = await runCli(['image', sub, file, '--json'], { home });
        expect(json.code, json.stderr).toBe(1);
        const j = parseCliError(json, true);
        expect(j.code).toBe(code);
        expect(j.message).toBe(h.message);
      }
    });
  }

  it('usage errors exit 2 (missing argument, unknown flag)', async () => {
    const home = path.join(tmp(), 'cli-home');
    for (const args of [
      ['image', 'map'],
      ['image', 'map', plain.file, '--bogus'],
      ['image', 'info', '--json'],
    ]) {
      const r = await runCli(args, { home });
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      const e = parseCliError(r, args.includes('--json'));
      if (args.includes('--json')) expect(e.code).toBe('USAGE');
    }
  });
});
