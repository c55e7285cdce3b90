/**
 * The clonebox bundle format, versions 1 and 2: constants, limits and the shapes of every part.
 * Version 1 holds one VM's chain; version 2 (a group bundle) holds the chains of several VMs and the
 * group they belong to, with one block numbering (one dedup index) for all of them. The two differ only
 * in the header's version field and the meta; packs and seal are the same. A writer uses version 1 for
 * a single VM, so that older readers still read what they can.
 * docs/bundle-format.md is the full description (someone could re-implement it from there); this file
 * is the same layout next to the code that writes and reads it.
 *
 * A bundle is a POSIX tar archive (`tar -tf` lists it) of these regular-file entries, in this order:
 *
 *   header            136 bytes, never encrypted (what a reader needs to derive the key)
 *   meta              sealed JSON: the VM (v1) or the group and its member VMs' chains (v2), the
 *                     snapshots with their metadata, the layers' parameters
 *   pack-00000000     sealed binary: records (map pieces) and frames of compressed blocks
 *   pack-00000001     ...
 *   seal              sealed JSON: pack count, content ids, per-layer digests and totals
 *
 * followed by the tar end-of-archive marker. Packs come as the exporter produces them and the seal last,
 * so an exporter streams (it never holds more than one pack) and an importer can write layers while it
 * reads (it never holds more than one pack either); the seal, verified before anything becomes visible,
 * proves that nothing was cut off, reordered or spliced in.
 *
 * Header (big-endian):
 *
 *   off  size  field
 *     0    16  magic "clonebox-bundle\0"
 *    16     4  version (1, or 2 for a group bundle)
 *    20     4  flags: bit 0 = encrypted; other bits must be zero
 *    24    16  bundle id (random)
 *    40     1  key kind: 0 none, 1 passphrase (Argon2id v1.3), 2 key file (32 raw bytes)
 *    41     3  zero
 *    44     4  Argon2id opslimit (0 unless key kind 1)
 *    48     8  Argon2id memlimit in bytes (0 unless key kind 1)
 *    56    16  Argon2id salt (zero unless key kind 1)
 *    72    32  key check: BLAKE2b-256 keyed with the master key over bytes 0..71 (zero when not encrypted)
 *   104    32  checksum: SHA-256 of bytes 0..103
 *
 * Sealed entry (meta, packs, seal), with AD = header checksum (32) || kind (u8) || index (u32):
 *
 *   encrypted:  nonce (24, random) || XChaCha20-Poly1305 ciphertext || tag (16), key K_enc, AD as above
 *   plain:      payload || SHA-256(AD || payload) (32)
 *
 * Pack payload: a sequence of records, each starting with a type byte (see RecordType below).
 */

export const BUNDLE_MAGIC = Buffer.from('clonebox-bundle\0', 'latin1');
export const BUNDLE_VERSION = 1;
/** The version of a group bundle (several VMs' chains and the group). */
export const BUNDLE_VERSION_GROUP = 2;
export const HEADER_SIZE = 136;

export const FLAG_ENCRYPTED = 1;

export const KeyKind = { None: 0, Passphrase: 1, KeyFile: 2 } as const;
export type KeyKind = (typeof KeyKind)[keyof typeof KeyKind];

/** Entry kinds, as bound into each sealed entry's associated data. */
export const EntryKind = { Meta: 1, Pack: 2, Seal: 3 } as const;
export type EntryKind = (typeof EntryKind)[keyof typeof EntryKind];

export const ENTRY_HEADER = 'header';
export const ENTRY_META = 'meta';
export const ENTRY_SEAL = 'seal';
export function packEntryName(index: number): string {
  return `pack-${String(index).padStart(8, '0')}`;
}

export { Codec, FRAME_TARGET } from '../content/codec.js';
/**
 * Block (the unit of deduplication, BLOCK_SIZE), frame (the unit of compression, at most FRAME_TARGET
 * raw bytes) and the frame codecs are content addressing, shared with sync: src/content/ defines them.
 */
export { BLOCK_SIZE } from '../content/digest.js';

/** Pack: the unit of sealing and of tar entries. A pack is closed once its payload reaches this. */
export const PACK_TARGET = 8 * 1024 * 1024;

// Limits a reader enforces before it allocates (a writer stays far below them).
export const MAX_META_BYTES = 16 * 1024 * 1024;
export const MAX_SEAL_BYTES = 64 * 1024 * 1024;
/** Largest pack entry accepted: a full pack plus one frame and its records, with room to spare. */
export const MAX_PACK_BYTES = 64 * 1024 * 1024;
/** Largest raw size of one frame accepted. */
export const MAX_FRAME_RAW = 16 * 1024 * 1024;
export const MAX_FRAME_BLOCKS = MAX_FRAME_RAW / 512;
export const MAX_PACKS = 99_999_999;
export const MAX_SNAPSHOTS = 100_000;
export const MAX_DISKS = 64;
/** Member VMs (chains) in a group bundle, and group snapshots it names. */
export const MAX_CHAINS = 256;
export const MAX_GROUP_SNAPSHOTS = 100_000;
/** Argon2id parameters a reader accepts: beyond this a hostile header could exhaust memory or time. */
export const MAX_KDF_OPSLIMIT = 20;
export const MAX_KDF_MEMLIMIT = 256 * 1024 * 1024;

