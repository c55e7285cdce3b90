/**
 * Rebase: write a new image whose content equals `top` (read through its whole chain) but whose backing
 * file is `newBase`, an image further down the same chain. Only ranges allocated in the layers between
 * `top` and `newBase` are read and written; everything else stays unallocated and reads through to
 * `newBase` as before. This is the one merge primitive behind delete (current and --keep-children),
 * recursive delete and prune: merging snapshot S away = rebasing whatever sat on S onto S's parent.
 *
 * Clusters that the layers in between only partly cover (different cluster sizes, subclusters) are
 * read in full through the complete chain and written as data, so content is exact.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Chain } from './chain.js';
import { ChainReader } from './chain-reader.js';
import { formatOf } from './probe.js';
import { Qcow2Image } from './reader.js';
import { Qcow2Writer } from './writer.js';

/** Data is read and written in slices of at most this size. */
const SLICE = 4 * 1024 * 1024;

export interface RebaseResult {
  dataBytes: number;
  zeroBytes: number;
}

/**
 * Writes the rebased image to `out` (renamed into place by the writer after fsync). `newBase` is an
 * absolute path (or null for a self-contained image); it is stored relative to `out`'s directory.
 */
export async function rebaseImage(top: string, newBase: string | null, out: string): Promise<RebaseResult> {
  const topImg = await Qcow2Image.open(top);
  const cs = topImg.clusterSize;
  const vs = topImg.virtualSize;
  await topImg.close();
  const upper = await Chain.open(top, newBase ? { stopAt: newBase } : {});
  const reader = new ChainReader(upper);
  let slice: Buffer | null = null;
  let full: Chain | null = null;
  // The merged image replaces `top`: it keeps top's permissions (0600 layers stay private).
  const mode = (await stat(top)).mode & 0o777;
  const w = await Qcow2Writer.create(out, {
    mode,
    virtualSize: vs,
    clusterSize: cs,
    backingFile: newBase ? path.relative(path.dirname(out), newBase) : null,
    backingFormat: newBase ? await formatOf(newBase) : null,
  });
  const res: RebaseResult = { dataBytes: 0, zeroBytes: 0 };
  try {
    // A cluster met only in part so far: which kinds cover it.
    let partial: { index: number; kinds: Set<string>; covered: number } | null = null;
    const flushPartial = async () => {
      if (!partial) return;
      const p = partial;
      partial = null;
      const start = p.index * cs;
      const len = Math.min(cs, vs - start);
      const complete = p.covered === len;
      if (complete && p.kinds.size === 1 && p.kinds.has('unallocated')) return;
      if (complete && p.kinds.size === 1 && p.kinds.has('zero')) {
        await w.writeZero(start, len);
        res.zeroBytes += len;
        return;
      }
      full ??= await Chain.open(top);
      await w.write(start, await full.read(start, len));
      res.dataBytes += len;
    };
    const addPartial = async (index: number, kind: string, length: number) => {
      if (partial && partial.index !== index) await flushPartial();
      partial ??= { index, kinds: new Set(), covered: 0 };
      partial.kinds.add(kind);
      partial.covered += length;
    };

    for await (const r of upper.resolve(0, vs)) {
      const kind = r.layer < 0 || !r.run ? 'unallocated' : r.run.kind;
      let off = r.offset;
      const end = r.offset + r.length;
      while (off < end) {
        const index = Math.floor(off / cs);
        const cStart = index * cs;
        const cEnd = Math.min(cStart + cs, vs);
        if (off !== cStart || end < cEnd) {
          // Piece of a cluster.
          const pieceEnd = Math.min(end, cEnd);
          await addPartial(index, kind, pieceEnd - off);
          off = pieceEnd;
          continue;
        }
        if (partial) await flushPartial();
        // Whole clusters from `off` up to the last cluster boundary within this run.
        let wholeEnd = end >= vs ? vs : end - (end % cs);
        if (wholeEnd <= off) wholeEnd = cEnd;
        if (kind === 'zero') {
          await w.writeZero(off, wholeEnd - off);
          res.zeroBytes += wholeEnd - off;
        } else if (kind === 'data') {
          for (let s = off; s < wholeEnd; s += SLICE) {
            const len = Math.min(SLICE, wholeEnd - s);
            // One reused buffer: the writer keeps its own copy of what it has not written yet.
            slice ??= Buffer.allocUnsafe(SLICE);
            await reader.readInto(s, len, slice);
            await w.write(s, slice.subarray(0, len));
            res.dataBytes += len;
          }
        }
        off = wholeEnd;
      }
    }
    await flushPartial();
    await w.finish();
    return res;
  } catch (err) {
    await w.abort();
    throw err;
  } finally {
    await reader.close();
    await upper.close();
    if (full) await (full as Chain).close();
  }
}
