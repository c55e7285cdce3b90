/**
 * Partition tables as the guest sees them: MBR (primary entries and the extended/logical chain) and
 * GPT (behind a protective MBR). A disk without a table is one whole-disk partition. Entries that
 * cannot be right (past the end of the disk, a chain that loops) are skipped with a warning naming
 * the entry; the other partitions are still compared.
 */
import type { ByteSource } from './disk.js';

export interface Partition {
  /** 1-4 primary MBR or GPT entry number, 5+ logical MBR partitions, 0 the whole disk. */
  index: number;
  /** Byte offset and length on the disk. */
  start: number;
  size: number;
  /** `mbr:0x83`, `gpt:<type guid>` or `none` (whole disk). */
  type: string;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt' | 'none';
  partitions: Partition[];
  warnings: string[];
}

const SECTOR = 512;
/** Logical partitions followed along an extended chain (Linux allows far fewer). */
const MAX_LOGICAL = 256;
/** GPT entry array read at most (128 entries of 128 bytes is the usual 16 KiB). */
const MAX_GPT_ARRAY = 1024 * 1024;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

interface MbrEntry {
  boot: number;
  type: number;
  lba: number;
  sectors: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] | null {
  if (sector.length < SECTOR || sector[510] !== 0x55 || sector[511] !== 0xaa) return null;
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    out.push({ boot: sector[o]!, type: sector[o + 4]!, lba: sector.readUInt32LE(o + 8), sectors: sector.readUInt32LE(o + 12) });
  }
  // A boot sector of a filesystem (FAT, NTFS) also ends in 55 AA; its "entries" are boot code.
  if (out.some((e) => e.boot !== 0 && e.boot !== 0x80)) return null;
  return out;
}

function guid(b: Buffer, o: number): string {
  const h = (s: number, e: number, le: boolean) => {
    const part = Buffer.from(b.subarray(o + s, o + e));
    if (le) part.reverse();
    return part.toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}

export async function readPartitions(disk: ByteSource): Promise<PartitionTable> {
  const warnings: string[] = [];
  const whole: PartitionTable = { scheme: 'none', partitions: [{ index: 0, start: 0, size: disk.size, type: 'none' }], warnings };
  if (disk.size < SECTOR) return whole;
  const entries = mbrEntries(await disk.read(0, SECTOR));
  if (!entries || entries.every((e) => e.type === 0)) return whole;
  const sectors = Math.floor(disk.size / SECTOR);
  const parts: Partition[] = [];
  const add = (index: number, lba: number, count: number, type: string): void => {
    if (count === 0) return;
    if (lba === 0 || lba + count > sectors) {
      warnings.push(`partition ${index}: entry points past the end of the disk (sectors ${lba}+${count} of ${sectors}); skipped`);
      return;
    }
    parts.push({ index, start: lba * SECTOR, size: count * SECTOR, type });
  };
  if (entries.some((e) => e.type === 0xee)) return readGpt(disk, warnings);
  let logical = 5;
  for (const [i, e] of entries.entries()) {
    if (e.type === 0) continue;
    if (!EXTENDED.has(e.type)) {
      add(i + 1, e.lba, e.sectors, `mbr:0x${e.type.toString(16).padStart(2, '0')}`);
      continue;
    }
    if (e.lba === 0 || e.lba + e.sectors > sectors) {
      warnings.push(`partition ${i + 1}: extended partition points past the end of the disk; its logical partitions are skipped`);
      continue;
    }
    // The chain: each EBR holds one logical partition (relative to the EBR) and the next EBR
    // (relative to the extended partition's start).
    const seen = new Set<number>();
    let ebr = e.lba;
    while (ebr !== 0) {
      if (seen.has(ebr) || seen.size >= MAX_LOGICAL) {
        warnings.push(`partition ${i + 1}: the extended partition chain loops or is longer than ${MAX_LOGICAL}; the rest is skipped`);
        break;
      }
      seen.add(ebr);
      if (ebr >= e.lba + e.sectors) {
        warnings.push(`partition ${logical}: extended boot record past the extended partition; the rest of the chain is skipped`);
        break;
      }
      const ent = mbrEntries(await disk.read(ebr * SECTOR, SECTOR));
      if (!ent) {
        warnings.push(`partition ${logical}: extended boot record at sector ${ebr} has no signature; the rest of the chain is skipped`);
        break;
      }
      const [l, next] = [ent[0]!, ent[1]!];
      if (l.type !== 0) add(logical, ebr + l.lba, l.sectors, `mbr:0x${l.type.toString(16).padStart(2, '0')}`);
      logical++;
      ebr = next.type !== 0 && EXTENDED.has(next.type) ? e.lba + next.lba : 0;
    }
  }
  return { scheme: 'mbr', partitions: parts, warnings };
}

/**
 * The GPT header sits in LBA 1, whose byte offset is the disk's logical sector size: 512 on most disks,
 * 4096 on a 4Kn disk (a qcow2 attached with `logical_block_size=4096`). The MBR does not say which, so
 * the header is looked for at 512, then at 4096; every LBA of the table is in that unit. An MBR without
 * GPT is read in 512-byte sectors only (its entries carry no signature that would tell a 4Kn disk).
 */
const GPT_SECTORS = [512, 4096] as const;

async function readGpt(disk: ByteSource, warnings: string[]): Promise<PartitionTable> {
  const none: PartitionTable = { scheme: 'gpt', partitions: [], warnings };
  let sector = 0;
  let h: Buffer | null = null;
  for (const size of GPT_SECTORS) {
    if (disk.size < 2 * size) break;
    const b = await disk.read(size, SECTOR);
    if (b.toString('latin1', 0, 8) === 'EFI PART') {
      sector = size;
      h = b;
      break;
    }
  }
  if (h === null) {
    warnings.push('protective MBR without a GPT header at LBA 1 (512- or 4096-byte sectors); no partition compared');
    return none;
  }
  const sectors = Math.floor(disk.size / sector);
  const entriesLba = Number(h.readBigUInt64LE(72));
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  if (entrySize < 128 || entrySize % 8 !== 0 || count * entrySize > MAX_GPT_ARRAY || entriesLba < 2 || entriesLba * sector + count * entrySize > disk.size) {
    warnings.push(
      `GPT header gives an entry array that cannot be right (${count} entries of ${entrySize} bytes at sector ${entriesLba}); no partition compared`,
    );
    return none;
  }
  const arr = await disk.read(entriesLba * sector, count * entrySize);
  const parts: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * entrySize;
    if (arr.subarray(o, o + 16).every((x) => x === 0)) continue;
    const first = Number(arr.readBigUInt64LE(o + 32));
    const last = Number(arr.readBigUInt64LE(o + 40));
    if (last < first || last >= sectors || first === 0) {
      warnings.push(`partition ${i + 1}: entry points past the end of the disk (sectors ${first}-${last} of ${sectors}); skipped`);
      continue;
    }
    parts.push({ index: i + 1, start: first * sector, size: (last - first + 1) * sector, type: `gpt:${guid(arr, o)}` });
  }
  return { scheme: 'gpt', partitions: parts, warnings };
}
