/** What a partition holds, from the magic numbers of the filesystems and volume formats a VM disk commonly has. */
import type { ByteSource } from './disk.js';

export type FsKind = 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'btrfs' | 'lvm2' | 'luks' | 'ntfs' | 'vfat' | 'swap' | 'unknown';

async function at(src: ByteSource, offset: number, length: number): Promise<Buffer | null> {
  if (offset + length > src.size) return null;
  return src.read(offset, length);
}

export async function probeFs(src: ByteSource): Promise<FsKind> {
  const sb = await at(src, 1024, 1024);
  if (sb && sb.readUInt16LE(56) === 0xef53) {
    const compat = sb.readUInt32LE(92);
    const incompat = sb.readUInt32LE(96);
    const roCompat = sb.readUInt32LE(100);
    // ext4: extents, 64bit, flex_bg, inline data; or huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum
    if (incompat & 0x82c0 || roCompat & 0x478) return 'ext4';
    return compat & 0x4 ? 'ext3' : 'ext2';
  }
  const s0 = await at(src, 0, 512);
  if (s0) {
    if (s0.toString('latin1', 0, 4) === 'XFSB') return 'xfs';
    if (s0.toString('latin1', 0, 6) === 'LUKS\xba\xbe') return 'luks';
    if (s0.toString('latin1', 3, 11) === 'NTFS    ') return 'ntfs';
    if (s0[510] === 0x55 && s0[511] === 0xaa && (s0.toString('latin1', 54, 57) === 'FAT' || s0.toString('latin1', 82, 85) === 'FAT')) return 'vfat';
  }
  for (let s = 0; s < 4; s++) {
    const l = await at(src, s * 512, 32);
    if (l && l.toString('latin1', 0, 8) === 'LABELONE' && l.toString('latin1', 24, 32) === 'LVM2 001') return 'lvm2';
  }
  const bt = await at(src, 65536 + 64, 8);
  if (bt && bt.toString('latin1') === '_BHRfS_M') return 'btrfs';
  const sw = await at(src, 4096 - 10, 10);
  if (sw && /^SWAP(SPACE2|-SPACE)$/.test(sw.toString('latin1'))) return 'swap';
  return 'unknown';
}
