/**
 * The bundle format's pieces on their own: header/meta/seal/pack codecs (round trips and mutation
 * fuzzing: a decoder given garbage throws a coded error, never anything else), sealing, the dedup
 * index, map normalisation and block cutting against brute-force references.
 */

import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { blockId, keyCheck, Sealer, sha256 } from '../src/bundle/crypto.js';
import { BLOCK_SIZE, Codec, EntryKind, KeyKind, type Meta, type Seal } from '../src/bundle/format.js';
import { decodeHeader, decodeMeta, decodeSeal, encodeHeader, encodeJson, encodeMeta, headerPrefix } from '../src/bundle/manifest.js';
import { PackWriter, parsePack } from '../src/bundle/packs.js';
import { type Batch, Batcher } from '../src/content/batcher.js';
import { BlockIndex } from '../src/content/dedup.js';
import { LayerDigest } from '../src/content/digest.js';
import { normalise } from '../src/content/layer.js';
import { CloneboxError } from '../src/errors.js';
import { type Rng, rng, seedFromEnv } from './helpers/random.js';

const seed = seedFromEnv('BUNDLE_FUZZ_SEED', 20261122);

function expectCoded(fn: () => unknown, what: string): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof CloneboxError)) throw new Error(`${what}: threw ${(err as Error)?.stack ?? err} (seed ${seed})`);
    expect(err.message.length).toBeGreaterThan(0);
  }
}

function mutate(r: Rng, b: Buffer): Buffer {
  const m = Buffer.from(b);
  const n = r.int(1, 4);
  for (let i = 0; i < n && m.length; i++) {
    const k = r.int(0, 4);
    const at = r.int(0, m.length);
    if (k === 0) m[at] = r.int(0, 256);
    else if (k === 1) m[at] = m[at]! ^ (1 << r.int(0, 8));
    else if (k === 2) m.writeUInt32BE(r.pick([0, 1, 0xffffffff, 0x7fffffff, 65536, 65537]) >>> 0, Math.min(at, Math.max(m.length - 4, 0)));
    else return m.subarray(0, at);
  }
  return m;
}

function sampleHeader(encrypted: boolean): Buffer {
  const prefix = headerPrefix({
    version: 1,
    encrypted,
    bundleId: Buffer.alloc(16, 9),
    keyKind: encrypted ? KeyKind.Passphrase : KeyKind.None,
    opslimit: encrypted ? 3 : 0,
    memlimit: encrypted ? 64 * 1024 * 1024 : 0,
    salt: encrypted ? Buffer.alloc(16, 1) : Buffer.alloc(16),
  });
  return encodeHeader(prefix, encrypted ? keyCheck(Buffer.alloc(32, 2), prefix) : Buffer.alloc(32)).bytes;
}

/** A version 1 meta as it is on the wire (as every bundle before groups wrote it). */
type WireMeta = Record<string, unknown> & { snapshots: Meta['snapshots']; layers: Meta['layers'] };
const WIRE: WireMeta = {
  format: 'clonebox-bundle',
  version: 1,
  created_at: '2026-11-22T00:00:00.000Z',
  vm: { name: 'web' },
  block_size: BLOCK_SIZE,
  block_hash: 'sha256',
  compression: { codec: 'zstd', level: 3 },
  since: null,
  snapshots: [
    {
      name: 'a',
      parent: null,
      type: 'disk',
      created_at: '2026-11-22T00:00:00.000Z',
      description: 'x',
      tags: ['t'],
      auto_created: false,
      auto_policy: null,
      expires_at: null,
      content_id: null,
    },
    {
      name: 'b',
      parent: 'a',
      type: 'disk',
      created_at: '2026-11-22T00:00:01.000Z',
      description: null,
      tags: [],
      auto_created: true,
      auto_policy: 'run',
      expires_at: null,
      content_id: 'ab'.repeat(32),
    },
  ],
  layers: [
    { snapshot: 0, target: 'vda', virtual_size: 1 << 30, cluster_size: 65536 },
    { snapshot: 0, target: 'vdb', virtual_size: 1 << 20, cluster_size: 4096 },
    { snapshot: 1, target: 'vda', virtual_size: 1 << 30, cluster_size: 65536 },
    { snapshot: 1, target: 'vdb', virtual_size: 1 << 20, cluster_size: 4096 },
  ],
};
const META: Meta = decodeMeta(encodeJson(WIRE), 'f');

