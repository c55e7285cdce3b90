/**
 * Records of a workstation's catalog (src/sync/catalog.ts): one Hypercore entry each, compact-encoding,
 * starting with a format byte (1) and a type byte. Decoders check every count and length against fixed
 * limits and reject trailing bytes, like the wire messages (messages.ts): a catalog is signed by its
 * author, but the author may be a hostile member.
 *
 *   1 Share     vm, upto (snapshot name or empty: every snapshot), at
 *   2 Unshare   vm, at
 *   3 Map       vm, target, items: the piece of one layer's map (zero extents and 64 KiB blocks by SHA-256)
 *   4 Snapshot  vm, name, content id, parent content id, metadata, disks (digest + which Map entries)
 *   5 Head      vm, content id of the sharer's current snapshot (or none)
 *   6 Group     a group snapshot: group, name, metadata, members (vm, member snapshot name, content id)
 *
 * A Snapshot record names its map pieces by entry index (map_start, map_count): they are appended
 * before it, so a replicated catalog prefix is always self-contained. A Group record is appended after
 * the Snapshot records of every member snapshot it names (a puller still checks each one).
 *
 * A receiver older than the Group record refuses a catalog holding one (`catalog record type 6`): it
 * pulls nothing of that author until it is upgraded, and never half-understands a group.
 */
import c from 'compact-encoding';
import { NAME_RE } from '../names.js';
import { HASH_BYTES, WireError } from './messages.js';

const CATALOG_FORMAT = 1;
/** Items (zero extents and blocks) in one Map record: about 700 KiB, far below Hypercore's 15 MiB. */
export const MAX_MAP_ITEMS = 16384;
const MAX_TAGS = 256;
const MAX_DISKS = 64;
const MAX_TEXT = 64 * 1024;
const MAX_SIZE = 2 ** 53 - 1;
/** Members of one group snapshot (a group is a handful of VMs). */
export const MAX_GROUP_MEMBERS = 64;
/** The consistency values of a group snapshot (store/groups.ts GroupConsistency). */
const CONSISTENCIES = ['locks', 'paused', 'frozen', 'mixed'] as const;

export const RecordKind = { Share: 1, Unshare: 2, Map: 3, Snapshot: 4, Head: 5, Group: 6 } as const;

export type MapItem = { kind: 'zero'; offset: number; length: number } | { kind: 'block'; offset: number; length: number; sha: Buffer };

interface ShareRecord {
  kind: 'share';
  vm: string;
  upto: string | null;
  at: string;
}
interface UnshareRecord {
  kind: 'unshare';
  vm: string;
  at: string;
}
export interface MapRecord {
  kind: 'map';
  vm: string;
  target: string;
  items: MapItem[];
}
interface SnapshotDiskRecord {
  target: string;
  virtual_size: number;
  cluster_size: number;
  digest: Buffer;
  data_bytes: number;
  zero_bytes: number;
  blocks: number;
  map_start: number;
  map_count: number;
}
export interface SnapshotRecordEntry {
  kind: 'snapshot';
  vm: string;
  name: string;
  content_id: Buffer;
  parent: Buffer | null;
  parent_name: string | null;
  type: 'disk' | 'full';
  created_at: string;
  description: string | null;
  tags: string[];
  auto_created: boolean;
  auto_policy: string | null;
  disks: SnapshotDiskRecord[];
}
export interface HeadRecord {
  kind: 'head';
  vm: string;
  content_id: Buffer | null;
}

/** One member of a group snapshot: the VM as shared, its member snapshot by name and content id (pull.ts snapKey). */
interface GroupMemberEntry {
  vm: string;
  snapshot: string;
  content_id: Buffer;
}
/** A group snapshot of a shared group (docs/groups.md, "Sharing a group"). */
export interface GroupRecordEntry {
  kind: 'group';
  group: string;
  name: string;
  created_at: string;
  description: string | null;
  tags: string[];
  type: 'disk' | 'full';
  consistency: (typeof CONSISTENCIES)[number];
  pause_ms: number | null;
  auto_created: boolean;
  auto_policy: string | null;
  /** Sorted by vm, each vm once. */
  members: GroupMemberEntry[];
}

export type CatalogRecord = ShareRecord | UnshareRecord | MapRecord | SnapshotRecordEntry | HeadRecord | GroupRecordEntry;

