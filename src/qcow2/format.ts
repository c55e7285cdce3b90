/**
 * qcow2 on-disk layout (docs/interop/qcow2.rst in QEMU; our summary is docs/qcow2.md).
 *
 * Header, all big-endian:
 *
 *   off  size  field
 *     0     4  magic "QFI\xfb"
 *     4     4  version (2 or 3)
 *     8     8  backing_file_offset
 *    16     4  backing_file_size        (<= 1023)
 *    20     4  cluster_bits             (9..21)
 *    24     8  size                     (virtual size in bytes)
 *    32     4  crypt_method             (0 = none; anything else is refused)
 *    36     4  l1_size                  (entries)
 *    40     8  l1_table_offset
 *    48     8  refcount_table_offset
 *    56     4  refcount_table_clusters
 *    60     4  nb_snapshots
 *    64     8  snapshots_offset
 *   -- version 3 only --
 *    72     8  incompatible_features
 *    80     8  compatible_features
 *    88     8  autoclear_features
 *    96     4  refcount_order           (0..6)
 *   100     4  header_length            (>= 104, multiple of 8)
 *   104     1  compression_type         (only when header_length > 104; 0 = zlib, 1 = zstd)
 *
 * Header extensions follow header_length (72 for v2), each {type u32, length u32, data padded to 8}.
 *
 * Every number here comes from a file we do not trust: each one is checked against the file size and
 * against QEMU's own limits before anything is allocated or read at that offset.
 */
import { CloneboxError } from '../errors.js';

export const QCOW2_MAGIC = 0x514649fb;
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
export const MAX_BACKING_FILE_NAME = 1023;
/** QEMU refuses L1 tables above 32 MiB (QCOW_MAX_L1_SIZE); so do we. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** QEMU's QCOW_MAX_REFTABLE_SIZE. */
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** 2^61 - 1: QEMU's limit for the virtual size of a qcow2 image (BDRV_MAX_LENGTH-ish). */
export const MAX_VIRTUAL_SIZE = 2n ** 61n - 1n;

const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_CRYPTO_HEADER = 0x0537be77;
const EXT_DATA_FILE = 0x44415441;

const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_DATA_FILE = 1n << 2n;
const INCOMPAT_COMPRESSION = 1n << 3n;
const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/** L1 entry: bits 9..55 hold the L2 table's host offset; bit 63 is the COPIED flag. */
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
/** Standard L2 entry flags. */
export const L2E_COPIED = 1n << 63n;
export const L2E_COMPRESSED = 1n << 62n;
export const L2E_ZERO = 1n;

type CompressionType = 'zlib' | 'zstd';

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: CompressionType;
  extendedL2: boolean;
  /** Bytes of guest data one L2 table maps. */
  l2Coverage: number;
  /** Entries in one L2 table (cluster_size / entry size). */
  l2Entries: number;
  /** 8, or 16 with extended L2. */
  l2EntryBytes: number;
  /** 32 with extended L2, else 1. */
  subclusters: number;
}

export interface HeaderExtensions {
  backingFormat: string | null;
  dataFile: string | null;
  hasCryptoHeader: boolean;
  featureNames: Map<string, string>;
}

function corrupt(file: string, what: string): CloneboxError {
  return new CloneboxError('QCOW2_CORRUPT', `corrupt qcow2 image: ${what}, ${file}`, {
    hint: 'the file is damaged or not a qcow2 image; `qemu-img check` may tell more',
  });
}

/** A u64 from the file as a JS number, refusing values above 2^53 (no real image has them). */
function u64(buf: Buffer, off: number, file: string, field: string): number {
  const v = buf.readBigUInt64BE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(file, `${field} is out of range (${v})`);
  return Number(v);
}

const HEADER_V2_LENGTH = 72;
const HEADER_V3_MIN_LENGTH = 104;
/** The most of the file the header parser ever looks at: the first cluster holds header + extensions. */
export const HEADER_READ_MAX = 1 << MAX_CLUSTER_BITS;

/**
 * Parses and validates the fixed header. `buf` holds the start of the file (at least the header
 * length, at most the first cluster); `fileSize` is the file's length for range checks.
 */