/**
 * A version 2 (group) meta on the wire: two members, VM db with snapshots a, b and VM app with a, and
 * the group snapshots that name them.
 */
const GS = {
  created_at: '2026-11-22T00:00:00.000Z',
  description: null,
  tags: ['t'],
  type: 'disk',
  consistency: 'locks',
  pause_ms: null,
  auto_created: false,
  auto_policy: null,
};
const WIRE2: WireMeta = {
  format: 'clonebox-bundle',
  version: 2,
  created_at: '2026-11-22T00:00:00.000Z',
  block_size: BLOCK_SIZE,
  block_hash: 'sha256',
  compression: { codec: 'zstd', level: 3 },
  group: {
    name: 'stack',
    description: null,
    members: ['db', 'app'],
    snapshots: [
      { ...GS, name: 'g1', members: { db: 'a', app: 'a' } },
      { ...GS, name: 'g2', created_at: '2026-11-22T00:00:01.000Z', description: 'x', consistency: 'paused', pause_ms: 412, members: { db: 'b', app: 'a' } },
    ],
  },
  chains: [
    { vm: 'db', snapshots: 2 },
    { vm: 'app', snapshots: 1 },
  ],
  snapshots: [...WIRE.snapshots, { ...WIRE.snapshots[0]! }],
  layers: [
    { snapshot: 0, target: 'vda', virtual_size: 1 << 30, cluster_size: 65536 },
    { snapshot: 1, target: 'vda', virtual_size: 1 << 30, cluster_size: 65536 },
    { snapshot: 2, target: 'sda', virtual_size: 1 << 20, cluster_size: 4096 },
  ],
};

const SEAL: Seal = {
  packs: 2,
  snapshots: [
    { name: 'a', content_id: 'cd'.repeat(32) },
    { name: 'b', content_id: 'ab'.repeat(32) },
  ],
  layers: META.layers.map(() => ({ digest: 'ef'.repeat(32), data_bytes: 65536, zero_bytes: 0, blocks: 1 })),
  totals: { logical_bytes: 4 * 65536, unique_bytes: 65536, stored_bytes: 100, blocks: 4, unique_blocks: 1, frames: 1 },
};

describe('header', () => {
  it('round-trips plain and encrypted headers', () => {
    for (const enc of [false, true]) {
      const h = decodeHeader(sampleHeader(enc), 'f');
      expect(h.encrypted).toBe(enc);
      expect(h.checksum.equals(sha256(sampleHeader(enc).subarray(0, 104)))).toBe(true);
    }
  });

  it('refuses every single-byte change, and any mutation with a coded error', () => {
    for (const enc of [false, true]) {
      const good = sampleHeader(enc);
      for (let i = 0; i < good.length; i++) {
        const m = Buffer.from(good);
        m[i] = m[i]! ^ 0x01;
        expect(() => decodeHeader(m, 'f'), `byte ${i}`).toThrow(CloneboxError);
      }
      const r = rng(seed);
      for (let i = 0; i < 2000; i++) expectCoded(() => decodeHeader(mutate(r, good), 'f'), 'header');
    }
  });

  it('refuses hostile Argon2id parameters even with a valid checksum', () => {
    for (const [ops, mem] of [
      [0, 65536],
      [1000, 65536],
      [3, 2 ** 40],
      [3, 1024],
    ] as const) {
      const prefix = headerPrefix({
        version: 1,
        encrypted: true,
        bundleId: Buffer.alloc(16),
        keyKind: KeyKind.Passphrase,
        opslimit: ops,
        memlimit: mem,
        salt: Buffer.alloc(16, 1),
      });
      expect(() => decodeHeader(encodeHeader(prefix, Buffer.alloc(32)).bytes, 'f')).toThrow(/Argon2id/);
    }
  });
});