const KIND_BYTE: Record<CatalogRecord['kind'], number> = {
  share: RecordKind.Share,
  unshare: RecordKind.Unshare,
  map: RecordKind.Map,
  snapshot: RecordKind.Snapshot,
  head: RecordKind.Head,
  group: RecordKind.Group,
};

function check(ok: boolean, what: string): void {
  if (!ok) throw new WireError(`catalog ${what}`);
}

const optString: c.Encoding<string | null> = {
  preencode(state, v) {
    c.string.preencode(state, v ?? '');
  },
  encode(state, v) {
    c.string.encode(state, v ?? '');
  },
  decode(state) {
    const s = c.string.decode(state);
    return s === '' ? null : s;
  },
};

function name(state: c.State, what: string): string {
  const s = c.string.decode(state);
  check(NAME_RE.test(s), what);
  return s;
}

function text(state: c.State, what: string): string {
  const s = c.string.decode(state);
  check(s.length <= MAX_TEXT, what);
  return s;
}

function size(state: c.State, what: string): number {
  const n = c.uint.decode(state);
  check(Number.isSafeInteger(n) && n >= 0 && n <= MAX_SIZE, what);
  return n;
}

/** created_at, description and tags, as Snapshot and Group records hold them. */
function timeAndNotes(state: c.State): { created_at: string; description: string | null; tags: string[] } {
  const created_at = text(state, 'time');
  check(!Number.isNaN(Date.parse(created_at)), 'time');
  const description = optString.decode(state);
  check(description === null || description.length <= MAX_TEXT, 'description');
  const nt = c.uint.decode(state);
  check(nt <= MAX_TAGS, 'tag count');
  const tags: string[] = [];
  for (let i = 0; i < nt; i++) tags.push(text(state, 'tag'));
  return { created_at, description, tags };
}

function optHash(state: c.State): Buffer | null {
  const b = c.optionalBuffer.decode(state);
  check(b === null || b.length === HASH_BYTES, 'hash length');
  return b;
}

