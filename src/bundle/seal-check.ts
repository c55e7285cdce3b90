/**
 * The seal check of bundle decoding (decode.ts), once every pack is read: the seal must agree with
 * what the packs held — each layer's digest and sizes, the totals, and each snapshot's content id.
 *
 * Every content id is derived again from its parent's id and its layers' digests as the packs gave
 * them. An id the meta left to the seal must derive (else the bundle is corrupt). An id the meta
 * carries (a snapshot whose layer a merge rewrote after its id was taken) may not: it is then an
 * unverified claim — accepted, but never trusted as a base (`verified` false), as is every id that
 * stands on one. Otherwise anyone could give their own data a real snapshot's id, and a later real
 * `--since` bundle would land on top of it.
 */
import type { LayerDigest } from '../content/digest.js';
import { contentId } from '../snapshots/identity.js';
import { chainOf, type Meta, type Seal, type SealTotals } from './format.js';
import { corrupt } from './reader.js';

/** Returns the layers' digests and the snapshots' content ids, in meta order. */
export function checkSeal(
  meta: Meta,
  seal: Seal,
  digests: LayerDigest[],
  totals: SealTotals,
  file: string,
  layerName: (li: number) => string,
): { digests: Buffer[]; contentIds: string[]; verified: boolean[] } {
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
  const verified: boolean[] = [];
  for (const [si, s] of meta.snapshots.entries()) {
    // The first of a chain stands on its `since`, which the importer matches only with a verified local id.
    const chain = chainOf(meta, si);
    const first = si === chain.first;
    const parentId = first ? (chain.since ? chain.since.content_id : null) : ids[si - 1]!;
    const sealed = seal.snapshots[si]!.content_id;
    if (s.content_id !== null && s.content_id !== sealed) throw corrupt(`snapshot ${s.name}: content id differs between meta and seal`, file);
    const derived = contentId(
      parentId,
      meta.layers.flatMap((l, li) => (l.snapshot === si ? [{ target: l.target, digest: out[li]! }] : [])),
    );
    if (s.content_id === null && derived !== sealed) throw corrupt(`snapshot ${s.name}: content id does not match its layers`, file);
    verified.push(derived === sealed && (first || verified[si - 1]!));
    ids.push(sealed);
  }
  return { digests: out, contentIds: ids, verified };
}
