/**
 * The archive repository end to end through the CLI, on real qcow2 images written with qemu-io: push of
 * whole trees, restore of every snapshot compared with `qemu-img compare` and checked with `qemu-img
 * check`, dedup across VMs cloned from one base, an unchanged re-push that writes only a record, a new
 * snapshot that writes little more than its blocks, encryption (unreadable without the key, the wrong
 * key named), and hostile repository files (cut, flipped bytes, huge lengths): a clear ARCHIVE_CORRUPT,
 * no crash, nothing left behind.
 */
import { readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Clonebox, CloneboxError } from '../src/index.js';
import { CliHome, parseCliError, parseJsonOutput } from './helpers/cli.js';
import { qemuCheck, qemuCompare, qemuImg, qemuIo } from './helpers/qemu.js';
import { compressibleBytes, rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

interface PushDoc {
  vm: string;
  record: string;
  snapshots: string[];
  reused: string[];
  read_bytes: number;
  new_blocks: number;
  new_raw_bytes: number;
  new_stored_bytes: number;
  written_bytes: number;
}

interface ListDoc {
  vm: string;
  name: string;
  parent: string | null;
  content_id: string;
  description: string | null;
  tags: string[];
  shadowed: boolean;
}

interface StatsDoc {
  vms: { vm: string; logical_bytes: number; unique_bytes: number; stored_bytes: number; dedup_savings_bytes: number; compression_savings_bytes: number }[];
  total: { logical_bytes: number; unique_bytes: number; stored_bytes: number; repository_bytes: number; pack_bytes: number; packs: number };
}

const MiB = 1024 * 1024;

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out.sort();
}

async function setup(prefix: string): Promise<{ root: string; h: CliHome; disks: string; repo: string }> {
  const root = await makeTempDir(`clonebox-archive-${prefix}-`);
  const h = new CliHome(path.join(root, 'home'), { timeoutMs: 120_000 });
  return { root, h, disks: path.join(root, 'disks'), repo: path.join(root, 'repo') };
}

/** Every snapshot of `vm` in home `h` against the same one restored as `copy`: same guest content, consistent images. */
async function expectRestored(h: CliHome, vm: string, copy: string, snaps: string[]): Promise<void> {
  const a = await h.json<{ name: string; disks: { path: string }[] }[]>(['snapshot', 'list', vm]);
  const b = await h.json<{ name: string; disks: { path: string }[] }[]>(['snapshot', 'list', copy]);
  for (const s of snaps) {
    const x = a.find((y) => y.name === s)!;
    const y = b.find((z) => z.name === s)!;
    expect(y, `snapshot ${s} restored`).toBeDefined();
    for (const [i, d] of x.disks.entries()) {
      const r = await qemuCompare(d.path, y.disks[i]!.path);
      expect(r.code, `${s}: ${r.stdout}`).toBe(0);
      expect((await qemuCheck(y.disks[i]!.path)).code).toBe(0);
    }
  }
}

