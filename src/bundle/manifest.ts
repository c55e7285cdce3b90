/**
 * Encoding and decoding of the bundle's header, meta and seal (layout in format.ts). Decoders take
 * bytes from a file we do not trust: every field is checked for type, range and consistency before
 * anything uses it, and every failure is a BUNDLE_CORRUPT error that says which field is wrong. (The
 * meta and seal reach these decoders only after their seal verified, so in practice a failure here
 * means a bundle written by a broken or hostile tool, not a damaged file.)
 */
import { CloneboxError } from '../errors.js';
import { NAME_RE } from '../names.js';
import { sha256 } from './crypto.js';
import {
  BLOCK_SIZE,
  BUNDLE_MAGIC,
  BUNDLE_VERSION,
  BUNDLE_VERSION_GROUP,
  FLAG_ENCRYPTED,
  HEADER_SIZE,
  KeyKind,
  MAX_CHAINS,
  MAX_DISKS,
  MAX_GROUP_SNAPSHOTS,
  MAX_KDF_MEMLIMIT,
  MAX_KDF_OPSLIMIT,
  MAX_PACKS,
  MAX_SNAPSHOTS,
  type Meta,
  type MetaChain,
  type MetaGroup,
  type MetaGroupSnapshot,
  type MetaLayer,
  type MetaSnapshot,
  type Seal,
  type SealLayer,
} from './format.js';

export interface BundleHeader {
  version: number;
  encrypted: boolean;
  bundleId: Buffer;
  keyKind: KeyKind;
  opslimit: number;
  memlimit: number;
  salt: Buffer;
  keyCheck: Buffer;
  /** SHA-256 of bytes 0..103: bound into every sealed entry. */
  checksum: Buffer;
}

function corrupt(what: string, file: string): CloneboxError {
  return new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or was modified: ${what}, ${file}`, {
    hint: 'the file changed after export; get an intact copy',
  });
}

/** Bytes 0..71: what the key check covers. */
export function headerPrefix(h: Omit<BundleHeader, 'keyCheck' | 'checksum'>): Buffer {
  const b = Buffer.alloc(72);
  BUNDLE_MAGIC.copy(b, 0);
  b.writeUInt32BE(h.version, 16);
  b.writeUInt32BE(h.encrypted ? FLAG_ENCRYPTED : 0, 20);
  h.bundleId.copy(b, 24);
  b.writeUInt8(h.keyKind, 40);
  b.writeUInt32BE(h.opslimit, 44);
  b.writeBigUInt64BE(BigInt(h.memlimit), 48);
  h.salt.copy(b, 56);
  return b;
}

/** The whole header; fills in `checksum`. */
export function encodeHeader(prefix: Buffer, keyCheck: Buffer): { bytes: Buffer; checksum: Buffer } {
  const b = Buffer.alloc(HEADER_SIZE);
  prefix.copy(b, 0);
  keyCheck.copy(b, 72);
  const checksum = sha256(b.subarray(0, 104));
  checksum.copy(b, 104);
  return { bytes: b, checksum };
}

export function decodeHeader(b: Buffer, file: string): BundleHeader {
  if (b.length < 16 || !b.subarray(0, 16).equals(BUNDLE_MAGIC)) {
    throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (no bundle header), ${file}`);
  }
  if (b.length !== HEADER_SIZE) throw corrupt(`header is ${b.length} bytes, not ${HEADER_SIZE}`, file);
  const checksum = b.subarray(104, 136);
  if (!sha256(b.subarray(0, 104)).equals(checksum)) throw corrupt('header checksum does not match', file);
  const version = b.readUInt32BE(16);
  if (version !== BUNDLE_VERSION && version !== BUNDLE_VERSION_GROUP) {
    throw new CloneboxError(
      'BUNDLE_UNSUPPORTED',
      `bundle format version ${version} is not supported (this clonebox reads versions ${BUNDLE_VERSION} and ${BUNDLE_VERSION_GROUP}), ${file}`,
      {
        hint: 'import it with the clonebox version that wrote it, or a newer one',
      },
    );
  }
  const flags = b.readUInt32BE(20);
  if ((flags & ~FLAG_ENCRYPTED) !== 0) throw corrupt(`unknown header flags 0x${flags.toString(16)}`, file);
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
  const keyKind = b.readUInt8(40) as KeyKind;
  if (b.readUIntBE(41, 3) !== 0) throw corrupt('reserved header bytes are not zero', file);
  const opslimit = b.readUInt32BE(44);
  const memBig = b.readBigUInt64BE(48);
  const salt = Buffer.from(b.subarray(56, 72));
  const keyCheck = Buffer.from(b.subarray(72, 104));
  if (!encrypted) {
    if (keyKind !== KeyKind.None || opslimit !== 0 || memBig !== 0n || salt.some((x) => x !== 0) || keyCheck.some((x) => x !== 0)) {
      throw corrupt('a plain bundle header carries key parameters', file);
    }
  } else if (keyKind === KeyKind.Passphrase) {
    // A hostile header could ask for terabytes of memory or hours of work before we can say "wrong key".
    if (opslimit < 1 || opslimit > MAX_KDF_OPSLIMIT) throw corrupt(`Argon2id opslimit ${opslimit} is outside 1..${MAX_KDF_OPSLIMIT}`, file);
    if (memBig < 8192n || memBig > BigInt(MAX_KDF_MEMLIMIT)) throw corrupt(`Argon2id memlimit ${memBig} is outside 8 KiB..${MAX_KDF_MEMLIMIT}`, file);
  } else if (keyKind === KeyKind.KeyFile) {
    if (opslimit !== 0 || memBig !== 0n) throw corrupt('a key-file bundle header carries passphrase parameters', file);
  } else {
    throw corrupt(`unknown key kind ${keyKind}`, file);
  }
  return {
    version,
    encrypted,
    bundleId: Buffer.from(b.subarray(24, 40)),
    keyKind,
    opslimit,
    memlimit: Number(memBig),
    salt,
    keyCheck,
    checksum: Buffer.from(checksum),
  };
}

