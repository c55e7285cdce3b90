/**
 * The guest room's parsers on hand-made inputs: partition tables (MBR with an extended chain, GPT,
 * hostile entries and chains), dpkg/apk databases and version order, the unified diff.
 */
import { describe, expect, it } from 'vitest';
import { compareApk, compareDpkg, diffPackages, parseApkInstalled, parseDpkgStatus } from '../src/guest/packages.js';
import { readPartitions } from '../src/guest/partitions.js';
import { unifiedDiff } from '../src/guest/unidiff.js';
import { memSource as mem } from './helpers/mem-source.js';

function mbrEntry(buf: Buffer, at: number, slot: number, type: number, lba: number, sectors: number): void {
  const o = at + 446 + slot * 16;
  buf[o + 4] = type;
  buf.writeUInt32LE(lba, o + 8);
  buf.writeUInt32LE(sectors, o + 12);
  buf[at + 510] = 0x55;
  buf[at + 511] = 0xaa;
}

describe('partition tables', () => {
  it('MBR primaries, an extended chain of logical partitions, and an entry past the end', async () => {
    const disk = Buffer.alloc(1000 * 512);
    mbrEntry(disk, 0, 0, 0x83, 10, 100);
    mbrEntry(disk, 0, 1, 0x05, 200, 700);
    mbrEntry(disk, 0, 2, 0x83, 900, 5000); // past the end
    mbrEntry(disk, 200 * 512, 0, 0x83, 2, 50); // logical 5 at 202
    mbrEntry(disk, 200 * 512, 1, 0x05, 100, 100); // next EBR at 300
    mbrEntry(disk, 300 * 512, 0, 0x8e, 4, 60); // logical 6 at 304
    const t = await readPartitions(mem(disk));
    expect(t.scheme).toBe('mbr');
    expect(t.partitions).toEqual([
      { index: 1, start: 10 * 512, size: 100 * 512, type: 'mbr:0x83' },
      { index: 5, start: 202 * 512, size: 50 * 512, type: 'mbr:0x83' },
      { index: 6, start: 304 * 512, size: 60 * 512, type: 'mbr:0x8e' },
    ]);
    expect(t.warnings).toEqual(['partition 3: entry points past the end of the disk (sectors 900+5000 of 1000); skipped']);
  });

  it('an extended chain that loops is followed once and named', async () => {
    const disk = Buffer.alloc(1000 * 512);
    mbrEntry(disk, 0, 0, 0x05, 100, 800);
    mbrEntry(disk, 100 * 512, 0, 0x83, 2, 10);
    mbrEntry(disk, 100 * 512, 1, 0x05, 0, 10); // points back at itself
    const t = await readPartitions(mem(disk));
    expect(t.partitions.map((p) => p.index)).toEqual([5]);
    expect(t.warnings[0]).toMatch(/chain loops/);
  });

  it('GPT behind a protective MBR; an entry array larger than the limit is refused', async () => {
    const disk = Buffer.alloc(2048 * 512);
    mbrEntry(disk, 0, 0, 0xee, 1, 2047);
    const h = 512;
    disk.write('EFI PART', h, 'latin1');
    disk.writeBigUInt64LE(2n, h + 72);
    disk.writeUInt32LE(4, h + 80);
    disk.writeUInt32LE(128, h + 84);
    const e = 1024;
    disk.fill(0x11, e, e + 16); // type guid
    disk.writeBigUInt64LE(34n, e + 32);
    disk.writeBigUInt64LE(1033n, e + 40);
    disk.fill(0x22, e + 128, e + 144);
    disk.writeBigUInt64LE(1034n, e + 128 + 32);
    disk.writeBigUInt64LE(99999n, e + 128 + 40); // past the end
    const t = await readPartitions(mem(disk));
    expect(t.scheme).toBe('gpt');
    expect(t.partitions).toEqual([{ index: 1, start: 34 * 512, size: 1000 * 512, type: 'gpt:11111111-1111-1111-1111-111111111111' }]);
    expect(t.warnings).toEqual(['partition 2: entry points past the end of the disk (sectors 1034-99999 of 2048); skipped']);
    disk.writeUInt32LE(0x7fffffff, h + 80);
    const huge = await readPartitions(mem(disk));
    expect(huge.partitions).toEqual([]);
    expect(huge.warnings[0]).toMatch(/cannot be right/);
  });

  it('no table: the whole disk; a filesystem boot sector is not a table', async () => {
    expect((await readPartitions(mem(Buffer.alloc(4096)))).partitions).toEqual([{ index: 0, start: 0, size: 4096, type: 'none' }]);
    const fat = Buffer.alloc(4096, 0x41);
    fat[510] = 0x55;
    fat[511] = 0xaa;
    expect((await readPartitions(mem(fat))).scheme).toBe('none');
  });
});