describe('archive push / restore', () => {
  it('round-trips a whole tree, re-pushes an unchanged VM as a record only, and a new snapshot as its blocks', async () => {
    const { root, h, disks, repo } = await setup('tree');
    const r = rng(19);
    const rnd = path.join(root, 'random.bin');
    await writeFile(rnd, r.bytes(3 * MiB));
    const text = path.join(root, 'text.bin');
    await writeFile(text, compressibleBytes(r, 2 * MiB));
    await h.ok(['vm', 'create', 'web', '--size', '64M', '--dir', disks]);
    const disk = path.join(disks, 'web.qcow2');
    await qemuIo(disk, [`write -s ${rnd} 0 3M`, 'write -P 0x11 4M 2M', `write -s ${text} 8M 2M`, 'write -P 0x5a 63M 1M']);
    await h.ok(['snapshot', 'create', 'web', '--name', 'base', '--description', 'the base system', '--tags', 'os,clean']);
    await qemuIo(disk, [`write -s ${rnd} 20M 3M`, 'write -P 0x77 33k 7k', 'discard 4M 64k', 'write -z 8M 64k']);
    await h.ok(['snapshot', 'create', 'web', '--name', 'apps']);
    await qemuIo(disk, ['write -P 0x99 5M 100k']);
    await h.ok(['snapshot', 'create', 'web', '--name', 'work']);
    // A branch: back to base, then another snapshot there.
    await h.ok(['snapshot', 'restore', 'web', '--name', 'base', '--yes']);
    await qemuIo(disk, [`write -s ${text} 40M 2M`]);
    await h.ok(['snapshot', 'create', 'web', '--name', 'alt']);

    await h.ok(['archive', 'init', repo]);
    const p1 = await h.json<PushDoc>(['archive', 'push', 'web', '--repo', repo]);
    expect(p1.snapshots.sort()).toEqual(['alt', 'apps', 'base', 'work']);
    expect(p1.reused).toEqual([]);
    // The 3 MiB of random data written twice (base, apps) is stored once; the text compresses.
    expect(p1.new_raw_bytes).toBeLessThan(p1.read_bytes);
    expect(p1.new_stored_bytes).toBeLessThan(p1.new_raw_bytes);

    const list = await h.json<ListDoc[]>(['archive', 'list', 'web', '--repo', repo]);
    expect(list.map((s) => s.name).sort()).toEqual(['alt', 'apps', 'base', 'work']);
    const base = list.find((s) => s.name === 'base')!;
    expect(base.description).toBe('the base system');
    expect(base.tags).toEqual(['os', 'clean']);
    expect(list.find((s) => s.name === 'alt')!.parent).toBe('base');
    const shown = await h.json<{ line: string[]; content_id: string }>(['archive', 'show', 'web', 'work', '--repo', repo]);
    expect(shown.line).toEqual(['base', 'apps', 'work']);
    // The content ids are the snapshots' own (export and sync use the same ones).
    const local = await h.json<{ name: string; content_id: string | null }[]>(['snapshot', 'list', 'web']);
    expect(local.find((s) => s.name === 'work')!.content_id ?? shown.content_id).toBe(shown.content_id);

    // Unchanged: nothing is read, only a record is written.
    const p2 = await h.json<PushDoc>(['archive', 'push', 'web', '--repo', repo]);
    expect(p2.reused.sort()).toEqual(['alt', 'apps', 'base', 'work']);
    expect(p2.read_bytes).toBe(0);
    expect(p2.new_blocks).toBe(0);
    expect(p2.written_bytes).toBeLessThan(8 * 1024);

    // A new snapshot with 8 MiB of new random data: at most 1.1x its compressed blocks plus 64 KiB.
    await h.ok(['snapshot', 'restore', 'web', '--name', 'work', '--yes']);
    const fresh = path.join(root, 'fresh.bin');
    await writeFile(fresh, r.bytes(8 * MiB));
    await qemuIo(disk, [`write -s ${fresh} 48M 8M`]);
    await h.ok(['snapshot', 'create', 'web', '--name', 'more']);
    const before = (await filesUnder(repo)).length;
    const p3 = await h.json<PushDoc>(['archive', 'push', 'web', '--repo', repo]);
    expect(p3.reused.sort()).toEqual(['alt', 'apps', 'base', 'work']);
    expect(p3.read_bytes).toBe(8 * MiB);
    expect(p3.new_raw_bytes).toBe(8 * MiB);
    expect(p3.written_bytes).toBeLessThanOrEqual(1.1 * p3.new_stored_bytes + 64 * 1024);
    expect((await filesUnder(repo)).length).toBe(before + 4); // one pack, one index file, one layer map, one record

    // Every snapshot restores identical: the lines base..alt and base..more cover the tree.
    for (const s of ['alt', 'more']) {
      const res = await h.json<{ vm: string; snapshots: string[]; current: string }>([
        'archive',
        'restore',
        'web',
        s,
        '--as',
        `r-${s}`,
        '--dir',
        path.join(root, `d-${s}`),
        '--repo',
        repo,
      ]);
      expect(res.current).toBe(s);
      await expectRestored(h, 'web', `r-${s}`, res.snapshots);
    }
    // A restored VM's snapshots carry the archived content ids, and restoring over an existing VM is refused.
    // export writes a normal bundle of the line (verify passes, it imports identical), import stores one.
    const bundle = path.join(root, 'work.bundle');
    const ex = await h.json<{ snapshots: string[] }>(['archive', 'export', 'web', 'work', '-o', bundle, '--repo', repo]);
    expect(ex.snapshots).toEqual(['base', 'apps', 'work']);
    expect((await h.json<{ ok: boolean }>(['snapshot', 'verify', bundle])).ok).toBe(true);
    expect((await readdir(root)).filter((d) => d.startsWith('.clonebox-archive-export-'))).toEqual([]);
    const repo2 = path.join(root, 'repo2');
    await h.ok(['archive', 'init', repo2]);
    const imp = await h.json<{ vm: string; snapshots: string[] }>(['archive', 'import', bundle, '--repo', repo2]);
    expect(imp).toMatchObject({ vm: 'web', snapshots: ['base', 'apps', 'work'] });
    const ids2 = await h.json<ListDoc[]>(['archive', 'list', '--repo', repo2]);
    expect(ids2.map((s) => s.content_id).sort()).toEqual(
      list
        .filter((s) => s.name !== 'alt')
        .map((s) => s.content_id)
        .sort(),
    );
    await h.json(['archive', 'restore', 'web', 'work', '--as', 'from-bundle', '--dir', path.join(root, 'fb'), '--repo', repo2]);
    await expectRestored(h, 'web', 'from-bundle', ['base', 'apps', 'work']);
    const again = await h.cli(['archive', 'restore', 'web', 'more', '--as', 'r-more', '--repo', repo, '--json']);
    expect(parseCliError(again, true).code).toBe('VM_EXISTS');
    const unknown = await h.cli(['archive', 'restore', 'web', 'nope', '--repo', repo, '--json']);
    expect(parseCliError(unknown, true).code).toBe('ARCHIVE_SNAPSHOT_NOT_FOUND');
  }, 400_000);

  it('pushes through many packs, each finished while the next fills: a block seen again meanwhile is stored once, check --read-data passes, every snapshot restores', async () => {
    const { root, h, disks, repo } = await setup('packs');
    const r = rng(29);
    const rnd = path.join(root, 'random.bin');
    await writeFile(rnd, r.bytes(3 * MiB));
    const text = path.join(root, 'text.bin');
    await writeFile(text, compressibleBytes(r, 2 * MiB));
    await h.ok(['vm', 'create', 'db', '--size', '64M', '--dir', disks]);
    const disk = path.join(disks, 'db.qcow2');
    // The random bytes twice in one layer, 16 MiB apart: their second copy comes while the packs of the
    // first are being finished, and must be found among the blocks on their way.
    await qemuIo(disk, [`write -s ${rnd} 0 3M`, `write -s ${text} 4M 2M`, `write -s ${rnd} 16M 3M`]);
    await h.ok(['snapshot', 'create', 'db', '--name', 's1']);
    await qemuIo(disk, [`write -s ${rnd} 32M 3M`, 'write -P 0x42 40M 1M']);
    await h.ok(['snapshot', 'create', 'db', '--name', 's2']);

    await h.ok(['archive', 'init', repo]);
    // 256 KiB packs: every frame (up to 2 MiB) closes its pack.
    const small = { env: { CLONEBOX_ARCHIVE_PACK_BYTES: String(256 * 1024) } };
    const p = parseJsonOutput<PushDoc & { packs: number }>(await h.cli(['archive', 'push', 'db', '--repo', repo, '--json'], small));
    expect(p.packs).toBeGreaterThanOrEqual(3);
    expect((await filesUnder(path.join(repo, 'packs'))).length).toBe(p.packs);
    // 3 MiB random (once, though written three times), 2 MiB text, and one 64 KiB block of the pattern.
    expect(p.read_bytes).toBe(12 * MiB);
    expect(p.new_raw_bytes).toBe(5 * MiB + 64 * 1024);
    expect((await h.json<{ ok: boolean }>(['archive', 'check', '--read-data', '--repo', repo])).ok).toBe(true);
    const res = await h.json<{ snapshots: string[] }>(['archive', 'restore', 'db', 's2', '--as', 'db-copy', '--dir', path.join(root, 'copy'), '--repo', repo]);
    await expectRestored(h, 'db', 'db-copy', res.snapshots);
  }, 300_000);

  it('stores the base of VMs cloned from one base image once', async () => {
    const { root, h, disks, repo } = await setup('clones');
    const r = rng(23);
    const baseBytes = path.join(root, 'base.bin');
    await writeFile(baseBytes, r.bytes(8 * MiB));
    await qemuImg(['create', '-q', '-f', 'qcow2', path.join(root, 'golden.qcow2'), '32M']);
    await qemuIo(path.join(root, 'golden.qcow2'), [`write -s ${baseBytes} 0 8M`]);
    await h.ok(['archive', 'init', repo]);
    let own = 0;
    for (const vm of ['a', 'b', 'c']) {
      const d = path.join(disks, vm);
      await qemuImg(['create', '-q', '-f', 'qcow2', '-b', path.join(root, 'golden.qcow2'), '-F', 'qcow2', path.join(root, `${vm}.qcow2`)]);
      await h.ok(['vm', 'add', vm, '--disk', path.join(root, `${vm}.qcow2`), '--allow-backing', path.join(root, 'golden.qcow2')]);
      const mine = path.join(root, `${vm}.bin`);
      await writeFile(mine, r.bytes(MiB));
      await qemuIo(path.join(root, `${vm}.qcow2`), [`write -s ${mine} 16M 1M`]);
      await h.ok(['snapshot', 'create', vm, '--name', 's1']);
      await qemuIo(path.join(root, `${vm}.qcow2`), [`write -s ${mine} 20M 512k`]);
      await h.ok(['snapshot', 'create', vm, '--name', 's2']);
      own += MiB;
      void d;
      const p = await h.json<PushDoc>(['archive', 'push', vm, '--repo', repo]);
      if (vm !== 'a') expect(p.new_raw_bytes).toBe(MiB); // the base came with a
    }
    const st = await h.json<StatsDoc>(['archive', 'stats', '--repo', repo]);
    // Random data does not compress: the packs hold the base once and each VM's own writes, barely more.
    expect(st.total.pack_bytes).toBeLessThanOrEqual(1.05 * (8 * MiB + own));
    expect(st.total.repository_bytes).toBeLessThanOrEqual(1.05 * (8 * MiB + own));
    expect(st.vms.map((v) => v.vm)).toEqual(['a', 'b', 'c']);
    expect(st.vms[1]!.dedup_savings_bytes).toBeGreaterThanOrEqual(8 * MiB);
    const res = await h.json<{ snapshots: string[] }>(['archive', 'restore', 'c', 's2', '--as', 'c2', '--dir', path.join(root, 'c2'), '--repo', repo]);
    expect(res.snapshots).toEqual(['s1', 's2']);
    await expectRestored(h, 'c', 'c2', ['s1', 's2']);
  }, 300_000);

  it('keeps an encrypted repository unreadable without its key, and names the wrong key', async () => {
    const { root, h, disks, repo } = await setup('enc');
    const key = path.join(root, 'k');
    const other = path.join(root, 'other');
    await h.ok(['key', 'generate', '-o', key]);
    await h.ok(['key', 'generate', '-o', other]);
    await h.ok(['vm', 'create', 'secretvm', '--size', '16M', '--dir', disks]);
    const marker = Buffer.from('clonebox-archive-plaintext-marker-'.repeat(64));
    const mf = path.join(root, 'marker.bin');
    await writeFile(mf, marker);
    await qemuIo(path.join(disks, 'secretvm.qcow2'), [`write -s ${mf} 1M ${marker.length}`]);
    await h.ok(['snapshot', 'create', 'secretvm', '--name', 'confidential', '--description', 'the-secret-description']);
    await h.ok(['archive', 'init', repo, '--encrypt', '--key-file', key]);
    await h.ok(['archive', 'push', 'secretvm', '--repo', repo, '--key-file', key]);
    for (const f of await filesUnder(repo)) {
      const b = await readFile(f);
      for (const s of ['secretvm', 'confidential', 'the-secret-description', 'clonebox-archive-plaintext-marker']) {
        expect(b.includes(Buffer.from(s)), `${s} in ${f}`).toBe(false);
      }
    }
    const none = await h.cli(['archive', 'list', '--repo', repo, '--json']);
    expect(parseCliError(none, true).code).toBe('KEY_REQUIRED');
    const wrong = await h.cli(['archive', 'list', '--repo', repo, '--key-file', other, '--json']);
    const e = parseCliError(wrong, true);
    expect(e.code).toBe('WRONG_KEY');
    expect(e.message).toMatch(/wrong key/);
    const pass = path.join(root, 'pass');
    await writeFile(pass, 'a long enough passphrase\n');
    expect(parseCliError(await h.cli(['archive', 'list', '--repo', repo, '--passphrase-file', pass, '--json']), true).code).toBe('WRONG_KEY');
    const res = await h.json<{ snapshots: string[] }>([
      'archive',
      'restore',
      'secretvm',
      'confidential',
      '--as',
      'back',
      '--dir',
      path.join(root, 'back'),
      '--repo',
      repo,
      '--key-file',
      key,
    ]);
    expect(res.snapshots).toEqual(['confidential']);
    await expectRestored(h, 'secretvm', 'back', ['confidential']);
    // A passphrase repository too, and init refuses a directory that is not empty.
    const repo2 = path.join(root, 'repo2');
    await h.ok(['archive', 'init', repo2, '--encrypt', '--passphrase-file', pass]);
    await h.ok(['archive', 'push', 'secretvm', '--repo', repo2, '--passphrase-file', pass]);
    expect(parseCliError(await h.cli(['archive', 'list', '--repo', repo2, '--key-file', key, '--json']), true).code).toBe('WRONG_KEY');
    expect(parseCliError(await h.cli(['archive', 'init', repo2, '--json']), true).code).toBe('ARCHIVE_EXISTS');
  }, 300_000);
});

