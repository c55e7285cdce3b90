/**
 * The clonebox archive repository, format version 1: layout, constants, limits. docs/archive-format.md
 * is the full description (someone could re-implement it from there); this file is the same layout next
 * to the code that writes and reads it.
 *
 * A repository is a directory:
 *
 *   config                  header (the bundle header's layout, magic "clonebox-archive") + sealed settings
 *   packs/<xx>/<id>         pack files: sealed frames of compressed blocks (bundle frame records)
 *   index/<id>              index files: block id -> (pack, frame, slot), sorted, chunked, with a bloom filter
 *   layers/<xx>/<name>      layer maps: one qcow2 layer's extents, naming every block by id
 *   snapshots/<id>          push records: a VM's snapshots (metadata, parents, layers) as one push saw them
 *   locks/                  shared-<pid>-<rand> (push, import) and exclusive (gc) lock files
 *
 * <id> is 32 lowercase hex digits (16 random bytes), <name> 64 hex digits, <xx> their first two.
 * Every file but config and the locks is a container (container.ts):
 *
 *   magic (8) | entries: u32 length L, L sealed bytes ... | trailer: u32 L, L sealed bytes | footer (16)
 *   footer = u64 offset of the trailer's length field | "CBXA-END"
 *
 * Entry i is sealed with the bundle's Sealer (src/bundle/crypto.ts) with kind DATA_KIND[file type] and
 * index i, the trailer with kind Seal and index TRAILER_INDEX; the Sealer's 32-byte context is
 * SHA-256("clonebox-archive/v1\0" || config checksum || magic || basename), so no entry can move to
 * another position, file or repository. Files are written once (temp + fsync + link) and never changed.
 */
import { EntryKind } from '../bundle/format.js';

export const CONFIG_MAGIC = Buffer.from('clonebox-archive', 'latin1');
export const ARCHIVE_VERSION = 1;
export const CONFIG_HEADER_SIZE = 136;
/** Config header flags (bytes 20..23). */
export const FLAG_ENCRYPTED = 1;
export const FLAG_APPEND_ONLY = 2;

export const FileType = { Pack: 'pack', Index: 'index', Layer: 'layer', Snapshots: 'snapshots' } as const;
export type FileType = (typeof FileType)[keyof typeof FileType];

export const MAGIC: Record<FileType, Buffer> = {
  pack: Buffer.from('CBXAPACK', 'latin1'),
  index: Buffer.from('CBXAINDX', 'latin1'),
  layer: Buffer.from('CBXALAYR', 'latin1'),
  snapshots: Buffer.from('CBXASNAP', 'latin1'),
};
export const FOOTER_MAGIC = Buffer.from('CBXA-END', 'latin1');
export const MAGIC_BYTES = 8;
export const FOOTER_BYTES = 16;
export const TRAILER_INDEX = 0xffffffff;

/**
 * The Sealer kind of a file's entries. Pack entries are bundle frame records and use the bundle's Pack
 * kind, so a plain repository's tag skips the compressed bytes (each block is checked by its id once
 * decompressed, as in bundles); everything else is Meta. Trailers are Seal.
 */
export const DATA_KIND: Record<FileType, EntryKind> = {
  pack: EntryKind.Pack,
  index: EntryKind.Meta,
  layer: EntryKind.Meta,
  snapshots: EntryKind.Meta,
};

export const DIR_PACKS = 'packs';
export const DIR_INDEX = 'index';
export const DIR_LAYERS = 'layers';
export const DIR_SNAPSHOTS = 'snapshots';
export const DIR_LOCKS = 'locks';
export const CONFIG_FILE = 'config';

export const ID_RE = /^[0-9a-f]{32}$/;
export const NAME_RE64 = /^[0-9a-f]{64}$/;

/** A pack is closed once its frames reach this many sealed bytes. */
export const PACK_TARGET = 16 * 1024 * 1024;
/** Rows of one index chunk (the unit read and opened on a lookup). */
export const INDEX_CHUNK_ROWS = 1024;
/** Row: block id (32), pack (u32, into the trailer's pack list), frame entry offset (u32), sealed length (u32), frame number (u16), slot (u16). */
export const INDEX_ROW_BYTES = 48;
/** A push writes an index file once this many new blocks are in committed packs (bounds its memory). */
export const INDEX_FLUSH_ROWS = 256 * 1024;
/** Bloom filter: bits per row and hash count (about 1% false positives). */
export const BLOOM_BITS_PER_ROW = 10;
export const BLOOM_HASHES = 7;
/** Layer map chunk: closed once its payload reaches this. */
export const LAYER_CHUNK_TARGET = 1024 * 1024;

/** Layer map record types (in layer map entries). */
export const MapRecord = {
  /** u8 3, u64 offset, u64 length: a zero extent (as the bundle's Zero record, without the layer). */
  Zero: 3,
  /** u8 4, u64 offset, u64 length, then one 32-byte block id per canonical block of [offset, offset+length). */
  Extent: 4,
} as const;
export const ZERO_REC_BYTES = 17;
export const EXTENT_HEAD_BYTES = 17;

// Limits a reader enforces before it allocates (writers stay far below them).
export const MAX_PACK_ENTRY = 20 * 1024 * 1024;
export const MAX_PACK_FRAMES = 65535;
export const MAX_INDEX_ROWS = 4 * 1024 * 1024;
export const MAX_INDEX_PACKS = 1024 * 1024;
export const MAX_INDEX_CHUNK = INDEX_CHUNK_ROWS * INDEX_ROW_BYTES + 64;
export const MAX_LAYER_ENTRY = 4 * 1024 * 1024;
export const MAX_LAYER_CHUNKS = 16 * 1024 * 1024;
export const MAX_RECORD_ENTRY = 16 * 1024 * 1024;
export const MAX_TRAILER = 64 * 1024 * 1024;
export const MAX_SETTINGS = 64 * 1024;

/** The settings JSON sealed in config after the header. */
export interface Settings {
  format: 'clonebox-archive';
  version: 1;
  created_at: string;
  block_size: number;
  block_hash: 'sha256' | 'blake2b256-keyed-sha256';
  compression: { codec: 'zstd'; level: number };
  append_only: boolean;
}

/** One disk of a snapshot in a push record. */
export interface RecordDisk {
  target: string;
  /** The layer map's file name (layers/<xx>/<layer>). */
  layer: string;
  /** Layer content digest (hex SHA-256, src/content/digest.ts). */
  digest: string;
  virtual_size: number;
  cluster_size: number;
  data_bytes: number;
}

/** A snapshot as a push record holds it: the stored fields of the snapshot record, no paths. */
export interface RecordSnapshot {
  name: string;
  parent: string | null;
  type: 'disk' | 'full';
  created_at: string;
  description: string | null;
  tags: string[];
  auto_created: boolean;
  auto_policy: string | null;
  expires_at: string | null;
  content_id: string;
  disks: RecordDisk[];
}

/** A push record: written last by a push or an import; its snapshots exist in the archive from then on. */
export interface PushRecord {
  format: 'clonebox-archive-snapshots';
  version: 1;
  /** The file's own id (its name), so a record cannot be passed off under another name. */
  id: string;
  created_at: string;
  vm: string;
  source: 'push' | 'import';
  host: string;
  /** The VM's current snapshot when pushed (null when unknown). */
  current: string | null;
  /** Parents before children. A parent not in the list is in no record of this push (never: pushes are whole lines). */
  snapshots: RecordSnapshot[];
  stats: { read_bytes: number; new_blocks: number; new_raw_bytes: number; new_stored_bytes: number; pack_bytes: number };
}