// ---------------------------------------------------------------------------------------------- JSON

const HEX64 = /^[0-9a-f]{64}$/;
/** Disk targets: vda, sdb, hdc, vdaa... Never anything that could be a path. */
const TARGET_RE = /^[a-z][a-z0-9]{0,31}$/;

type Obj = Record<string, unknown>;

class Check {
  constructor(
    private readonly file: string,
    private readonly what: string,
  ) {}
  fail(msg: string): never {
    throw corrupt(`${this.what}: ${msg}`, this.file);
  }
  obj(v: unknown, at: string): Obj {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail(`${at} is not an object`);
    return v as Obj;
  }
  arr(v: unknown, at: string, max: number): unknown[] {
    if (!Array.isArray(v)) this.fail(`${at} is not an array`);
    if (v.length > max) this.fail(`${at} has ${v.length} items (at most ${max})`);
    return v;
  }
  str(v: unknown, at: string, max = 4096): string {
    if (typeof v !== 'string' || v.length > max) this.fail(`${at} is not a string of at most ${max} characters`);
    return v;
  }
  strOrNull(v: unknown, at: string, max = 65536): string | null {
    return v === null ? null : this.str(v, at, max);
  }
  int(v: unknown, at: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) this.fail(`${at} is not an integer in ${min}..${max}`);
    return v;
  }
  bool(v: unknown, at: string): boolean {
    if (typeof v !== 'boolean') this.fail(`${at} is not a boolean`);
    return v;
  }
  name(v: unknown, at: string): string {
    const s = this.str(v, at, 128);
    if (!NAME_RE.test(s)) this.fail(`${at} ${JSON.stringify(s)} is not a valid name`);
    return s;
  }
  time(v: unknown, at: string): string {
    const s = this.str(v, at, 64);
    if (Number.isNaN(Date.parse(s))) this.fail(`${at} is not a time`);
    return s;
  }
  timeOrNull(v: unknown, at: string): string | null {
    return v === null ? null : this.time(v, at);
  }
  hex64(v: unknown, at: string): string {
    const s = this.str(v, at, 64);
    if (!HEX64.test(s)) this.fail(`${at} is not 64 hex digits`);
    return s;
  }
  json(bytes: Buffer): unknown {
    try {
      return JSON.parse(bytes.toString('utf8'));
    } catch {
      this.fail('not valid JSON');
    }
  }
}

export function encodeJson(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), 'utf8');
}

/**
 * The meta as it goes on the wire: version 1 names its one chain with `vm` and `since` (as every
 * bundle before groups did, so older readers read it); version 2 carries `group` and `chains`.
 */