const catalogRecord: c.Encoding<CatalogRecord> = {
  preencode(state, r) {
    state.end += 2;
    switch (r.kind) {
      case 'share':
        c.string.preencode(state, r.vm);
        optString.preencode(state, r.upto);
        c.string.preencode(state, r.at);
        break;
      case 'unshare':
        c.string.preencode(state, r.vm);
        c.string.preencode(state, r.at);
        break;
      case 'map':
        c.string.preencode(state, r.vm);
        c.string.preencode(state, r.target);
        c.uint.preencode(state, r.items.length);
        for (const it of r.items) {
          state.end += 1;
          c.uint.preencode(state, it.offset);
          c.uint.preencode(state, it.length);
          if (it.kind === 'block') state.end += HASH_BYTES;
        }
        break;
      case 'snapshot':
        c.string.preencode(state, r.vm);
        c.string.preencode(state, r.name);
        state.end += HASH_BYTES;
        c.optionalBuffer.preencode(state, r.parent);
        optString.preencode(state, r.parent_name);
        c.string.preencode(state, r.type);
        c.string.preencode(state, r.created_at);
        optString.preencode(state, r.description);
        c.uint.preencode(state, r.tags.length);
        for (const t of r.tags) c.string.preencode(state, t);
        state.end += 1;
        optString.preencode(state, r.auto_policy);
        c.uint.preencode(state, r.disks.length);
        for (const d of r.disks) {
          c.string.preencode(state, d.target);
          for (const n of [d.virtual_size, d.cluster_size, d.data_bytes, d.zero_bytes, d.blocks, d.map_start, d.map_count]) c.uint.preencode(state, n);
          state.end += HASH_BYTES;
        }
        break;
      case 'head':
        c.string.preencode(state, r.vm);
        c.optionalBuffer.preencode(state, r.content_id);
        break;
      case 'group':
        c.string.preencode(state, r.group);
        c.string.preencode(state, r.name);
        c.string.preencode(state, r.created_at);
        optString.preencode(state, r.description);
        c.uint.preencode(state, r.tags.length);
        for (const t of r.tags) c.string.preencode(state, t);
        c.string.preencode(state, r.type);
        c.string.preencode(state, r.consistency);
        c.uint.preencode(state, r.pause_ms === null ? 0 : r.pause_ms + 1);
        state.end += 1;
        optString.preencode(state, r.auto_policy);
        c.uint.preencode(state, r.members.length);
        for (const m of r.members) {
          c.string.preencode(state, m.vm);
          c.string.preencode(state, m.snapshot);
          state.end += HASH_BYTES;
        }
        break;
    }
  },
  encode(state, r) {
    c.uint8.encode(state, CATALOG_FORMAT);
    c.uint8.encode(state, KIND_BYTE[r.kind]);
    switch (r.kind) {
      case 'share':
        c.string.encode(state, r.vm);
        optString.encode(state, r.upto);
        c.string.encode(state, r.at);
        break;
      case 'unshare':
        c.string.encode(state, r.vm);
        c.string.encode(state, r.at);
        break;
      case 'map':
        c.string.encode(state, r.vm);
        c.string.encode(state, r.target);
        c.uint.encode(state, r.items.length);
        for (const it of r.items) {
          c.uint8.encode(state, it.kind === 'zero' ? 0 : 1);
          c.uint.encode(state, it.offset);
          c.uint.encode(state, it.length);
          if (it.kind === 'block') c.fixed32.encode(state, it.sha);
        }
        break;
      case 'snapshot':
        c.string.encode(state, r.vm);
        c.string.encode(state, r.name);
        c.fixed32.encode(state, r.content_id);
        c.optionalBuffer.encode(state, r.parent);
        optString.encode(state, r.parent_name);
        c.string.encode(state, r.type);
        c.string.encode(state, r.created_at);
        optString.encode(state, r.description);
        c.uint.encode(state, r.tags.length);
        for (const t of r.tags) c.string.encode(state, t);
        c.uint8.encode(state, r.auto_created ? 1 : 0);
        optString.encode(state, r.auto_policy);
        c.uint.encode(state, r.disks.length);
        for (const d of r.disks) {
          c.string.encode(state, d.target);
          for (const n of [d.virtual_size, d.cluster_size, d.data_bytes, d.zero_bytes, d.blocks, d.map_start, d.map_count]) c.uint.encode(state, n);
          c.fixed32.encode(state, d.digest);
        }
        break;
      case 'head':
        c.string.encode(state, r.vm);
        c.optionalBuffer.encode(state, r.content_id);
        break;
      case 'group':
        c.string.encode(state, r.group);
        c.string.encode(state, r.name);
        c.string.encode(state, r.created_at);
        optString.encode(state, r.description);
        c.uint.encode(state, r.tags.length);
        for (const t of r.tags) c.string.encode(state, t);
        c.string.encode(state, r.type);
        c.string.encode(state, r.consistency);
        c.uint.encode(state, r.pause_ms === null ? 0 : r.pause_ms + 1);
        c.uint8.encode(state, r.auto_created ? 1 : 0);
        optString.encode(state, r.auto_policy);
        c.uint.encode(state, r.members.length);
        for (const m of r.members) {
          c.string.encode(state, m.vm);
          c.string.encode(state, m.snapshot);
          c.fixed32.encode(state, m.content_id);
        }
        break;
    }
  },
  decode(state): CatalogRecord {
    check(c.uint8.decode(state) === CATALOG_FORMAT, 'format');
    const kind = c.uint8.decode(state);
    switch (kind) {
      case RecordKind.Share: {
        const vm = name(state, 'vm name');
        const upto = optString.decode(state);
        check(upto === null || NAME_RE.test(upto), 'snapshot name');
        return { kind: 'share', vm, upto, at: text(state, 'time') };
      }
      case RecordKind.Unshare:
        return { kind: 'unshare', vm: name(state, 'vm name'), at: text(state, 'time') };
      case RecordKind.Map: {
        const vm = name(state, 'vm name');
        const target = name(state, 'disk target');
        const n = c.uint.decode(state);
        check(n >= 1 && n <= MAX_MAP_ITEMS, 'map item count');
        const items: MapItem[] = [];
        for (let i = 0; i < n; i++) {
          const k = c.uint8.decode(state);
          check(k === 0 || k === 1, 'map item kind');
          const offset = size(state, 'offset');
          const length = size(state, 'length');
          check(length >= 1, 'length');
          if (k === 0) items.push({ kind: 'zero', offset, length });
          else {
            check(length <= 64 * 1024, 'block length');
            items.push({ kind: 'block', offset, length, sha: c.fixed32.decode(state) });
          }
        }
        return { kind: 'map', vm, target, items };
      }
      case RecordKind.Snapshot: {
        const vm = name(state, 'vm name');
        const sname = name(state, 'snapshot name');
        const content_id = c.fixed32.decode(state);
        const parent = optHash(state);
        const parent_name = optString.decode(state);
        check(parent_name === null || NAME_RE.test(parent_name), 'parent name');
        check((parent === null) === (parent_name === null), 'parent');
        const type = c.string.decode(state);
        check(type === 'disk' || type === 'full', 'snapshot type');
        const { created_at, description, tags } = timeAndNotes(state);
        const auto_created = c.uint8.decode(state) === 1;
        const auto_policy = optString.decode(state);
        const nd = c.uint.decode(state);
        check(nd >= 1 && nd <= MAX_DISKS, 'disk count');
        const disks: SnapshotDiskRecord[] = [];
        for (let i = 0; i < nd; i++) {
          const target = name(state, 'disk target');
          const [virtual_size, cluster_size, data_bytes, zero_bytes, blocks, map_start, map_count] = [
            'virtual size',
            'cluster size',
            'data bytes',
            'zero bytes',
            'blocks',
            'map start',
            'map count',
          ].map((w) => size(state, w)) as [number, number, number, number, number, number, number];
          check(cluster_size >= 512 && cluster_size <= 2 * 1024 * 1024 && (cluster_size & (cluster_size - 1)) === 0, 'cluster size');
          check(virtual_size % 512 === 0, 'virtual size');
          disks.push({ target, virtual_size, cluster_size, data_bytes, zero_bytes, blocks, map_start, map_count, digest: c.fixed32.decode(state) });
        }
        return {
          kind: 'snapshot',
          vm,
          name: sname,
          content_id,
          parent,
          parent_name,
          type: type as 'disk' | 'full',
          created_at,
          description,
          tags,
          auto_created,
          auto_policy,
          disks,
        };
      }
      case RecordKind.Head:
        return { kind: 'head', vm: name(state, 'vm name'), content_id: optHash(state) };
      case RecordKind.Group:
        return decodeGroup(state);
      default:
        throw new WireError(`catalog record type ${kind}`);
    }
  },
};