describe('meta and seal', () => {
  it('round-trip', () => {
    expect(META.chains).toEqual([{ vm: 'web', since: null, first: 0, count: 2 }]);
    expect(META.group).toBe(null);
    // A version 1 meta is written exactly as before groups: older readers read it.
    expect(JSON.parse(encodeMeta(META).toString())).toEqual(WIRE);
    const m2 = decodeMeta(encodeJson(WIRE2), 'f', 2);
    expect(m2.chains).toEqual([
      { vm: 'db', since: null, first: 0, count: 2 },
      { vm: 'app', since: null, first: 2, count: 1 },
    ]);
    expect(m2.group?.snapshots.map((g) => g.members)).toEqual([
      { db: 'a', app: 'a' },
      { db: 'b', app: 'a' },
    ]);
    expect(JSON.parse(encodeMeta(m2).toString())).toEqual(WIRE2);
    // The version in the meta must be the header's.
    expect(() => decodeMeta(encodeJson(WIRE2), 'f', 1)).toThrow(/version/);
    expect(() => decodeMeta(encodeJson(WIRE), 'f', 2)).toThrow(/version/);
    expect(decodeSeal(encodeJson(SEAL), META, 'f')).toEqual(SEAL);
  });

  it('refuse inconsistent content', () => {
    const bad: [string, (m: WireMeta) => void][] = [
      [
        'broken parent line',
        (m) => {
          m.snapshots[1]!.parent = 'zzz';
        },
      ],
      [
        'duplicate name',
        (m) => {
          m.snapshots[1]!.name = 'a';
          m.snapshots[1]!.parent = 'a';
        },
      ],
      [
        'path-like target',
        (m) => {
          m.layers[0]!.target = '../x';
        },
      ],
      [
        'path-like name',
        (m) => {
          m.snapshots[0]!.name = '../../etc';
        },
      ],
      [
        'odd cluster size',
        (m) => {
          m.layers[0]!.cluster_size = 3000;
        },
      ],
      [
        'unaligned virtual size',
        (m) => {
          m.layers[0]!.virtual_size = 1000;
        },
      ],
      [
        'disks differ between snapshots',
        (m) => {
          m.layers[3]!.target = 'vdc';
        },
      ],
      [
        'layers out of order',
        (m) => {
          m.layers.reverse();
        },
      ],
      [
        'layer for no snapshot',
        (m) => {
          m.layers.push({ snapshot: 5, target: 'vda', virtual_size: 512, cluster_size: 512 });
        },
      ],
      [
        'no snapshots',
        (m) => {
          m.snapshots = [];
          m.layers = [];
        },
      ],
      [
        'other block size',
        (m) => {
          m.block_size = 4096;
        },
      ],
      [
        'negative size',
        (m) => {
          m.layers[0]!.virtual_size = -512;
        },
      ],
      [
        'bad content id',
        (m) => {
          m.snapshots[1]!.content_id = 'xyz';
        },
      ],
    ];
    for (const [what, f] of bad) {
      const m = structuredClone(WIRE);
      f(m);
      expect(() => decodeMeta(encodeJson(m), 'f'), what).toThrow(CloneboxError);
    }
    type G = { name: unknown; members: unknown[]; snapshots: { members: Record<string, unknown>; name: unknown }[] };
    type C = { vm: unknown; snapshots: unknown }[];
    const bad2: [string, RegExp, (m: WireMeta & { group: G; chains: C }) => void][] = [
      [
        'chain counts exceed the snapshots',
        /chains\[1\]\.snapshots/,
        (m) => {
          m.chains[1]!.snapshots = 2;
        },
      ],
      [
        'chain counts fall short',
        /chains hold 2 snapshots/,
        (m) => {
          m.chains[0]!.snapshots = 1;
        },
      ],
      [
        'an empty chain',
        /chains\[1\]\.snapshots/,
        (m) => {
          m.chains[1]!.snapshots = 0;
        },
      ],
      [
        'huge chain count',
        /chains\[0\]\.snapshots/,
        (m) => {
          m.chains[0]!.snapshots = 2 ** 40;
        },
      ],
      [
        'no chains',
        /no chains/,
        (m) => {
          m.chains = [];
        },
      ],
      [
        'a VM twice',
        /appears twice/,
        (m) => {
          m.chains[1]!.vm = 'db';
        },
      ],
      [
        'path-like VM',
        /not a valid name/,
        (m) => {
          m.chains[0]!.vm = '../x';
        },
      ],
      [
        'members are not the chains',
        /group\.members/,
        (m) => {
          m.group.members = ['db', 'web'];
        },
      ],
      [
        'member listed twice',
        /group\.members/,
        (m) => {
          m.group.members = ['db', 'app', 'db'];
        },
      ],
      [
        'group snapshot misses a member',
        /every member once/,
        (m) => {
          delete m.group.snapshots[0]!.members.app;
        },
      ],
      [
        'group snapshot names a snapshot not in the bundle',
        /does not hold/,
        (m) => {
          m.group.snapshots[1]!.members.app = 'b';
        },
      ],
      [
        'group snapshot twice',
        /appears twice/,
        (m) => {
          m.group.snapshots[1]!.name = 'g1';
        },
      ],
      [
        'more group snapshots than snapshots',
        /group\.snapshots has/,
        (m) => {
          m.group.snapshots.push(m.group.snapshots[0]!, m.group.snapshots[0]!);
        },
      ],
      [
        'path-like group name',
        /not a valid name/,
        (m) => {
          m.group.name = '../g';
        },
      ],
      [
        'parent across chains',
        /parent/,
        (m) => {
          m.snapshots[2]!.parent = 'b';
        },
      ],
      [
        'unknown consistency',
        /consistency/,
        (m) => {
          (m.group.snapshots[0] as unknown as Record<string, unknown>).consistency = 'hope';
        },
      ],
      [
        'negative pause',
        /pause_ms/,
        (m) => {
          (m.group.snapshots[1] as unknown as Record<string, unknown>).pause_ms = -1;
        },
      ],
      [
        'no group',
        /group is not an object/,
        (m) => {
          delete (m as Partial<typeof m>).group;
        },
      ],
    ];
    for (const [what, re, f] of bad2) {
      const m = structuredClone(WIRE2) as WireMeta & { group: G; chains: C };
      f(m);
      expect(() => decodeMeta(encodeJson(m), 'f', 2), what).toThrow(CloneboxError);
      expect(() => decodeMeta(encodeJson(m), 'f', 2), what).toThrow(re);
    }
    // Snapshot names repeat across chains (members of one group snapshot share its name), not within one.
    expect(() => decodeMeta(encodeJson(WIRE2), 'f', 2)).not.toThrow();
    expect(() => decodeSeal(encodeJson({ ...SEAL, layers: SEAL.layers.slice(1) }), META, 'f')).toThrow(CloneboxError);
    expect(() => decodeSeal(encodeJson({ ...SEAL, snapshots: [SEAL.snapshots[1], SEAL.snapshots[0]] }), META, 'f')).toThrow(CloneboxError);
  });

  it('answer garbage with coded errors only', () => {
    const r = rng(seed + 1);
    const m = encodeJson(WIRE);
    const m2 = encodeJson(WIRE2);
    const s = encodeJson(SEAL);
    for (let i = 0; i < 3000; i++) {
      expectCoded(() => decodeMeta(mutate(r, m), 'f'), 'meta');
      expectCoded(() => decodeMeta(mutate(r, m2), 'f', 2), 'group meta');
      expectCoded(() => decodeSeal(mutate(r, s), META, 'f'), 'seal');
    }
    expectCoded(() => decodeMeta(Buffer.from('[]'), 'f'), 'meta');
    expectCoded(() => decodeMeta(Buffer.from('null'), 'f'), 'meta');
    expectCoded(() => decodeMeta(Buffer.from('{"__proto__": {"x": 1}}'), 'f'), 'meta');
  });
});