export function encodeMeta(m: Meta): Buffer {
  const common = { format: m.format, version: m.version, created_at: m.created_at };
  const rest = { block_size: m.block_size, block_hash: m.block_hash, compression: m.compression };
  if (m.version === 1) {
    const c = m.chains[0]!;
    return encodeJson({ ...common, vm: { name: c.vm }, ...rest, since: c.since, snapshots: m.snapshots, layers: m.layers });
  }
  return encodeJson({
    ...common,
    ...rest,
    group: m.group,
    chains: m.chains.map((c) => ({ vm: c.vm, snapshots: c.count })),
    snapshots: m.snapshots,
    layers: m.layers,
  });
}

/** `version`: the header's; the meta must say the same. */
export function decodeMeta(bytes: Buffer, file: string, version: number = BUNDLE_VERSION): Meta {
  const c = new Check(file, 'meta');
  const m = c.obj(c.json(bytes), 'meta');
  if (m.format !== 'clonebox-bundle' || m.version !== version) c.fail(`format or version is not clonebox-bundle ${version}`);
  const block_size = c.int(m.block_size, 'block_size', 1, BLOCK_SIZE);
  if (block_size !== BLOCK_SIZE) c.fail(`block_size ${block_size} is not ${BLOCK_SIZE}`);
  if (m.block_hash !== 'sha256' && m.block_hash !== 'blake2b256-keyed-sha256') c.fail('unknown block_hash');
  const comp = c.obj(m.compression, 'compression');
  if (comp.codec !== 'zstd') c.fail('unknown compression codec');
  const level = c.int(comp.level, 'compression.level', -131072, 22);
  const snapsRaw = c.arr(m.snapshots, 'snapshots', MAX_SNAPSHOTS);
  if (snapsRaw.length === 0) c.fail('no snapshots');
  let chains: MetaChain[];
  let group: MetaGroup | null = null;
  if (version === BUNDLE_VERSION) {
    const vm = c.obj(m.vm, 'vm');
    let since: MetaChain['since'] = null;
    if (m.since !== null) {
      const s = c.obj(m.since, 'since');
      since = { name: c.name(s.name, 'since.name'), content_id: c.hex64(s.content_id, 'since.content_id') };
    }
    chains = [{ vm: c.name(vm.name, 'vm.name'), since, first: 0, count: snapsRaw.length }];
  } else {
    // Counts are checked against the snapshots actually there before anything is sized by them.
    const chainsRaw = c.arr(m.chains, 'chains', MAX_CHAINS);
    if (chainsRaw.length === 0) c.fail('no chains');
    chains = [];
    const vms = new Set<string>();
    let first = 0;
    for (const [i, raw] of chainsRaw.entries()) {
      const o = c.obj(raw, `chains[${i}]`);
      const vm = c.name(o.vm, `chains[${i}].vm`);
      if (vms.has(vm)) c.fail(`chains[${i}].vm ${vm} appears twice`);
      vms.add(vm);
      const count = c.int(o.snapshots, `chains[${i}].snapshots`, 1, snapsRaw.length - first);
      chains.push({ vm, since: null, first, count });
      first += count;
    }
    if (first !== snapsRaw.length) c.fail(`the chains hold ${first} snapshots, the meta lists ${snapsRaw.length}`);
    group = decodeGroup(c, m.group, chains, snapsRaw);
  }
  const snapshots: MetaSnapshot[] = [];
  for (const chain of chains) {
    const names = new Set<string>();
    const since = chain.since;
    for (let i = chain.first; i < chain.first + chain.count; i++) {
      const at = `snapshots[${i}]`;
      const s = c.obj(snapsRaw[i], at);
      const name = c.name(s.name, `${at}.name`);
      if (names.has(name)) c.fail(`${at}.name ${name} appears twice in VM ${chain.vm}'s chain`);
      if (since && name === since.name) c.fail(`${at}.name ${name} is the base's name`);
      names.add(name);
      const parent = s.parent === null ? null : c.name(s.parent, `${at}.parent`);
      const want = i === chain.first ? (since ? since.name : null) : snapshots[i - 1]!.name;
      if (parent !== want) c.fail(`${at}.parent is ${parent}, expected ${want}`);
      if (s.type !== 'disk' && s.type !== 'full') c.fail(`${at}.type is not disk or full`);
      const tagsRaw = c.arr(s.tags, `${at}.tags`, 1024);
      snapshots.push({
        name,
        parent,
        type: s.type as 'disk' | 'full',
        created_at: c.time(s.created_at, `${at}.created_at`),
        description: c.strOrNull(s.description, `${at}.description`),
        tags: tagsRaw.map((t, j) => c.str(t, `${at}.tags[${j}]`, 256)),
        auto_created: c.bool(s.auto_created, `${at}.auto_created`),
        auto_policy: c.strOrNull(s.auto_policy, `${at}.auto_policy`, 256),
        expires_at: c.timeOrNull(s.expires_at, `${at}.expires_at`),
        content_id: s.content_id === null ? null : c.hex64(s.content_id, `${at}.content_id`),
      });
    }
  }
  if (group) {
    // Every group snapshot names, for every member, a snapshot of that member's chain.
    for (const [i, g] of group.snapshots.entries()) {
      for (const chain of chains) {
        const want = g.members[chain.vm];
        if (!snapshots.slice(chain.first, chain.first + chain.count).some((s) => s.name === want)) {
          c.fail(`group.snapshots[${i}] names snapshot ${want} of VM ${chain.vm}, which the bundle does not hold`);
        }
      }
    }
  }
  const layersRaw = c.arr(m.layers, 'layers', MAX_SNAPSHOTS * MAX_DISKS);
  const layers: MetaLayer[] = [];
  let targets: string[] | null = null;
  for (let si = 0, li = 0; si < snapshots.length; si++) {
    // Each snapshot's layers are contiguous, in snapshot order, and every snapshot of a chain has the same disks.
    if (chains.some((ch) => ch.first === si)) targets = null;
    const mine: string[] = [];
    while (li < layersRaw.length) {
      const at = `layers[${li}]`;
      const l = c.obj(layersRaw[li], at);
      const snapshot = c.int(l.snapshot, `${at}.snapshot`, 0, snapshots.length - 1);
      if (snapshot !== si) break;
      const target = c.str(l.target, `${at}.target`, 32);
      if (!TARGET_RE.test(target)) c.fail(`${at}.target ${JSON.stringify(target)} is not a disk name`);
      if (mine.includes(target)) c.fail(`${at}.target ${target} appears twice in one snapshot`);
      mine.push(target);
      const cluster_size = c.int(l.cluster_size, `${at}.cluster_size`, 512, 2 * 1024 * 1024);
      if ((cluster_size & (cluster_size - 1)) !== 0) c.fail(`${at}.cluster_size is not a power of two`);
      const virtual_size = c.int(l.virtual_size, `${at}.virtual_size`, 0, 2 ** 53 - 1);
      if (virtual_size % 512 !== 0) c.fail(`${at}.virtual_size is not a multiple of 512`);
      layers.push({ snapshot, target, virtual_size, cluster_size });
      li++;
      if (mine.length > MAX_DISKS) c.fail(`snapshot ${si} has more than ${MAX_DISKS} disks`);
    }
    if (mine.length === 0) c.fail(`snapshot ${snapshots[si]!.name} has no layers`);
    const sorted = [...mine].sort();
    if (targets === null) targets = sorted;
    else if (targets.join(',') !== sorted.join(',')) c.fail(`snapshot ${snapshots[si]!.name} has other disks than the first of its chain`);
    if (si === snapshots.length - 1 && li !== layersRaw.length) c.fail('layers belong to no snapshot or are out of order');
  }
  return {
    format: 'clonebox-bundle',
    version: version === BUNDLE_VERSION ? 1 : 2,
    created_at: c.time(m.created_at, 'created_at'),
    block_size,
    block_hash: m.block_hash as Meta['block_hash'],
    compression: { codec: 'zstd', level },
    chains,
    group,
    snapshots,
    layers,
  };
}