function decodeGroup(state: c.State): GroupRecordEntry {
  const group = name(state, 'group name');
  const gname = name(state, 'group snapshot name');
  const { created_at, description, tags } = timeAndNotes(state);
  const type = c.string.decode(state);
  check(type === 'disk' || type === 'full', 'group snapshot type');
  const consistency = c.string.decode(state);
  check((CONSISTENCIES as readonly string[]).includes(consistency), 'group consistency');
  const pause = size(state, 'pause');
  const auto_created = c.uint8.decode(state) === 1;
  const auto_policy = optString.decode(state);
  check(auto_policy === null || NAME_RE.test(auto_policy), 'policy name');
  const nm = c.uint.decode(state);
  check(nm >= 1 && nm <= MAX_GROUP_MEMBERS, 'group member count');
  const members: GroupMemberEntry[] = [];
  for (let i = 0; i < nm; i++) {
    const vm = name(state, 'vm name');
    // Sorted and distinct: a member named twice could tag one snapshot for two places.
    check(i === 0 || members[i - 1]!.vm < vm, 'group members order');
    members.push({ vm, snapshot: name(state, 'snapshot name'), content_id: c.fixed32.decode(state) });
  }
  return {
    kind: 'group',
    group,
    name: gname,
    created_at,
    description,
    tags,
    type: type as 'disk' | 'full',
    consistency: consistency as GroupRecordEntry['consistency'],
    pause_ms: pause === 0 ? null : pause - 1,
    auto_created,
    auto_policy,
    members,
  };
}

export function encodeRecord(r: CatalogRecord): Buffer {
  return c.encode(catalogRecord, r);
}

export function decodeRecord(buf: Buffer): CatalogRecord {
  const state = c.state(0, buf.length, buf);
  let r: CatalogRecord;
  try {
    r = catalogRecord.decode(state);
  } catch (err) {
    if (err instanceof WireError) throw err;
    throw new WireError(`catalog record: ${(err as Error).message}`);
  }
  if (state.start !== state.end) throw new WireError('catalog record: trailing bytes');
  return r;
}