describe('packs', () => {
  it('round-trip records, coalescing consecutive placements and adjacent zeros', () => {
    const w = new PackWriter();
    const ids = [0, 1, 2].map((i) => sha256(Buffer.from([i])));
    w.frame(
      Codec.Zstd,
      ids.map((id) => ({ length: BLOCK_SIZE, id })),
      Buffer.from('stored bytes'),
    );
    w.data(0, 0, 0, BLOCK_SIZE);
    w.data(0, BLOCK_SIZE, 1, BLOCK_SIZE);
    w.data(0, 2 * BLOCK_SIZE, 2, BLOCK_SIZE);
    w.data(0, 5 * BLOCK_SIZE, 0, BLOCK_SIZE);
    w.zero(0, 6 * BLOCK_SIZE, 4096);
    w.zero(0, 6 * BLOCK_SIZE + 4096, 4096);
    w.data(1, 0, 1, 1000);
    const recs = [...parsePack(w.take(), 'p', 'f')];
    expect(recs.map((r) => r.type)).toEqual(['frame', 'data', 'data', 'zero', 'data']);
    expect(recs[1]).toEqual({ type: 'data', layer: 0, offset: 0, first: 0, count: 3 });
    expect(recs[2]).toEqual({ type: 'data', layer: 0, offset: 5 * BLOCK_SIZE, first: 0, count: 1 });
    expect(recs[3]).toEqual({ type: 'zero', layer: 0, offset: 6 * BLOCK_SIZE, length: 8192 });
    const f = recs[0] as Extract<(typeof recs)[number], { type: 'frame' }>;
    expect(f.ids.map((b) => b.toString('hex'))).toEqual(ids.map((b) => b.toString('hex')));
    expect(f.stored.toString()).toBe('stored bytes');
    expect(w.empty).toBe(true);
  });

  it('answer garbage with coded errors only, without huge allocations', () => {
    const w = new PackWriter();
    w.frame(Codec.Raw, [{ length: 10, id: Buffer.alloc(32, 1) }], Buffer.alloc(10, 7));
    w.data(0, 0, 0, 10);
    w.zero(0, 65536, 65536);
    const good = w.take();
    const r = rng(seed + 2);
    for (let i = 0; i < 20000; i++) expectCoded(() => [...parsePack(mutate(r, good), 'p', 'f')], 'pack');
    for (let i = 0; i < 2000; i++) expectCoded(() => [...parsePack(r.bytes(r.int(1, 200)), 'p', 'f')], 'random pack');
  });
});