const CONSISTENCY: string[] = ['locks', 'paused', 'frozen', 'mixed'];

/** The group part of a version 2 meta: its members are exactly the chains' VMs. */
function decodeGroup(c: Check, raw: unknown, chains: MetaChain[], snapsRaw: unknown[]): MetaGroup {
  const g = c.obj(raw, 'group');
  const name = c.name(g.name, 'group.name');
  const membersRaw = c.arr(g.members, 'group.members', MAX_CHAINS);
  const members = membersRaw.map((v, i) => c.name(v, `group.members[${i}]`));
  const chainVms = chains.map((ch) => ch.vm);
  if ([...members].sort().join(',') !== [...chainVms].sort().join(',') || new Set(members).size !== members.length) {
    c.fail(`group.members (${members.join(', ')}) are not the chains' VMs (${chainVms.join(', ')})`);
  }
  // At most one group snapshot per snapshot of a chain: a bound that follows from the data, checked before use.
  const snapsMax = Math.min(MAX_GROUP_SNAPSHOTS, snapsRaw.length);
  const gsRaw = c.arr(g.snapshots, 'group.snapshots', snapsMax);
  const seen = new Set<string>();
  const snapshots = gsRaw.map((r, i) => {
    const at = `group.snapshots[${i}]`;
    const o = c.obj(r, at);
    const gname = c.name(o.name, `${at}.name`);
    if (seen.has(gname)) c.fail(`${at}.name ${gname} appears twice`);
    seen.add(gname);
    const mo = c.obj(o.members, `${at}.members`);
    const keys = Object.keys(mo);
    if (keys.length !== members.length || !members.every((v) => Object.hasOwn(mo, v))) c.fail(`${at}.members does not name every member once`);
    const ms: Record<string, string> = {};
    for (const v of members) ms[v] = c.name(mo[v], `${at}.members.${v}`);
    if (o.type !== 'disk' && o.type !== 'full') c.fail(`${at}.type is not disk or full`);
    if (!CONSISTENCY.includes(o.consistency as string)) c.fail(`${at}.consistency is not one of ${CONSISTENCY.join(', ')}`);
    return {
      name: gname,
      created_at: c.time(o.created_at, `${at}.created_at`),
      description: c.strOrNull(o.description, `${at}.description`),
      tags: c.arr(o.tags, `${at}.tags`, 1024).map((t, j) => c.str(t, `${at}.tags[${j}]`, 256)),
      type: o.type as 'disk' | 'full',
      consistency: o.consistency as MetaGroupSnapshot['consistency'],
      pause_ms: o.pause_ms === null ? null : c.int(o.pause_ms, `${at}.pause_ms`),
      auto_created: c.bool(o.auto_created, `${at}.auto_created`),
      auto_policy: c.strOrNull(o.auto_policy, `${at}.auto_policy`, 256),
      members: ms,
    };
  });
  return { name, description: c.strOrNull(g.description, 'group.description'), members, snapshots };
}