export function parseHeader(buf: Buffer, fileSize: number, file: string): Qcow2Header {
  if (buf.length < HEADER_V2_LENGTH) {
    if (buf.length >= 4 && buf.readUInt32BE(0) === QCOW2_MAGIC) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: header is ${buf.length} bytes, ${file}`);
    }
    throw new CloneboxError('NOT_QCOW2', `not a qcow2 image, ${file}`);
  }
  if (buf.readUInt32BE(0) !== QCOW2_MAGIC) throw new CloneboxError('NOT_QCOW2', `not a qcow2 image, ${file}`);
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) {
    throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 version ${version}, ${file}`);
  }
  const clusterBits = buf.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(file, `cluster_bits ${clusterBits} outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Partial<Qcow2Header> = { version, clusterBits, clusterSize };
  h.backingFileOffset = u64(buf, 8, file, 'backing_file_offset');
  h.backingFileSize = buf.readUInt32BE(16);
  const sizeBig = buf.readBigUInt64BE(24);
  if (sizeBig > MAX_VIRTUAL_SIZE || sizeBig > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corrupt(file, `virtual size ${sizeBig} is too large`);
  }
  // QEMU sees the disk as whole 512-byte sectors (total_sectors = size / 512, rounded down); so do we,
  // or clonebox and QEMU would disagree about the last bytes of a disk whose size is not a multiple of 512.
  const headerSize = Number(sizeBig);
  h.virtualSize = headerSize - (headerSize % 512);
  h.cryptMethod = buf.readUInt32BE(32);
  h.l1Size = buf.readUInt32BE(36);
  h.l1TableOffset = u64(buf, 40, file, 'l1_table_offset');
  h.refcountTableOffset = u64(buf, 48, file, 'refcount_table_offset');
  h.refcountTableClusters = buf.readUInt32BE(56);
  h.nbSnapshots = buf.readUInt32BE(60);
  h.snapshotsOffset = u64(buf, 64, file, 'snapshots_offset');

  if (version === 2) {
    h.incompatibleFeatures = 0n;
    h.compatibleFeatures = 0n;
    h.autoclearFeatures = 0n;
    h.refcountOrder = 4;
    h.headerLength = HEADER_V2_LENGTH;
    h.compressionType = 'zlib';
  } else {
    if (buf.length < HEADER_V3_MIN_LENGTH) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: v3 header is ${buf.length} bytes, ${file}`);
    }
    h.incompatibleFeatures = buf.readBigUInt64BE(72);
    h.compatibleFeatures = buf.readBigUInt64BE(80);
    h.autoclearFeatures = buf.readBigUInt64BE(88);
    h.refcountOrder = buf.readUInt32BE(96);
    h.headerLength = buf.readUInt32BE(100);
    if (h.headerLength < HEADER_V3_MIN_LENGTH || h.headerLength % 8 !== 0 || h.headerLength > clusterSize) {
      throw corrupt(file, `header_length ${h.headerLength} is invalid`);
    }
    if (h.headerLength > buf.length) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: header_length ${h.headerLength} is past the end of the file, ${file}`);
    }
    let compression: CompressionType = 'zlib';
    if (h.headerLength > HEADER_V3_MIN_LENGTH) {
      const ct = buf.readUInt8(104);
      if (ct === 0) compression = 'zlib';
      else if (ct === 1) compression = 'zstd';
      else throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: compression type ${ct}, ${file}`);
    }
    if (compression !== 'zlib' && (h.incompatibleFeatures & INCOMPAT_COMPRESSION) === 0n) {
      throw corrupt(file, 'compression_type is set but the compression incompatible bit is not');
    }
    h.compressionType = compression;
    if (h.refcountOrder > 6) throw corrupt(file, `refcount_order ${h.refcountOrder} is above 6`);
  }
  const incompat = h.incompatibleFeatures!;
  const unknown = incompat & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: unknown incompatible feature bits 0x${unknown.toString(16)}, ${file}`);
  }
  if (incompat & INCOMPAT_DATA_FILE) {
    throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: external data file, ${file}`, {
      hint: 'convert it to a self-contained image first: qemu-img convert -O qcow2 IN OUT',
    });
  }
  if (h.cryptMethod !== 0) {
    throw new CloneboxError('QCOW2_UNSUPPORTED', `unsupported qcow2 feature: encrypted image (method ${h.cryptMethod}), ${file}`, {
      hint: 'decrypt it first: qemu-img convert --object secret,... -O qcow2 IN OUT',
    });
  }
  h.extendedL2 = (incompat & INCOMPAT_EXTL2) !== 0n;
  if (h.extendedL2 && clusterBits < 14) {
    // QEMU requires 16 KiB clusters or more with subclusters (a subcluster must be at least 512 bytes).
    throw corrupt(file, `extended L2 with cluster size ${clusterSize} (minimum 16384)`);
  }
  h.l2EntryBytes = h.extendedL2 ? 16 : 8;
  h.l2Entries = clusterSize / h.l2EntryBytes;
  h.l2Coverage = h.l2Entries * clusterSize;
  h.subclusters = h.extendedL2 ? 32 : 1;

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_FILE_NAME) {
      throw corrupt(file, `backing file name is ${h.backingFileSize} bytes (the limit is ${MAX_BACKING_FILE_NAME})`);
    }
    if (h.backingFileOffset + h.backingFileSize > clusterSize) {
      throw corrupt(file, 'backing file name lies outside the header cluster');
    }
    if (h.backingFileOffset + h.backingFileSize > fileSize) {
      // Inside the header cluster, but the file ends before it: the file was cut short.
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: backing file name is past the end of the file, ${file}`);
    }
  }

  const neededL1 = Math.ceil(headerSize / h.l2Coverage); // QEMU checks the L1 size against the header's size
  if (h.l1Size * 8 > MAX_L1_BYTES) throw new CloneboxError('QCOW2_TOO_LARGE', `qcow2 L1 table is too large (${h.l1Size} entries), ${file}`);
  if (h.l1Size < neededL1) throw corrupt(file, `L1 table has ${h.l1Size} entries, the virtual size needs ${neededL1}`);
  if (h.l1Size > 0) {
    if (h.l1TableOffset % clusterSize !== 0) throw corrupt(file, `L1 table offset ${h.l1TableOffset} is not cluster aligned`);
    if (h.l1TableOffset < clusterSize) throw corrupt(file, 'L1 table overlaps the header');
    if (h.l1TableOffset + h.l1Size * 8 > fileSize) {
      throw new CloneboxError('QCOW2_TRUNCATED', `truncated qcow2 image: L1 table ends past the end of the file, ${file}`);
    }
  }
  if (h.refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) {
    throw new CloneboxError('QCOW2_TOO_LARGE', `qcow2 refcount table is too large (${h.refcountTableClusters} clusters), ${file}`);
  }
  if (h.refcountTableOffset % clusterSize !== 0) throw corrupt(file, 'refcount table offset is not cluster aligned');
  return h as Qcow2Header;
}

/** Parses the header extensions that follow the header (they must stay inside the first cluster). */
export function parseExtensions(buf: Buffer, h: Qcow2Header, file: string): HeaderExtensions {
  const ext: HeaderExtensions = { backingFormat: null, dataFile: null, hasCryptoHeader: false, featureNames: new Map() };
  let off = h.headerLength;
  const end = Math.min(buf.length, h.clusterSize);
  // Bounded: every iteration advances by at least 8 bytes and the loop stops at the cluster end.
  while (off + 8 <= end) {
    const type = buf.readUInt32BE(off);
    const len = buf.readUInt32BE(off + 4);
    off += 8;
    if (type === EXT_END) break;
    if (len > end - off) throw corrupt(file, `header extension 0x${type.toString(16)} runs past the header cluster`);
    const data = buf.subarray(off, off + len);
    switch (type) {
      case EXT_BACKING_FORMAT:
        ext.backingFormat = data.toString('utf8');
        break;
      case EXT_DATA_FILE:
        ext.dataFile = data.toString('utf8');
        break;
      case EXT_CRYPTO_HEADER:
        ext.hasCryptoHeader = true;
        break;
      case EXT_FEATURE_TABLE:
        for (let i = 0; i + 48 <= data.length; i += 48) {
          const kind = ['incompatible', 'compatible', 'autoclear'][data[i]!] ?? `type${data[i]}`;
          const name = data
            .subarray(i + 2, i + 48)
            .toString('utf8')
            .replace(/\0+$/, '');
          ext.featureNames.set(`${kind}:${data[i + 1]}`, name);
        }
        break;
      default:
        break; // unknown extensions are optional by definition
    }
    off += (len + 7) & ~7;
  }
  return ext;
}

/**
 * A compressed cluster descriptor splits at x = 62 - (cluster_bits - 8): the low x bits are the host
 * offset, the bits above are the count of additional 512-byte sectors.
 */
export function compressedLayout(entry: bigint, clusterBits: number): { offset: number; maxBytes: number } {
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << x) - 1n));
  const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n));
  // The compressed bytes run from `offset` to the end of the last sector the count names.
  const maxBytes = (sectors + 1) * 512 - (offset & 511);
  return { offset, maxBytes };
}