describe('sealing', () => {
  it('binds each entry to its bundle, kind and position', () => {
    for (const key of [null, Buffer.alloc(32, 3)]) {
      const s = new Sealer(Buffer.alloc(32, 1), key);
      const sealed = s.seal(EntryKind.Meta, 4, Buffer.from('payload'));
      expect(s.open(EntryKind.Meta, 4, sealed)?.toString()).toBe('payload');
      expect(s.open(EntryKind.Meta, 5, sealed)).toBeNull();
      expect(s.open(EntryKind.Seal, 4, sealed)).toBeNull();
      expect(new Sealer(Buffer.alloc(32, 2), key).open(EntryKind.Meta, 4, sealed)).toBeNull();
      for (let i = 0; i < sealed.length; i++) {
        const m = Buffer.from(sealed);
        m[i] = m[i]! ^ 0x80;
        expect(s.open(EntryKind.Meta, 4, m), `byte ${i}`).toBeNull();
      }
      expect(s.open(EntryKind.Meta, 4, sealed.subarray(0, 5))).toBeNull();
    }
  });

  it("tags a plain pack over everything but its frames' compressed bytes (those are checked by block id)", () => {
    const w = new PackWriter();
    w.frame(Codec.Raw, [{ length: 8, id: sha256(Buffer.from('12345678')) }], Buffer.from('12345678'));
    w.data(0, 0, 0, 8);
    w.zero(0, 65536, 65536);
    const payload = w.take();
    const s = new Sealer(Buffer.alloc(32, 1), null);
    const parts = s.sealParts(EntryKind.Pack, 2, payload);
    const sealed = Buffer.concat(parts);
    expect(s.open(EntryKind.Pack, 2, sealed)?.equals(payload)).toBe(true);
    expect(s.open(EntryKind.Pack, 3, sealed)).toBeNull();
    const storedAt = payload.indexOf('12345678');
    for (let i = 0; i < sealed.length; i++) {
      const m = Buffer.from(sealed);
      m[i] = m[i]! ^ 0x01;
      const inStored = i >= storedAt && i < storedAt + 8;
      expect(s.open(EntryKind.Pack, 2, m) === null, `byte ${i}`).toBe(!inStored);
    }
    // Encrypted packs are authenticated in full.
    const e = new Sealer(Buffer.alloc(32, 1), Buffer.alloc(32, 9));
    const es = e.seal(EntryKind.Pack, 2, payload);
    for (let i = 0; i < es.length; i += 7) {
      const m = Buffer.from(es);
      m[i] = m[i]! ^ 0x01;
      expect(e.open(EntryKind.Pack, 2, m)).toBeNull();
    }
  });

  it('keys block ids: equal blocks look different under different keys', () => {
    const sha = sha256(Buffer.from('block'));
    expect(blockId(sha, null).equals(sha)).toBe(true);
    const a = blockId(sha, Buffer.alloc(32, 1));
    const b = blockId(sha, Buffer.alloc(32, 2));
    expect(a.equals(b)).toBe(false);
    expect(a.equals(sha)).toBe(false);
  });
});

