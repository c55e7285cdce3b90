/**
 * `snapshot diff --files|--packages|--etc` on guest disks built with mke2fs -d, changed with
 * debugfs -w (and in place, under the filesystem's feet, for writes that leave the inode alone),
 * partitioned with sfdisk and loaded as snapshot and current state with qemu-img. Each test checks
 * that exactly the changes made are reported: nothing more, nothing less.
 */
import { existsSync } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { blockOf, brief, debugfs, GuestVm, mkfs, partitionedDisk, partitionedDisk4k, place, pwrite, type Tree, writeTree } from './helpers/guest.js';
import { rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

const MiB = 1024 * 1024;

const baseTree = (r: ReturnType<typeof rng>): Tree => ({
  etc: { hostname: 'alpha\n', 'app.conf': 'port = 80\nhost = a\nmode = fast\n', blob: Buffer.from([0, 1, 2, 3, 0, 255]) },
  home: { u: { data: 'd'.repeat(5000), keep: 'unchanged\n', big: r.bytes(200 * 1024) } },
  old: { one: '1', two: '2', three: { x: 'x' } },
  srv: { 'mode.txt': 'm', 'owner.txt': 'o', hl: 'linked\n' },
});

/** The same edits on every ext flavour; returns the expected brief() lines. */
async function edit(root: string, img: string, bs: number): Promise<string[]> {
  const f = (name: string, content: string) => {
    const p = path.join(root, name);
    return writeFile(p, content).then(() => p);
  };
  const conf = await f('app.conf', 'port = 8080\nhost = a\nmode = fast\n');
  const small = await f('small', 'new file\n');
  await debugfs(img, [
    'rm /etc/app.conf',
    `write ${conf} /etc/app.conf`,
    `write ${small} /home/u/new.txt`,
    'rm /home/u/data',
    'mkdir /newdir',
    `write ${small} /newdir/a`,
    `write ${small} /newdir/b`,
    'mkdir /newdir/sub',
    `write ${small} /newdir/sub/c`,
    'rm /old/one',
    'rm /old/two',
    'rm /old/three/x',
    'rmdir /old/three',
    'rmdir /old',
    'sif /srv/mode.txt mode 0100600',
    'sif /srv/owner.txt uid 1000',
    'symlink /srv/link target-a',
    'ln /srv/hl /srv/hl2',
    'sif /srv/hl links_count 2',
    'cd /srv',
    'mknod fifo p',
  ]);
  // Rewrite one block of /home/u/big in place: the inode does not change, only a data block does.
  const blk = await blockOf(img, '/home/u/big', 20);
  await pwrite(img, blk * bs + 100, Buffer.from('changed in place'));
  return [
    '+ /home/u/new.txt (file)',
    '+ /newdir (dir) {4}',
    '+ /srv/fifo (fifo)',
    '+ /srv/hl2 (file)',
    '+ /srv/link (symlink)',
    '- /home/u/data (file)',
    '- /old (dir) {4}',
    'M /etc/app.conf (file) [content,size]',
    'M /home/u/big (file) [content]',
    'm /srv/mode.txt (file) [mode]',
    'm /srv/owner.txt (file) [owner]',
  ];
}

async function flavour(type: 'ext2' | 'ext3' | 'ext4', bs: number, extra: string[] = []) {
  const root = await makeTempDir(`clonebox-guest-${type}-`);
  await writeTree(path.join(root, 'src'), baseTree(rng(15)));
  const a = path.join(root, 'a.raw');
  const b = path.join(root, 'b.raw');
  await mkfs(a, type, '32M', path.join(root, 'src'), bs, extra);
  await copyFile(a, b);
  const expected = await edit(root, b, bs);
  const vm = await GuestVm.create(root, a, b);
  const parts = await vm.partitions();
  expect(parts).toHaveLength(1);
  const p = parts[0]!;
  expect({ index: p.index, filesystem: p.filesystem, status: p.status, message: p.message, warnings: p.warnings }).toEqual({
    index: 0,
    filesystem: type,
    status: 'compared',
    message: undefined,
    warnings: [],
  });
  expect(brief(p.files).sort()).toEqual(expected.sort());
  return { vm, p };
}

describe('snapshot diff --files, whole-disk filesystems', () => {
  it('ext4 (extents, htree-capable, metadata checksums, 4 KiB blocks): exactly the changes made', async () => {
    const { p } = await flavour('ext4', 4096);
    const byPath = new Map((p.files ?? []).map((c) => [c.path, c]));
    expect(byPath.get('/srv/hl2')).toMatchObject({ links: 2, size_after: 7 });
    expect(byPath.get('/srv/link')).toMatchObject({ target_after: 'target-a' });
    expect(byPath.get('/srv/mode.txt')).toMatchObject({ mode_before: '0644', mode_after: '0600' });
    expect(byPath.get('/srv/owner.txt')).toMatchObject({ owner_after: expect.stringMatching(/^1000:/) });
    expect(byPath.get('/old')).toMatchObject({ entries: 4, bytes: 3 });
    expect(byPath.get('/etc/app.conf')).toMatchObject({ size_before: 31, size_after: 33 });
    expect(p.stats?.owner_scan).toBe(true); // the in-place write was attributed by the inode-table scan
    expect(p.summary).toMatchObject({ added: 5, removed: 2, modified: 2, metadata: 2 });
  });

  it('ext3 (journal, indirect blocks, 1 KiB blocks)', async () => {
    await flavour('ext3', 1024);
  });

  it('ext2 (no journal, indirect blocks)', async () => {
    await flavour('ext2', 1024);
  });

  it('ext4 with 64-bit descriptors and inline data', async () => {
    await flavour('ext4', 4096, ['-O', '64bit,inline_data']);
  });

  it('reports nothing when only free space and unchanged files were rewritten', async () => {
    const root = await makeTempDir('clonebox-guest-none-');
    await writeTree(path.join(root, 'src'), { a: 'a', d: { b: 'b' } });
    const a = path.join(root, 'a.raw');
    const b = path.join(root, 'b.raw');
    await mkfs(a, 'ext4', '16M', path.join(root, 'src'));
    await copyFile(a, b);
    await pwrite(b, 12 * MiB, Buffer.alloc(64 * 1024, 7)); // free space
    const vm = await GuestVm.create(root, a, b);
    const [p] = await vm.partitions();
    expect(p!.status).toBe('compared');
    expect(p!.files).toEqual([]);
    expect(p!.stats?.changed_blocks).toBe(16);
  });
});

describe('snapshot diff --files, names of files rewritten in place', () => {
  it('names them from the directories next to them in the inode table, without a walk from the root; a hard link is still found', async () => {
    const root = await makeTempDir('clonebox-guest-near-');
    const tree: Tree = {};
    for (let d = 0; d < 40; d++) {
      const dir: Tree = {};
      for (let f = 0; f < 25; f++) dir[`f${f}`] = `file ${d}/${f}\n`;
      tree[`d${String(d).padStart(2, '0')}`] = dir;
    }
    await writeTree(path.join(root, 'src'), tree);
    const a = path.join(root, 'a.raw');
    const b = path.join(root, 'b.raw');
    await mkfs(a, 'ext4', '32M', path.join(root, 'src'));
    // A second name for d39/f24 (made before the snapshot): its names could be anywhere.
    await debugfs(a, ['ln /d39/f24 /d00/hl', 'sif /d39/f24 links_count 2']);
    await copyFile(a, b);
    const content = path.join(root, 'new');
    await writeFile(content, 'rewritten by the test\n');
    // debugfs rm + write takes the freed inode and directory slot back: the directory blocks and
    // inodes stay as they were, only the file's inode and data change (a file rewritten in place).
    const picked = ['/d03/f7', '/d11/f0', '/d20/f24', '/d29/f13', '/d38/f2'];
    await debugfs(
      b,
      picked.flatMap((p) => [`rm ${p}`, `write ${content} ${p}`]),
    );
    const vm = await GuestVm.create(root, a, b);
    const [p] = await vm.partitions();
    expect(p!.status).toBe('compared');
    expect(brief(p!.files).sort()).toEqual(picked.map((x) => `M ${x} (file) [content,size]`).sort());
    // Five directories read (each file's own, the nearest below it), none changed, no walk.
    expect(p!.stats).toMatchObject({ dirs_walked: 0, dirs_searched: picked.length });

    // The hard-linked file rewritten in place (a data block only): one of its names, by the walk.
    const bs = 4096;
    await pwrite(b, (await blockOf(b, '/d39/f24', 0)) * bs, Buffer.from('FILE'));
    await vm.setCurrent(b);
    const [q] = await vm.partitions();
    const hl = (q!.files ?? []).filter((c) => !picked.includes(c.path));
    expect(brief(hl)).toEqual([expect.stringMatching(/^M \/(d39\/f24|d00\/hl) \(file\) \[content\]$/)]);
    expect(hl[0]).toMatchObject({ links: 2 });
    expect(q!.stats!.dirs_walked).toBeGreaterThan(0);
  });
});

describe('snapshot diff --files, names across a block group boundary', () => {
  it('finds the directory that ends the group before the one its files start', async () => {
    const root = await makeTempDir('clonebox-guest-groups-');
    const tree: Tree = {};
    for (let d = 0; d < 10; d++) {
      const dir: Tree = {};
      for (let f = 0; f < 30; f++) dir[`f${String(f).padStart(2, '0')}`] = `x ${d} ${f}\n`;
      tree[`d${d}`] = dir;
    }
    await writeTree(path.join(root, 'src'), tree);
    const a = path.join(root, 'a.raw');
    const b = path.join(root, 'b.raw');
    // 256 inodes per group: libext2fs packs the 310 inodes, so one directory's files run on into
    // the second group (whichever directory mke2fs -d takes eighth).
    await mkfs(a, 'ext4', '16M', path.join(root, 'src'), 1024, ['-N', '512']);
    await copyFile(a, b);
    const content = path.join(root, 'new');
    await writeFile(content, 'rewritten by the test\n');
    const all = Object.entries(tree).flatMap(([d, files]) => Object.keys(files as Tree).map((f) => `/${d}/${f}`));
    await debugfs(
      b,
      all.flatMap((p) => [`rm ${p}`, `write ${content} ${p}`]),
    );
    const vm = await GuestVm.create(root, a, b);
    const [p] = await vm.partitions();
    expect(brief(p!.files).sort()).toEqual(all.map((x) => `M ${x} (file) [content,size]`).sort());
    expect(p!.stats).toMatchObject({ dirs_searched: 10, dirs_walked: 0 });
  });
});

describe('snapshot diff --files, renames', () => {
  it('shows a file or directory moved to a new name as renamed (same inode and birth), not as removed and added', async () => {
    const root = await makeTempDir('clonebox-guest-rename-');
    await writeTree(path.join(root, 'src'), {
      a: { one: 'one\n', two: 'two\n', gone: 'gone\n' },
      b: { three: 'three\n' },
      dir: { x: 'x\n', y: 'y\n' },
    });
    const a = path.join(root, 'a.raw');
    const b = path.join(root, 'b.raw');
    await mkfs(a, 'ext4', '16M', path.join(root, 'src'));
    await copyFile(a, b);
    const content = path.join(root, 'new');
    await writeFile(content, 'a new file\n');
    // debugfs ln + unlink moves a name and leaves the inode as it was (what rename(2) does but ctime).
    await debugfs(b, [
      'ln /a/one /a/uno',
      'unlink /a/one',
      'ln /a/two /b/two',
      'unlink /a/two',
      'ln /dir /moved',
      'unlink /dir',
      'rm /a/gone',
      `write ${content} /b/fresh`,
    ]);
    const vm = await GuestVm.create(root, a, b);
    const [p] = await vm.partitions();
    expect(p!.status).toBe('compared');
    expect(brief(p!.files).sort()).toEqual(
      ['R /a/one -> /a/uno (file)', 'R /a/two -> /b/two (file)', 'R /dir -> /moved (dir)', '- /a/gone (file)', '+ /b/fresh (file)'].sort(),
    );
    expect(p!.summary).toMatchObject({ added: 1, removed: 1, renamed: 3, modified: 0, metadata: 0 });
    const { stdout } = await vm.ok(['snapshot', 'diff', 'guest', '--from', 'a', '--to', 'current', '--files']);
    expect(stdout).toContain('R /a/two -> /b/two');
  });
});

describe('snapshot diff --files, partitioned disks', () => {
  it('MBR with a primary and a logical partition (extended chain)', async () => {
    const root = await makeTempDir('clonebox-guest-mbr-');
    await writeTree(path.join(root, 's1'), { p1: { f: 'one' } });
    await writeTree(path.join(root, 's5'), { p5: { g: 'five', h: 'gone' } });
    const p1 = path.join(root, 'p1.raw');
    const p5 = path.join(root, 'p5.raw');
    await mkfs(p1, 'ext4', '16M', path.join(root, 's1'));
    await mkfs(p5, 'ext4', '16M', path.join(root, 's5'));
    const a = path.join(root, 'a.raw');
    // p1 at 1 MiB (16 MiB); extended from 18 MiB; logical p5 at 19 MiB (16 MiB)
    await partitionedDisk(a, 40 * MiB, 'label: dos\nstart=2048, size=32768, type=83\nstart=36864, type=5\nstart=38912, size=32768, type=83\n');
    await place(a, MiB, p1);
    await place(a, 19 * MiB, p5);
    const b = path.join(root, 'b.raw');
    const file = path.join(root, 'n');
    await writeFile(file, 'new\n');
    await debugfs(p1, [`write ${file} /p1/added`]);
    await debugfs(p5, ['rm /p5/h']);
    await copyFile(a, b);
    await place(b, MiB, p1);
    await place(b, 19 * MiB, p5);
    const vm = await GuestVm.create(root, a, b);
    const d = await vm.diff(['--files']);
    const g = d.disks[0]!.guest!;
    expect(g.scheme).toBe('mbr');
    expect(g.partitions.map((p) => [p.index, p.start, p.size, p.type, p.filesystem, p.status])).toEqual([
      [1, MiB, 16 * MiB, 'mbr:0x83', 'ext4', 'compared'],
      [5, 19 * MiB, 16 * MiB, 'mbr:0x83', 'ext4', 'compared'],
    ]);
    expect(brief(g.partitions[0]!.files)).toEqual(['+ /p1/added (file)']);
    expect(brief(g.partitions[1]!.files)).toEqual(['- /p5/h (file)']);
  });

  it('GPT with two ext4 partitions, an unchanged one, and an xfs one named as unsupported', async () => {
    const root = await makeTempDir('clonebox-guest-gpt-');
    const parts: string[] = [];
    for (const n of [1, 2, 3]) {
      await writeTree(path.join(root, `s${n}`), { [`in${n}`]: { f: `part ${n}`, g: 'g' } });
      parts.push(path.join(root, `p${n}.raw`));
      await mkfs(parts[n - 1]!, 'ext4', '8M', path.join(root, `s${n}`));
    }
    const a = path.join(root, 'a.raw');
    const L = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
    await partitionedDisk(
      a,
      48 * MiB,
      `label: gpt\nstart=2048, size=16384, type=${L}\nstart=18432, size=16384, type=${L}\nstart=34816, size=16384, type=${L}\nstart=51200, size=16384, type=${L}\n`,
    );
    for (const [k, p] of parts.entries()) await place(a, (1 + 8 * k) * MiB, p);
    const xfs = Buffer.alloc(512);
    xfs.write('XFSB', 0, 'latin1');
    await pwrite(a, 25 * MiB, xfs);
    const b = path.join(root, 'b.raw');
    const file = path.join(root, 'n');
    await writeFile(file, 'changed\n');
    await debugfs(parts[0]!, ['rm /in1/f', `write ${file} /in1/f`]);
    await debugfs(parts[1]!, ['sif /in2/g mode 0100755']);
    await copyFile(a, b);
    await place(b, MiB, parts[0]!);
    await place(b, 9 * MiB, parts[1]!);
    await pwrite(b, 25 * MiB + 4096, Buffer.from('xfs data changed'));
    const vm = await GuestVm.create(root, a, b);
    const g = (await vm.diff(['--files'])).disks[0]!.guest!;
    expect(g.scheme).toBe('gpt');
    expect(g.partitions.map((p) => [p.index, p.type, p.filesystem, p.status, p.message])).toEqual([
      [1, `gpt:${L.toLowerCase()}`, 'ext4', 'compared', undefined],
      [2, `gpt:${L.toLowerCase()}`, 'ext4', 'compared', undefined],
      [3, `gpt:${L.toLowerCase()}`, 'ext4', 'unchanged', undefined],
      [4, `gpt:${L.toLowerCase()}`, 'xfs', 'unsupported', 'partition 4: xfs is not supported; files not compared'],
    ]);
    expect(brief(g.partitions[0]!.files)).toEqual(['M /in1/f (file) [content,size]']);
    expect(brief(g.partitions[1]!.files)).toEqual(['m /in2/g (file) [mode]']);
  });
});

// Loop devices need root and /dev/loop-control (CI runs as root, as setup-libvirt.sh does).
const canLoop = existsSync('/dev/loop-control') && process.getuid?.() === 0;

describe('snapshot diff --files, 4Kn disk', () => {
  it.skipIf(!canLoop)('GPT with 4096-byte sectors (header at byte 4096, LBAs in 4 KiB units): both ext4 partitions found and compared', async () => {
    const root = await makeTempDir('clonebox-guest-gpt4k-');
    const parts: string[] = [];
    for (const n of [1, 2]) {
      await writeTree(path.join(root, `s${n}`), { [`in${n}`]: { f: `part ${n}`, g: 'g' } });
      parts.push(path.join(root, `p${n}.raw`));
      await mkfs(parts[n - 1]!, 'ext4', '8M', path.join(root, `s${n}`));
    }
    const a = path.join(root, 'a.raw');
    const L = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
    // In 4 KiB sectors: 1 MiB = 256, 8 MiB = 2048.
    await partitionedDisk4k(a, 24 * MiB, `label: gpt\nstart=256, size=2048, type=${L}\nstart=2304, size=2048, type=${L}\n`);
    for (const [k, p] of parts.entries()) await place(a, (1 + 8 * k) * MiB, p);
    const b = path.join(root, 'b.raw');
    const file = path.join(root, 'n');
    await writeFile(file, 'changed on 4Kn\n');
    await debugfs(parts[0]!, ['rm /in1/f', `write ${file} /in1/f`]);
    await debugfs(parts[1]!, ['sif /in2/g mode 0100700']);
    await copyFile(a, b);
    await place(b, MiB, parts[0]!);
    await place(b, 9 * MiB, parts[1]!);
    const vm = await GuestVm.create(root, a, b);
    const g = (await vm.diff(['--files'])).disks[0]!.guest!;
    expect(g.scheme).toBe('gpt');
    expect(g.warnings).toEqual([]);
    expect(g.partitions.map((p) => [p.index, p.start, p.size, p.filesystem, p.status])).toEqual([
      [1, MiB, 8 * MiB, 'ext4', 'compared'],
      [2, 9 * MiB, 8 * MiB, 'ext4', 'compared'],
    ]);
    expect(brief(g.partitions[0]!.files)).toEqual(['M /in1/f (file) [content,size]']);
    expect(brief(g.partitions[1]!.files)).toEqual(['m /in2/g (file) [mode]']);
  });
});

describe('snapshot diff --packages and --etc', () => {
  it('reports the exact dpkg package changes and a unified diff of a changed config file', async () => {
    const root = await makeTempDir('clonebox-guest-pkg-');
    const stanza = (name: string, version: string, status = 'install ok installed') =>
      `Package: ${name}\nStatus: ${status}\nPriority: optional\nArchitecture: amd64\nVersion: ${version}\nDescription: ${name}\n multi-line text\n`;
    const before = [
      stanza('bash', '5.1-2'),
      stanza('curl', '7.88.1-10'),
      stanza('gone', '1.0'),
      stanza('down', '2:1.5-1'),
      stanza('conf', '1', 'deinstall ok config-files'),
    ];
    const after = [
      stanza('bash', '5.1-2'),
      stanza('curl', '7.88.1-10+deb12u5'),
      stanza('down', '1:9.9-1'),
      stanza('nginx', '1.22.1-9'),
      stanza('conf', '1', 'deinstall ok config-files'),
    ];
    const conf = `${Array.from({ length: 20 }, (_, k) => `line ${k + 1}`).join('\n')}\n`;
    await writeTree(path.join(root, 'src'), { var: { lib: { dpkg: { status: before.join('\n') } } }, etc: { 'app.conf': conf, bin: Buffer.from([0, 1, 2]) } });
    const a = path.join(root, 'a.raw');
    const b = path.join(root, 'b.raw');
    await mkfs(a, 'ext4', '16M', path.join(root, 'src'));
    await copyFile(a, b);
    await writeFile(path.join(root, 'status'), after.join('\n'));
    await writeFile(path.join(root, 'app.conf'), conf.replace('line 10\n', 'line ten\n'));
    await writeFile(path.join(root, 'bin'), Buffer.from([0, 9, 9]));
    await debugfs(b, [
      'rm /var/lib/dpkg/status',
      `write ${path.join(root, 'status')} /var/lib/dpkg/status`,
      'rm /etc/app.conf',
      `write ${path.join(root, 'app.conf')} /etc/app.conf`,
      'rm /etc/bin',
      `write ${path.join(root, 'bin')} /etc/bin`,
    ]);
    const vm = await GuestVm.create(root, a, b);
    const [p] = await vm.partitions(['--packages', '--etc']);
    expect(p!.files).toBeUndefined();
    expect(p!.packages).toEqual([
      {
        manager: 'dpkg',
        path: '/var/lib/dpkg/status',
        changes: [
          { name: 'curl', change: 'upgraded', from: '7.88.1-10', to: '7.88.1-10+deb12u5' },
          { name: 'down', change: 'downgraded', from: '2:1.5-1', to: '1:9.9-1' },
          { name: 'gone', change: 'removed', from: '1.0', to: null },
          { name: 'nginx', change: 'installed', from: null, to: '1.22.1-9' },
        ],
      },
    ]);
    const etc = new Map((p!.etc ?? []).map((c) => [c.path, c]));
    expect([...etc.keys()].sort()).toEqual(['/etc/app.conf', '/etc/bin']);
    expect(etc.get('/etc/bin')).toMatchObject({ change: 'modified', binary: true });
    expect(etc.get('/etc/bin')!.diff).toBeUndefined();
    expect(etc.get('/etc/app.conf')!.diff).toBe(
      [
        '--- a/etc/app.conf',
        '+++ b/etc/app.conf',
        '@@ -7,7 +7,7 @@',
        'line 7',
        'line 8',
        'line 9',
        '-line 10',
        '+line ten',
        'line 11',
        'line 12',
        'line 13',
        '',
      ]
        .map((l, k) => (k >= 3 && l !== '' && !l.startsWith('-') && !l.startsWith('+') ? ` ${l}` : l))
        .join('\n'),
    );
    // Above --max-diff-bytes: named, no diff.
    const [q] = await vm.partitions(['--etc', '--max-diff-bytes', '100']);
    expect((q!.etc ?? []).find((c) => c.path === '/etc/app.conf')).toMatchObject({ too_large: true });
    // The human rendering groups by partition and kind.
    const human = await vm.ok(['snapshot', 'diff', 'guest', '--from', 'a', '--to', 'current', '--packages', '--etc']);
    expect(human.stdout).toContain('upgraded   curl 7.88.1-10 -> 7.88.1-10+deb12u5');
    expect(human.stdout).toContain('    +line ten');
  });
});
