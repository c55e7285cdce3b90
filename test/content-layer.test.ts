/**
 * openLayer's fast path reads plain runs straight from the host into the caller's buffer and takes
 * compressed clusters from the streaming reader: on a layer that mixes both (and zero clusters, and a
 * run past the end of a batch), every byte must be the one qemu-img reads from the layer alone.
 */

import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Batcher } from '../src/content/batcher.js';
import { openLayer } from '../src/content/layer.js';
import { qemuCreate, qemuIo, qemuRawAlone } from './helpers/qemu.js';
import { compressibleBytes, rng } from './helpers/random.js';
import { useTempDir } from './helpers/temp.js';

const K = 1024;
const M = 1024 * K;

describe('openLayer', () => {
  const tmp = useTempDir();

  it('reads plain runs, compressed clusters and zeros of one layer in guest order, as qemu-img does', async () => {
    const dir = tmp();
    const file = path.join(dir, 'mixed.qcow2');
    const text = path.join(dir, 'text.bin');
    await writeFile(text, compressibleBytes(rng(16), 2 * M));
    await qemuCreate(file, '16M');
    // Compressed clusters between plain runs, a plain run written before and after them on the host,
    // a zero range, and a plain run longer than one batch.
    await qemuIo(file, [
      'write -P 0x11 0 192k',
      `write -c -s ${text} 1M 256k`,
      'write -P 0x22 3M 64k',
      `write -c -s ${text} 4M 64k`,
      'write -z 5M 128k',
      `write -s ${text} 8M 2M`,
      'write -P 0x33 1088k 64k',
    ]);
    const want = await (async () => {
      const raw = path.join(dir, 'want.raw');
      await qemuRawAlone(file, raw);
      return readFile(raw);
    })();

    const got = Buffer.alloc(want.length);
    const seen = { data: 0, zero: 0 };
    const src = await openLayer(file, false);
    try {
      // Small batches: pieces are cut across batch buffers, and fills land at offsets inside them.
      const batcher = new Batcher(0, 256 * K, async (b) => {
        for (const it of b.items) {
          if (it.kind === 'zero') continue;
          b.buf.copy(got, it.offset, it.at, it.at + it.length);
        }
        return undefined;
      });
      for await (const p of src.pieces()) {
        if (p.kind === 'zero') {
          seen.zero += p.length;
          await batcher.zero(p.offset, p.length);
        } else {
          seen.data += p.length;
          await batcher.data(p.offset, p.length, p.fill);
        }
      }
      await batcher.flush();
    } finally {
      await src.close();
    }
    expect(seen.data).toBe(192 * K + 256 * K + 64 * K + 64 * K + 2 * M);
    expect(got.equals(want)).toBe(true);
  });
});