describe('hostile repository files', () => {
  it('refuses cut, flipped and inflated files with ARCHIVE_CORRUPT, and leaves no VM behind', async () => {
    const { root, h, disks, repo } = await setup('hostile');
    const r = rng(29);
    await h.ok(['vm', 'create', 'web', '--size', '16M', '--dir', disks]);
    const data = path.join(root, 'data.bin');
    await writeFile(data, Buffer.concat([r.bytes(MiB), compressibleBytes(r, MiB)]));
    await qemuIo(path.join(disks, 'web.qcow2'), [`write -s ${data} 0 2M`]);
    await h.ok(['snapshot', 'create', 'web', '--name', 's1']);
    await h.ok(['archive', 'init', repo]);
    await h.ok(['archive', 'push', 'web', '--repo', repo]);
    const files = (await filesUnder(repo)).filter((f) => !f.includes(`${path.sep}locks${path.sep}`));
    const kinds = ['packs', 'index', 'layers', 'snapshots', 'config'];
    for (const k of kinds)
      expect(
        files.some((f) => path.relative(repo, f).split(path.sep)[0] === k),
        k,
      ).toBe(true);
    // In this process (the library, as the CLI calls it): a CLI start per mutation made this test slow.
    const cb = await Clonebox.open({ home: h.home });
    let n = 0;
    const restoreFails = async (what: string) => {
      const err = await cb.archive.restore('web', 's1', { as: `x${n}`, dir: path.join(root, `x${n}`), repo }).then(
        () => null,
        (e: unknown) => e,
      );
      n++;
      expect(err, what).toBeInstanceOf(CloneboxError);
      const e = err as CloneboxError;
      expect(['ARCHIVE_CORRUPT', 'ARCHIVE_NOT_FOUND', 'ARCHIVE_SNAPSHOT_NOT_FOUND'], `${what}: ${e.message}`).toContain(e.code);
      return e;
    };
    for (const f of files) {
      const orig = await readFile(f);
      const rel = path.relative(repo, f);
      // Cut: at half, and just before the footer.
      for (const at of [Math.floor(orig.length / 2), orig.length - 1]) {
        await truncate(f, at);
        await restoreFails(`${rel} cut at ${at}`);
        await writeFile(f, orig);
      }
      // Flipped bytes: the magic, the first length field, the footer, and two random places.
      const spots = new Set([0, 9, orig.length - 20, orig.length - 9, r.int(0, orig.length), r.int(0, orig.length)]);
      for (const at of spots) {
        if (at < 0 || at >= orig.length) continue;
        const b = Buffer.from(orig);
        b[at] = b[at]! ^ (1 << r.int(0, 8));
        await writeFile(f, b);
        await restoreFails(`${rel} byte ${at} flipped`);
      }
      await writeFile(f, orig);
    }
    // Nothing was left behind by any of the failed restores.
    expect((await h.json<{ name: string }[]>(['vm', 'list'])).map((v) => v.name)).toEqual(['web']);
    expect((await readdir(root)).filter((d) => /^x\d+$/.test(d))).toEqual([]);
    // A footer claiming a huge trailer, an entry claiming 4 GiB: refused before anything is allocated.
    const pack = files.find((f) => f.includes(`${path.sep}packs${path.sep}`))!;
    const orig = await readFile(pack);
    const b = Buffer.from(orig);
    b.writeUInt32BE(0xffffffff, 8); // first entry's length
    await writeFile(pack, b);
    expect((await restoreFails('pack entry of 4 GiB')).message).toMatch(/entry 0/);
    await writeFile(pack, orig);
    // Intact again: it restores.
    await cb.archive.restore('web', 's1', { as: 'ok', dir: path.join(root, 'ok'), repo });
    await cb.close();
    await expectRestored(h, 'web', 'ok', ['s1']);
    expect((await stat(pack)).size).toBe(orig.length);
  }, 400_000);
});