export function decodeSeal(bytes: Buffer, meta: Meta, file: string): Seal {
  const c = new Check(file, 'seal');
  const s = c.obj(c.json(bytes), 'seal');
  const packs = c.int(s.packs, 'packs', 0, MAX_PACKS);
  const snaps = c.arr(s.snapshots, 'snapshots', MAX_SNAPSHOTS);
  if (snaps.length !== meta.snapshots.length) c.fail('snapshot count differs from the meta');
  const snapshots = snaps.map((raw, i) => {
    const o = c.obj(raw, `snapshots[${i}]`);
    const name = c.name(o.name, `snapshots[${i}].name`);
    if (name !== meta.snapshots[i]!.name) c.fail(`snapshots[${i}] is ${name}, the meta says ${meta.snapshots[i]!.name}`);
    return { name, content_id: c.hex64(o.content_id, `snapshots[${i}].content_id`) };
  });
  const ls = c.arr(s.layers, 'layers', meta.layers.length);
  if (ls.length !== meta.layers.length) c.fail('layer count differs from the meta');
  const layers: SealLayer[] = ls.map((raw, i) => {
    const o = c.obj(raw, `layers[${i}]`);
    return {
      digest: c.hex64(o.digest, `layers[${i}].digest`),
      data_bytes: c.int(o.data_bytes, `layers[${i}].data_bytes`),
      zero_bytes: c.int(o.zero_bytes, `layers[${i}].zero_bytes`),
      blocks: c.int(o.blocks, `layers[${i}].blocks`),
    };
  });
  const t = c.obj(s.totals, 'totals');
  const totals = {
    logical_bytes: c.int(t.logical_bytes, 'totals.logical_bytes'),
    unique_bytes: c.int(t.unique_bytes, 'totals.unique_bytes'),
    stored_bytes: c.int(t.stored_bytes, 'totals.stored_bytes'),
    blocks: c.int(t.blocks, 'totals.blocks'),
    unique_blocks: c.int(t.unique_blocks, 'totals.unique_blocks'),
    frames: c.int(t.frames, 'totals.frames'),
  };
  return { packs, snapshots, layers, totals };
}
