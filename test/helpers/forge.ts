/**
 * Hand-made plain bundles that no honest exporter writes, built with the format's own parts (header,
 * sealer, pack writer, tar writer): what an attacker can produce, since a plain bundle's tags are
 * SHA-256 anyone can recompute. Zero records only: enough for metadata bombs.
 */
import { createWriteStream } from 'node:fs';
import { Sealer } from '../../src/bundle/crypto.js';
import { ENTRY_HEADER, ENTRY_META, ENTRY_SEAL, EntryKind, KeyKind, type Meta, packEntryName, type Seal } from '../../src/bundle/format.js';
import { encodeHeader, encodeJson, encodeMeta, headerPrefix } from '../../src/bundle/manifest.js';
import { PackWriter } from '../../src/bundle/packs.js';
import { TarWriter } from '../../src/bundle/tar.js';
import { LayerDigest } from '../../src/content/digest.js';
import { contentId } from '../../src/snapshots/identity.js';

export interface ForgedLayer {
  virtualSize: number;
  clusterSize: number;
  /** Zero ranges, in order. */
  zeros: { offset: number; length: number }[];
}

/** A plain bundle of a chain of one-disk snapshots (`s0`, `s1`, ...), each layer only zero ranges. */
export async function forgeZeroBundle(file: string, layers: ForgedLayer[]): Promise<void> {
  const prefix = headerPrefix({
    version: 1,
    encrypted: false,
    bundleId: Buffer.alloc(16, 7),
    keyKind: KeyKind.None,
    opslimit: 0,
    memlimit: 0,
    salt: Buffer.alloc(16),
  });
  const { bytes: header, checksum } = encodeHeader(prefix, Buffer.alloc(32));
  const sealer = new Sealer(checksum, null);
  const now = new Date().toISOString();
  const meta: Meta = {
    format: 'clonebox-bundle',
    version: 1,
    created_at: now,
    block_size: 64 * 1024,
    block_hash: 'sha256',
    compression: { codec: 'zstd', level: 3 },
    chains: [{ vm: 'forged', since: null, first: 0, count: layers.length }],
    group: null,
    snapshots: layers.map((_, i) => ({
      name: `s${i}`,
      parent: i === 0 ? null : `s${i - 1}`,
      type: 'disk' as const,
      created_at: now,
      description: null,
      tags: [],
      auto_created: false,
      auto_policy: null,
      expires_at: null,
      content_id: null,
    })),
    layers: layers.map((l, i) => ({ snapshot: i, target: 'vda', virtual_size: l.virtualSize, cluster_size: l.clusterSize })),
  };
  const pw = new PackWriter(1024 * 1024);
  const sealLayers: Seal['layers'] = [];
  const ids: string[] = [];
  for (const [i, l] of layers.entries()) {
    const dg = new LayerDigest(l.virtualSize, l.clusterSize);
    for (const z of l.zeros) {
      pw.zero(i, z.offset, z.length);
      dg.addZero(z.offset, z.length);
    }
    sealLayers.push({ digest: dg.digest().toString('hex'), data_bytes: 0, zero_bytes: dg.zeroBytes, blocks: 0 });
    ids.push(contentId(i === 0 ? null : ids[i - 1]!, [{ target: 'vda', digest: dg.digest() }]));
  }
  const seal: Seal = {
    packs: 1,
    snapshots: meta.snapshots.map((s, i) => ({ name: s.name, content_id: ids[i]! })),
    layers: sealLayers,
    totals: { logical_bytes: 0, unique_bytes: 0, stored_bytes: 0, blocks: 0, unique_blocks: 0, frames: 0 },
  };
  const out = createWriteStream(file);
  const tar = new TarWriter(out, new Date(0));
  await tar.add(ENTRY_HEADER, header);
  await tar.add(ENTRY_META, sealer.sealParts(EntryKind.Meta, 0, encodeMeta(meta)));
  await tar.add(packEntryName(0), sealer.sealParts(EntryKind.Pack, 0, pw.take()));
  await tar.add(ENTRY_SEAL, sealer.sealParts(EntryKind.Seal, 0, encodeJson(seal)));
  await tar.finish();
}