describe('packages', () => {
  it('orders dpkg versions as dpkg does', () => {
    const lt = (a: string, b: string) => expect(compareDpkg(a, b), `${a} < ${b}`).toBeLessThan(0);
    lt('1.0', '1.1');
    lt('1.0~rc1', '1.0');
    lt('1.0', '1.0+deb12u1');
    lt('1.0-1', '1.0-2');
    lt('1.9', '1.10');
    lt('9.9', '1:0.1');
    lt('2.30-1', '2.30a-1');
    expect(compareDpkg('1.0-1', '1.0-1')).toBe(0);
    expect(compareDpkg('0:1.0', '1.0')).toBe(0);
  });

  it('orders apk versions as apk does', () => {
    const lt = (a: string, b: string) => expect(compareApk(a, b), `${a} < ${b}`).toBeLessThan(0);
    lt('1.2.3-r0', '1.2.3-r1');
    lt('1.2.3_rc1-r0', '1.2.3-r0');
    lt('1.2.3-r5', '1.2.4-r0');
    lt('1.2.3-r0', '1.2.3_p1-r0');
    lt('1.9-r0', '1.10-r0');
    expect(compareApk('3.1.4-r2', '3.1.4-r2')).toBe(0);
  });

  it('parses dpkg status (installed only; multi-arch names) and apk installed, and diffs them', () => {
    const st = [
      'Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\nDescription: x\n more\n',
      'Package: b\nStatus: deinstall ok config-files\nVersion: 2\n',
      'Package: libc\nStatus: install ok installed\nVersion: 2.36\nArchitecture: amd64\n',
      'Package: libc\nStatus: install ok installed\nVersion: 2.36\nArchitecture: i386\n',
    ].join('\n');
    expect([...parseDpkgStatus(st)]).toEqual([
      ['a', '1.0'],
      ['libc:amd64', '2.36'],
      ['libc:i386', '2.36'],
    ]);
    expect([...parseApkInstalled('C:Q1x\nP:musl\nV:1.2.4-r2\n\nP:busybox\nV:1.36.1-r5\nT:desc\n')]).toEqual([
      ['musl', '1.2.4-r2'],
      ['busybox', '1.36.1-r5'],
    ]);
    const before = new Map([
      ['a', '1.0'],
      ['gone', '1'],
      ['down', '2.0'],
    ]);
    const after = new Map([
      ['a', '1.1'],
      ['new', '3'],
      ['down', '1.0'],
    ]);
    expect(diffPackages('dpkg', before, after)).toEqual([
      { name: 'a', change: 'upgraded', from: '1.0', to: '1.1' },
      { name: 'down', change: 'downgraded', from: '2.0', to: '1.0' },
      { name: 'gone', change: 'removed', from: '1', to: null },
      { name: 'new', change: 'installed', from: null, to: '3' },
    ]);
  });
});

describe('unified diff', () => {
  it('writes diff -u hunks with three lines of context, merging close changes', () => {
    const a = `${Array.from({ length: 30 }, (_, k) => `l${k + 1}`).join('\n')}\n`;
    const b = a.replace('l5\n', 'five\n').replace('l9\n', '').replace('l25\n', 'l25\nnew\n');
    expect(unifiedDiff('/etc/x', a, b)).toBe(
      [
        '--- a/etc/x',
        '+++ b/etc/x',
        '@@ -2,11 +2,10 @@',
        ' l2',
        ' l3',
        ' l4',
        '-l5',
        '+five',
        ' l6',
        ' l7',
        ' l8',
        '-l9',
        ' l10',
        ' l11',
        ' l12',
        '@@ -23,6 +22,7 @@',
        ' l23',
        ' l24',
        ' l25',
        '+new',
        ' l26',
        ' l27',
        ' l28',
        '',
      ].join('\n'),
    );
  });

  it('diffs from and to empty files, and gives up on texts too far apart', () => {
    expect(unifiedDiff('/etc/n', '', 'a\nb\n')).toBe('--- a/etc/n\n+++ b/etc/n\n@@ -0,0 +1,2 @@\n+a\n+b\n');
    expect(unifiedDiff('/etc/n', 'a\n', '')).toBe('--- a/etc/n\n+++ b/etc/n\n@@ -1,1 +0,0 @@\n-a\n');
    const many = (p: string) => `${Array.from({ length: 3000 }, (_, k) => `${p}${k}`).join('\n')}\n`;
    expect(unifiedDiff('/etc/big', many('a'), many('b'))).toBeNull();
  });
});
