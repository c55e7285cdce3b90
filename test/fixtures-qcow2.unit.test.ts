/**
 * clonebox's reader against the committed qcow2 fixtures (fixtures/qcow2, made by qemu-img/qemu-io with
 * each feature the reader supports) and what QEMU reported for them when they were made: header, map of
 * each file alone, guest bytes alone and through the backing chain. No QEMU needed.
 */
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { Chain } from '../src/qcow2/chain.js';
import { type Extent, type ImageInfo, Qcow2Image } from '../src/qcow2/reader.js';
import { fixtureFile, readExpected } from './helpers/fixtures.js';
import { useTempDir } from './helpers/temp.js';

interface QcowFixture {
  file: string;
  what: string;
  /** What qemu-img info reported; the byte counts follow from the map. */
  info: Omit<ImageInfo, 'format' | 'data_bytes' | 'zero_bytes'>;
  compressed_clusters: number;
  map: Extent[];
  sha256_alone: string;
  sha256_chain: string | null;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const fixtures = await readExpected<QcowFixture[]>('qcow2');
const tmp = useTempDir('clonebox-fixtures-qcow2-');
const files = new Map<string, string>();

beforeAll(async () => {
  // All in one folder, so that backing file names resolve as they did when the chain was made.
  for (const f of fixtures) files.set(f.file, await fixtureFile('qcow2', f.file, tmp()));
});

describe('qcow2 fixtures made by QEMU', () => {
  it('cover every feature the reader supports', () => {
    const has = (p: (f: QcowFixture) => boolean) => fixtures.some(p);
    expect(has((f) => f.info.version === 2) && has((f) => f.info.version === 3)).toBe(true);
    expect(has((f) => f.compressed_clusters > 0 && f.info.compression_type === 'zlib')).toBe(true);
    expect(has((f) => f.compressed_clusters > 0 && f.info.compression_type === 'zstd')).toBe(true);
    expect(has((f) => f.info.extended_l2)).toBe(true);
    expect(has((f) => f.info.cluster_size === 512) && has((f) => f.info.cluster_size === 2 * 1024 * 1024)).toBe(true);
    expect(fixtures.filter((f) => f.sha256_chain !== null).length).toBeGreaterThanOrEqual(2);
    expect(has((f) => f.map.some((e) => e.kind === 'zero')) && has((f) => f.map.some((e) => e.kind === 'unallocated'))).toBe(true);
  });

  for (const f of fixtures) {
    it(`${f.file}: ${f.what}`, async () => {
      const file = files.get(f.file)!;
      const img = await Qcow2Image.open(file, { warn: () => undefined });
      try {
        const sum = (kind: string) => f.map.filter((e) => e.kind === kind).reduce((a, e) => a + e.length, 0);
        expect(await img.info()).toEqual({ format: 'qcow2', ...f.info, data_bytes: sum('data'), zero_bytes: sum('zero') });
        const extents: Extent[] = [];
        for await (const e of img.extents()) extents.push({ offset: e.offset, length: e.length, kind: e.kind });
        expect(extents).toEqual(f.map);
        let compressed = 0;
        for await (const run of img.runs()) if (run.kind === 'data' && run.compressed) compressed++;
        if (f.compressed_clusters > 0) expect(compressed).toBeGreaterThan(0);
        else expect(compressed).toBe(0);
        expect(sha256(await img.read(0, img.virtualSize)), 'guest bytes of the file alone').toBe(f.sha256_alone);
      } finally {
        await img.close();
      }
      if (f.sha256_chain !== null) {
        const chain = await Chain.open(file);
        try {
          expect(chain.layers.length).toBeGreaterThan(1);
          expect(sha256(await chain.read(0, chain.virtualSize)), 'guest bytes through the chain').toBe(f.sha256_chain);
        } finally {
          await chain.close();
        }
      }
    });
  }
});
