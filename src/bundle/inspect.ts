/**
 * `snapshot inspect`: what a bundle holds (snapshots, sizes, dedup and compression savings) from its
 * meta and seal. Packs are authenticated on the way but their blocks are not decompressed (that is
 * `verify`). Without the key, an encrypted bundle shows only what its header says.
 */
import type { Readable } from 'node:stream';
import type { KeySource } from './crypto.js';
import { chainOf, type SealTotals } from './format.js';
import { openInput } from './input.js';
import { BundleReader, type ReaderKeyOptions } from './reader.js';

/** The seal's totals are part of the report as they are (logical, unique, stored bytes; blocks; frames). */
export interface InspectResult extends SealTotals {
  file: string;
  format_version: number;
  encrypted: boolean;
  key: 'none' | 'passphrase' | 'key-file';
  /** False when the bundle is encrypted and no key was given: only the header was read. */
  readable: boolean;
  /** Always false: what follows is the seal's claim, no block was checked (that is `verify`). */
  claims_verified: false;
  bundle_bytes: number | null;
  /** The VM of a single-VM bundle; null for a group bundle (see `chains`). */
  vm: string | null;
  /** The group of a group bundle (format version 2), else null. */
  group: { name: string; members: string[]; snapshots: { name: string; created_at: string; members: Record<string, string> }[] } | null;
  /** Per VM, the names of its snapshots in the bundle (one entry unless a group bundle). */
  chains: { vm: string; snapshots: string[] }[];
  created_at: string | null;
  since: { name: string; content_id: string } | null;
  snapshots: {
    /** The VM whose chain holds the snapshot. */
    vm: string;
    name: string;
    parent: string | null;
    created_at: string;
    description: string | null;
    tags: string[];
    content_id: string;
    data_bytes: number;
    zero_bytes: number;
    disks: { target: string; virtual_size: number; cluster_size: number; data_bytes: number; zero_bytes: number; blocks: number }[];
  }[];
  packs: number;
  /** Share of the logical data that dedup removed, of what remained that compression removed, and overall. */
  dedup_savings_percent: number;
  compression_savings_percent: number;
  total_savings_percent: number;
}

const pct = (part: number, whole: number) => (whole > 0 ? Math.round((1000 * part) / whole) / 10 : 0);

/** `input`: a bundle file, or a stream that gives it. */
export async function inspectBundle(input: string | Readable, key: KeySource | null, opts: Omit<ReaderKeyOptions, 'lockedOk'> = {}): Promise<InspectResult> {
  const src = await openInput(input);
  const r = await BundleReader.open(src.stream, src.label, key, { ...opts, lockedOk: true });
  try {
    const h = r.header;
    const base: InspectResult = {
      file: src.label,
      format_version: h.version,
      encrypted: h.encrypted,
      key: !h.encrypted ? 'none' : h.keyKind === 1 ? 'passphrase' : 'key-file',
      readable: !r.locked,
      claims_verified: false,
      bundle_bytes: src.size,
      vm: null,
      group: null,
      chains: [],
      created_at: null,
      since: null,
      snapshots: [],
      packs: 0,
      logical_bytes: 0,
      unique_bytes: 0,
      stored_bytes: 0,
      blocks: 0,
      unique_blocks: 0,
      frames: 0,
      dedup_savings_percent: 0,
      compression_savings_percent: 0,
      total_savings_percent: 0,
    };
    if (r.locked) return base;
    while ((await r.nextPack()) !== null) {
      /* authenticated and counted; blocks are verify's job */
    }
    const m = r.meta;
    const seal = r.seal!;
    const t = seal.totals;
    return {
      ...base,
      vm: m.group ? null : m.chains[0]!.vm,
      group: m.group
        ? {
            name: m.group.name,
            members: m.group.members,
            snapshots: m.group.snapshots.map((g) => ({ name: g.name, created_at: g.created_at, members: g.members })),
          }
        : null,
      chains: m.chains.map((c) => ({ vm: c.vm, snapshots: m.snapshots.slice(c.first, c.first + c.count).map((s) => s.name) })),
      created_at: m.created_at,
      since: m.group ? null : m.chains[0]!.since,
      packs: seal.packs,
      snapshots: m.snapshots.map((s, si) => {
        const disks = m.layers.flatMap((l, li) =>
          l.snapshot === si
            ? [
                {
                  target: l.target,
                  virtual_size: l.virtual_size,
                  cluster_size: l.cluster_size,
                  data_bytes: seal.layers[li]!.data_bytes,
                  zero_bytes: seal.layers[li]!.zero_bytes,
                  blocks: seal.layers[li]!.blocks,
                },
              ]
            : [],
        );
        return {
          vm: chainOf(m, si).vm,
          name: s.name,
          parent: s.parent,
          created_at: s.created_at,
          description: s.description,
          tags: s.tags,
          content_id: seal.snapshots[si]!.content_id,
          data_bytes: disks.reduce((a, d) => a + d.data_bytes, 0),
          zero_bytes: disks.reduce((a, d) => a + d.zero_bytes, 0),
          disks,
        };
      }),
      logical_bytes: t.logical_bytes,
      unique_bytes: t.unique_bytes,
      stored_bytes: t.stored_bytes,
      blocks: t.blocks,
      unique_blocks: t.unique_blocks,
      frames: t.frames,
      dedup_savings_percent: pct(t.logical_bytes - t.unique_bytes, t.logical_bytes),
      compression_savings_percent: pct(t.unique_bytes - t.stored_bytes, t.unique_bytes),
      total_savings_percent: pct(t.logical_bytes - t.stored_bytes, t.logical_bytes),
    };
  } finally {
    r.destroy();
  }
}
