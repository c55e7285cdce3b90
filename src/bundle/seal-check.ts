/**
 * The seal check of bundle decoding (decode.ts), once every pack is read: the seal must agree with
 * what the packs held — each layer's digest and sizes, the totals, and each snapshot's content id
 * (derived from its layers' digests and its parent's id when the meta does not carry it).
 */
import type { LayerDigest } from '../content/digest.js';
import { contentId } from '../snapshots/identity.js';
import type { Meta, Seal, SealTotals } from './format.js';
import { corrupt } from './reader.js';

/** Returns the layers' digests and the snapshots' content ids, in meta order. */
export function checkSeal(
  meta: Meta,
  seal: Seal,
  digests: LayerDigest[],
  totals: SealTotals,
  file: string,
  layerName: (li: number) => string,
): { digests: Buffer[]; contentIds: string[] } {
  const out: Buffer[] = [];
  for (const [li, d] of digests.entries()) {
    const got = d.digest();
    out.push(got);
    const want = seal.layers[li]!;
    if (want.digest !== got.toString('hex')) throw corrupt(`${layerName(li)}: content digest differs from the seal`, file);
    if (want.data_bytes !== d.dataBytes || want.zero_bytes !== d.zeroBytes || want.blocks !== d.blocks) {
      throw corrupt(`${layerName(li)}: sizes differ from the seal`, file);
    }
  }
  for (const k of Object.keys(totals) as (keyof SealTotals)[]) {
    if (seal.totals[k] !== totals[k]) throw corrupt(`totals: ${k} is ${seal.totals[k]} in the seal, ${totals[k]} in the packs`, file);
  }
  const ids: string[] = [];
  for (const [si, s] of meta.snapshots.entries()) {
    const parentId = si === 0 ? (meta.since ? meta.since.content_id : null) : ids[si - 1]!;
    const sealed = seal.snapshots[si]!.content_id;
    if (s.content_id !== null) {
      if (s.content_id !== sealed) throw corrupt(`snapshot ${s.name}: content id differs between meta and seal`, file);
    } else {
      const derived = contentId(
        parentId,
        meta.layers.flatMap((l, li) => (l.snapshot === si ? [{ target: l.target, digest: out[li]! }] : [])),
      );
      if (derived !== sealed) throw corrupt(`snapshot ${s.name}: content id does not match its layers`, file);
    }
    ids.push(sealed);
  }
  return { digests: out, contentIds: ids };
}