describe('dedup index', () => {
  it('finds every id it was given and no other, across growth', () => {
    const idx = new BlockIndex();
    const r = rng(seed + 3);
    const ids: Buffer[] = [];
    for (let i = 0; i < 50_000; i++) {
      const id = createHash('sha256').update(String(i)).digest();
      ids.push(id);
      expect(idx.get(id)).toBe(-1);
      expect(idx.add(id)).toBe(i);
    }
    for (let i = 0; i < 5000; i++) {
      const k = r.int(0, ids.length);
      expect(idx.get(ids[k]!)).toBe(k);
      expect(idx.idOf(k).equals(ids[k]!)).toBe(true);
    }
    expect(idx.get(createHash('sha256').update('absent').digest())).toBe(-1);
  });
});

describe('maps and blocks', () => {
  it('normalises fine-grained pieces to whole clusters like a per-cluster brute force', async () => {
    const r = rng(seed + 4);
    for (let round = 0; round < 300; round++) {
      const cs = r.pick([512, 4096, 65536]);
      const vs = r.int(1, 40) * 512 * r.pick([1, 8, 128]);
      const kinds = ['data', 'zero', 'unallocated'] as const;
      const pieces: { offset: number; length: number; kind: (typeof kinds)[number] }[] = [];
      for (let o = 0; o < vs; ) {
        const len = Math.min(vs - o, r.int(1, 8) * 512 * r.pick([1, 1, 16, 256]));
        pieces.push({ offset: o, length: len, kind: r.pick(kinds) });
        o += len;
      }
      const got: { offset: number; length: number; kind: string }[] = [];
      for await (const e of normalise(
        (async function* () {
          yield* pieces;
        })(),
        cs,
        vs,
      ))
        got.push({ ...e });
      // Brute force: classify every cluster, merge.
      const want: { offset: number; length: number; kind: string }[] = [];
      for (let c = 0; c * cs < vs; c++) {
        const s = c * cs;
        const e = Math.min(s + cs, vs);
        const ks = new Set(pieces.filter((p) => p.offset < e && p.offset + p.length > s).map((p) => p.kind));
        const k = ks.has('data') || (ks.has('zero') && ks.has('unallocated')) ? 'data' : ks.has('zero') ? 'zero' : 'unallocated';
        if (k === 'unallocated') continue;
        const last = want[want.length - 1];
        if (last && last.kind === k && last.offset + last.length === s) last.length += e - s;
        else want.push({ offset: s, length: e - s, kind: k });
      }
      expect(got, `round ${round} cs ${cs} vs ${vs}`).toEqual(want);
    }
  });

  it('cuts blocks at every 64 KiB boundary and extent end, however the data arrives', async () => {
    const r = rng(seed + 5);
    for (let round = 0; round < 100; round++) {
      const batches: Batch[] = [];
      const snapshot = (b: Batch) => ({ ...b, buf: Buffer.from(b.buf) });
      const batcher = new Batcher(0, r.pick([BLOCK_SIZE, 3 * BLOCK_SIZE, 1 << 20]), async (b) => {
        batches.push(snapshot(b));
      });
      // Extents of data made of pieces split at arbitrary 512-byte points.
      const extents: { offset: number; data: Buffer }[] = [];
      let o = r.int(0, 64) * 512;
      for (let i = 0; i < r.int(1, 6); i++) {
        const len = r.int(1, 600) * 512;
        extents.push({ offset: o, data: r.bytes(len) });
        o += len + r.int(1, 300) * 512;
      }
      for (const [i, e] of extents.entries()) {
        if (i % 2 === 1) await batcher.zero(e.offset - 512, 512); // sometimes a zero between extents
        let p = 0;
        while (p < e.data.length) {
          const n = Math.min(e.data.length - p, r.int(1, 200) * 512);
          const piece = e.data.subarray(p, p + n);
          let next = 0; // fills must come in order, each piece from its start to its end
          await batcher.data(e.offset + p, n, async (buf, at, skip, len) => {
            expect(skip).toBe(next);
            next = skip + len;
            piece.copy(buf, at, skip, skip + len);
          });
          expect(next).toBe(n);
          p += n;
        }
        batcher.gap();
      }
      await batcher.flush();
      const blocks = batches.flatMap((b) =>
        b.items.flatMap((it) => (it.kind === 'block' ? [{ offset: it.offset, bytes: b.buf.subarray(it.at, it.at + it.length) }] : [])),
      );
      // Reference cut of each extent.
      const want: { offset: number; bytes: Buffer }[] = [];
      for (const e of extents) {
        for (let p = 0; p < e.data.length; ) {
          const abs = e.offset + p;
          const n = Math.min(BLOCK_SIZE - (abs % BLOCK_SIZE), e.data.length - p);
          want.push({ offset: abs, bytes: e.data.subarray(p, p + n) });
          p += n;
        }
      }
      expect(blocks.map((b) => [b.offset, b.bytes.length])).toEqual(want.map((b) => [b.offset, b.bytes.length]));
      for (const [i, b] of blocks.entries()) expect(b.bytes.equals(want[i]!.bytes)).toBe(true);
      for (const b of batches) expect(b.used).toBeLessThanOrEqual(b.buf.length);
    }
  });

  it('digests merge adjacent zero extents, so a map split differently digests the same', () => {
    const a = new LayerDigest(1 << 20, 65536);
    a.addZero(0, 65536);
    a.addZero(65536, 65536);
    a.addBlock(131072, 65536, sha256(Buffer.from('x')));
    const b = new LayerDigest(1 << 20, 65536);
    b.addZero(0, 131072);
    b.addBlock(131072, 65536, sha256(Buffer.from('x')));
    expect(a.digest().equals(b.digest())).toBe(true);
    const c = new LayerDigest(1 << 20, 4096);
    c.addZero(0, 131072);
    c.addBlock(131072, 65536, sha256(Buffer.from('x')));
    expect(c.digest().equals(b.digest())).toBe(false);
  });
});

describe('bundle input', () => {
  it('a reader stopped early closes the bundle file at once', async () => {
    const { mkdtemp, readdir, rm, writeFile } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const path = (await import('node:path')).default;
    const { openInput } = await import('../src/bundle/input.js');
    const { TarReader, ustarHeader } = await import('../src/bundle/tar.js');
    const dir = await mkdtemp(path.join(tmpdir(), 'clonebox-input-'));
    try {
      const file = path.join(dir, 'a.tar');
      const data = Buffer.alloc(200 * 1024, 7); // larger than a chunk: read straight into the entry
      await writeFile(file, Buffer.concat([ustarHeader('one', data.length, new Date(0)), data, Buffer.alloc(1024 * 3)]));
      const fds = async () => (await readdir('/proc/self/fd')).length;
      const before = await fds();
      for (let i = 0; i < 4; i++) {
        const input = await openInput(file);
        const tar = new TarReader(input.stream, input.label);
        const e = await tar.next(() => data.length);
        expect(e!.data.equals(data)).toBe(true);
        tar.destroy(); // before the end of the archive, as after an error
      }
      expect(await fds()).toBe(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