/** Argon2id parameters used by the writer (libsodium's "interactive" memory, one more pass). */
export const KDF_OPSLIMIT = 3;
export const KDF_MEMLIMIT = 64 * 1024 * 1024;

export const TAG_PLAIN_BYTES = 32;
export const NONCE_BYTES = 24;
export const TAG_AEAD_BYTES = 16;

/** Pack record types. */
export const RecordType = {
  /**
   * A frame of new blocks, numbered on from the blocks of earlier frames (the first block of the
   * bundle is number 0):
   *   u8 type=1, u8 codec (0 raw, 1 zstd), u32 block count n, u32 stored length s,
   *   n × { u32 raw length (1..65536), 32-byte block id }, then s stored bytes.
   * The frame's raw bytes are the blocks' bytes concatenated in order.
   */
  Frame: 1,
  /**
   * Data: `count` consecutive blocks, numbers first..first+count-1, placed one after the other from
   * guest offset `offset` of layer `layer`:  u8 type=2, u32 layer, u64 offset, u32 first, u32 count.
   */
  Data: 2,
  /** Zero extent: u8 type=3, u32 layer, u64 offset, u64 length. */
  Zero: 3,
} as const;

export const FRAME_HEAD_BYTES = 1 + 1 + 4 + 4;
export const FRAME_BLOCK_BYTES = 4 + 32;
export const DATA_RECORD_BYTES = 1 + 4 + 8 + 4 + 4;
export const ZERO_RECORD_BYTES = 1 + 4 + 8 + 8;

/** Block-id schemes named in the meta. */
type BlockHash = 'sha256' | 'blake2b256-keyed-sha256';

/** A snapshot as carried in the meta: the snapshot object's stored fields, no paths. */
export interface MetaSnapshot {
  name: string;
  parent: string | null;
  type: 'disk' | 'full';
  created_at: string;
  description: string | null;
  tags: string[];
  auto_created: boolean;
  auto_policy: string | null;
  expires_at: string | null;
  /** Known at export start (stored in the record), else null and given by the seal. */
  content_id: string | null;
}

export interface MetaLayer {
  /** Index into snapshots (of the whole bundle). */
  snapshot: number;
  target: string;
  virtual_size: number;
  cluster_size: number;
}

/**
 * One VM's chain: snapshots first..first+count-1 of the bundle. A version 1 bundle has exactly one
 * (its `vm` and `since` on the wire); a group bundle one per member, each a whole chain (since null).
 */
export interface MetaChain {
  vm: string;
  /** For a `--since` bundle (version 1 only): the snapshot the first one stands on, by name and content id. */
  since: { name: string; content_id: string } | null;
  first: number;
  count: number;
}

/** A group snapshot as carried in a group bundle: its name and each member's snapshot. */
export interface MetaGroupSnapshot {
  name: string;
  created_at: string;
  description: string | null;
  tags: string[];
  type: 'disk' | 'full';
  /** How the members were held at one point (store/groups.ts, GroupConsistency). */
  consistency: 'locks' | 'paused' | 'frozen' | 'mixed';
  pause_ms: number | null;
  auto_created: boolean;
  auto_policy: string | null;
  /** Member VM name → that VM's snapshot (which the bundle holds). */
  members: Record<string, string>;
}

/** The group of a version 2 bundle. */
export interface MetaGroup {
  name: string;
  description: string | null;
  /** The members, as the group record lists them (each has a chain in the bundle). */
  members: string[];
  /** Oldest first; only those whose every member snapshot is in the bundle. */
  snapshots: MetaGroupSnapshot[];
}

/**
 * The meta as readers use it, whatever its version: every snapshot and layer of the bundle in one list
 * (chain after chain), the chains that cut the list, and the group (null in version 1).
 * On the wire (manifest.ts, docs/bundle-format.md), version 1 names its one chain with `vm` and `since`,
 * version 2 with `group` and `chains`.
 */
export interface Meta {
  format: 'clonebox-bundle';
  version: 1 | 2;
  created_at: string;
  block_size: number;
  block_hash: BlockHash;
  compression: { codec: 'zstd'; level: number };
  chains: MetaChain[];
  group: MetaGroup | null;
  /** Chain after chain, each from its oldest to its newest; each one's parent is the previous one of its chain (the first's is its chain's `since`). */
  snapshots: MetaSnapshot[];
  /** Per snapshot, one per disk; in the order their records appear in the packs. */
  layers: MetaLayer[];
}

/** The chain snapshot `si` belongs to. */
export function chainOf(meta: Meta, si: number): MetaChain {
  return meta.chains.find((c) => si >= c.first && si < c.first + c.count)!;
}

export interface SealLayer {
  /** Layer content digest (hex SHA-256, see src/snapshots/identity.ts). */
  digest: string;
  data_bytes: number;
  zero_bytes: number;
  blocks: number;
}

export interface SealTotals {
  logical_bytes: number;
  unique_bytes: number;
  stored_bytes: number;
  blocks: number;
  unique_blocks: number;
  frames: number;
}

export interface Seal {
  packs: number;
  snapshots: { name: string; content_id: string }[];
  layers: SealLayer[];
  totals: SealTotals;
}
