/**
 * Bundles end to end through the CLI, on real qcow2 chains written with qemu-io: export, import into a
 * second home, and every snapshot compared with qemu-img compare (content), qemu-img map of each layer
 * alone (allocation), qemu-img check (consistency), plus metadata and content ids.
 */

import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ExportResult } from '../src/bundle/export.js';
import { expectSameChain } from './helpers/chains.js';
import { CLI_PATH, CliHome, parseJsonOutput } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { qemuCompare, qemuImg, qemuIo, qemuMapAlone } from './helpers/qemu.js';
import { compressibleBytes, rng } from './helpers/random.js';
import { makeTempDir } from './helpers/temp.js';

interface Snap {
  name: string;
  parent: string | null;
  description: string | null;
  tags: string[];
  created_at: string;
  current: boolean;
  disks: { target: string; path: string }[];
}

type ExportDoc = ExportResult;

class Home extends CliHome {
  constructor(home: string) {
    super(home, { timeoutMs: 120_000 });
  }
  async snaps(vm: string): Promise<Snap[]> {
    return (await this.json<Snap[]>(['snapshot', 'list', vm])).reverse(); // oldest first
  }
}

async function setup(prefix: string): Promise<{ root: string; a: Home; b: Home; disksA: string; disksB: string }> {
  const root = await makeTempDir(`clonebox-bundle-${prefix}-`);
  const disksA = path.join(root, 'disks-a');
  const disksB = path.join(root, 'disks-b');
  await mkdir(disksA);
  return { root, a: new Home(path.join(root, 'home-a')), b: new Home(path.join(root, 'home-b')), disksA, disksB };
}

describe('snapshot export / import round trips', () => {
  it('keeps every snapshot of a chain with random, repeated, text, zero, discarded and unaligned writes', async () => {
    const { root, a, b, disksA, disksB } = await setup('mix');
    const r = rng(7);
    const rnd = path.join(root, 'random.bin');
    await writeFile(rnd, r.bytes(3 * 1024 * 1024));
    const text = path.join(root, 'text.bin');
    await writeFile(text, compressibleBytes(r, 2 * 1024 * 1024));
    await a.ok(['vm', 'create', 'web', '--size', '64M', '--dir', disksA]);
    const disk = path.join(disksA, 'web.qcow2');
    await qemuIo(disk, [`write -s ${rnd} 0 3M`, 'write -P 0x11 4M 2M', `write -s ${text} 8M 2M`, 'write -z 12M 1M', 'write -P 0x5a 63M 1M']);
    await a.ok(['snapshot', 'create', 'web', '--name', 'base', '--description', 'the base system', '--tags', 'os,clean']);
    // The same random data at another offset (cross-offset dedup), an unaligned write, a discard, zeros.
    await qemuIo(disk, [`write -s ${rnd} 20M 3M`, 'write -P 0x77 33k 7k', 'discard 4M 64k', 'write -z 8M 64k', 'write -P 0x11 30M 1M']);
    await a.ok(['snapshot', 'create', 'web', '--name', 'apps']);
    await qemuIo(disk, ['write -P 0x99 5M 100k', `write -s ${text} 40M 2M`]);
    await a.ok(['snapshot', 'create', 'web', '--name', 'work', '--description', 'day 1']);

    const bundle = path.join(root, 'web.bundle');
    const ex = await a.json<ExportDoc>(['snapshot', 'export', 'web', '-o', bundle]);
    expect(
      Object.keys(ex).filter((k) =>
        ['file', 'snapshots', 'logical_bytes', 'unique_bytes', 'stored_bytes', 'blocks', 'unique_blocks', 'encrypted', 'seconds'].includes(k),
      ),
    ).toHaveLength(9);
    expect(ex.snapshots).toEqual(['base', 'apps', 'work']);
    expect(ex.encrypted).toBe(false);
    expect(ex.unique_blocks).toBeLessThan(ex.blocks); // dedup is real
    expect(ex.stored_bytes).toBeLessThan(ex.unique_bytes); // compression is real
    // Zero clusters are recorded, never stored: 1M of zeros in base and 64K in apps are not data.
    expect(ex.logical_bytes).toBe(3 * 2 ** 20 + 2 * 2 ** 20 + 2 * 2 ** 20 + 2 ** 20 + (3 * 2 ** 20 + 64 * 1024 + 2 ** 20) + (128 * 1024 + 2 * 2 ** 20));
    // tar lists it.
    const list = await run('tar', ['-tf', bundle]);
    expect(list.code).toBe(0);
    expect(list.stdout.trim().split('\n')).toEqual(['header', 'meta', 'pack-00000000', 'seal']);

    const im = await b.json<{ vm: string; snapshots: string[]; bytes_written: number; seconds: number }>([
      'snapshot',
      'import',
      'copy',
      bundle,
      '--dir',
      disksB,
    ]);
    expect(im.vm).toBe('copy');
    expect(im.snapshots).toEqual(['base', 'apps', 'work']);
    expect(im.bytes_written).toBeGreaterThan(0);
    await expectSameChain(a.home, 'web', b.home, 'copy', { sameLayers: true });
    const shown = await b.json<{ current: string; disks: { path: string }[] }>(['vm', 'show', 'copy']);
    expect(shown.current).toBe('work');
    expect(shown.disks[0]!.path).toBe(path.join(disksB, 'copy.qcow2'));
    // The new writable overlay is empty and stands on the last layer.
    expect(await qemuMapAlone(shown.disks[0]!.path)).toEqual([{ offset: 0, length: 64 * 2 ** 20, kind: 'unallocated' }]);
    const info = JSON.parse((await qemuImg(['info', '--output=json', shown.disks[0]!.path])).stdout) as { 'backing-filename': string };
    expect(info['backing-filename']).toBe('copy@work.qcow2');
    expect((await readdir(disksB)).sort()).toEqual(['copy.qcow2', 'copy@apps.qcow2', 'copy@base.qcow2', 'copy@work.qcow2']);
    expect((await b.snaps('copy')).map((s) => s.parent)).toEqual([null, 'base', 'apps']);

    // verify and inspect agree with the export.
    const v = await a.json<{ ok: boolean; snapshots: string[]; blocks_checked: number; errors: unknown[] }>(['snapshot', 'verify', bundle]);
    expect(v).toMatchObject({ ok: true, snapshots: ['base', 'apps', 'work'], blocks_checked: ex.unique_blocks, errors: [] });
    const ins = await a.json<{ logical_bytes: number; unique_bytes: number; stored_bytes: number; snapshots: { name: string; description: string | null }[] }>([
      'snapshot',
      'inspect',
      bundle,
    ]);
    expect(ins).toMatchObject({ logical_bytes: ex.logical_bytes, unique_bytes: ex.unique_bytes, stored_bytes: ex.stored_bytes });
    expect(ins.snapshots.map((s) => [s.name, s.description])).toEqual([
      ['base', 'the base system'],
      ['apps', null],
      ['work', 'day 1'],
    ]);

    // A branch: restore base, snapshot again; export --name picks that line only.
    await a.ok(['snapshot', 'restore', 'web', '--name', 'base', '--yes']);
    await qemuIo(disk, ['write -P 0x42 10M 256k']);
    await a.ok(['snapshot', 'create', 'web', '--name', 'other']);
    const ex2 = await a.json<ExportDoc>(['snapshot', 'export', 'web', '--name', 'apps', '-o', path.join(root, 'apps.bundle')]);
    expect(ex2.snapshots).toEqual(['base', 'apps']);
    const ex3 = await a.json<ExportDoc>(['snapshot', 'export', 'web', '-o', path.join(root, 'other.bundle')]);
    expect(ex3.snapshots).toEqual(['base', 'other']);
    await b.ok(['snapshot', 'import', 'branch', path.join(root, 'other.bundle'), '--dir', disksB]);
    await expectSameChain(a.home, 'web', b.home, 'branch', { names: ['base', 'other'], sameLayers: true });
  });

  it('handles two disks with 4K and 256K clusters, compressed clusters and a disk size that is not a cluster multiple', async () => {
    const { root, a, b, disksA, disksB } = await setup('disks');
    const d1 = path.join(disksA, 'one.qcow2');
    const d2 = path.join(disksA, 'two.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', d1, '20M']);
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=262144', d2, `${33 * 1024 * 1024 + 3 * 512}`]);
    const text = path.join(root, 'text.bin');
    await writeFile(text, compressibleBytes(rng(3), 1024 * 1024));
    await qemuIo(d1, ['write -P 0x01 0 100k', 'write -P 0x02 1M 4k', 'write -z 2M 12k', `write -c -s ${text} 4M 64k`, 'write -P 0x03 19M 1M']);
    await qemuIo(d2, ['write -P 0x04 0 1M', 'write -P 0x05 300k 10k', `write -s ${text} 5M 1M`, 'write -P 0x06 33M 1536', 'write -z 8M 512k']);
    await a.ok(['vm', 'add', 'pair', '--disk', d1, '--disk', d2]);
    await a.ok(['snapshot', 'create', 'pair', '--name', 's1']);
    const cur = await a.json<{ disks: { path: string }[] }>(['vm', 'show', 'pair']);
    await qemuIo(cur.disks[0]!.path, ['write -P 0x07 50k 8k', 'write -z 19M 4k']);
    await qemuIo(cur.disks[1]!.path, ['write -P 0x08 256k 100k', `write -s ${text} 12M 1M`, 'discard 0 256k']);
    await a.ok(['snapshot', 'create', 'pair', '--name', 's2']);
    const bundle = path.join(root, 'pair.bundle');
    const ex = await a.json<ExportDoc>(['snapshot', 'export', 'pair', '-o', bundle]);
    expect(ex.unique_blocks).toBeLessThan(ex.blocks);
    await b.ok(['snapshot', 'import', 'pair', bundle, '--dir', disksB]);
    await expectSameChain(a.home, 'pair', b.home, 'pair', { sameLayers: true });
    expect((await readdir(disksB)).sort()).toEqual([
      'pair-vdb.qcow2',
      'pair-vdb@s1.qcow2',
      'pair-vdb@s2.qcow2',
      'pair.qcow2',
      'pair@s1.qcow2',
      'pair@s2.qcow2',
    ]);
    const info = JSON.parse((await qemuImg(['info', '--output=json', path.join(disksB, 'pair-vdb@s2.qcow2')])).stdout) as {
      'cluster-size': number;
      'virtual-size': number;
    };
    expect(info['cluster-size']).toBe(262144);
    expect(info['virtual-size']).toBe(33 * 1024 * 1024 + 3 * 512);
  });

  it('carries a root that stands on an external base image as full content, including extended-L2 subclusters', async () => {
    const { a, b, disksA, disksB } = await setup('base');
    const base = path.join(disksA, 'golden.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', base, '16M']);
    await qemuIo(base, ['write -P 0x31 0 2M', 'write -P 0x32 8M 1M', 'write -z 12M 1M']);
    const top = path.join(disksA, 'vm.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', '-b', 'golden.qcow2', '-F', 'qcow2', top]);
    // Subcluster writes: parts of a cluster come from the base, parts from the top.
    await qemuIo(top, ['write -P 0x41 68k 4k', 'write -P 0x42 1M 2k', 'write -z 8M 64k', 'write -P 0x43 14M 64k']);
    await a.ok(['vm', 'add', 'ext', '--disk', top]);
    await a.ok(['snapshot', 'create', 'ext', '--name', 'first']);
    const cur = await a.json<{ disks: { path: string }[] }>(['vm', 'show', 'ext']);
    await qemuIo(cur.disks[0]!.path, ['write -P 0x51 0 64k', 'write -P 0x31 3M 1M']);
    await a.ok(['snapshot', 'create', 'ext', '--name', 'second']);
    const bundle = path.join(disksA, '..', 'ext.bundle');
    await a.ok(['snapshot', 'export', 'ext', '-o', bundle]);
    await b.ok(['snapshot', 'import', 'ext', bundle, '--dir', disksB]);
    await expectSameChain(a.home, 'ext', b.home, 'ext', { sameLayers: true });
    // Self-contained: the imported root has no backing file.
    const info = JSON.parse((await qemuImg(['info', '--output=json', path.join(disksB, 'ext@first.qcow2')])).stdout) as { 'backing-filename'?: string };
    expect(info['backing-filename']).toBeUndefined();
  });

  it('streams through pipes: export -o - | import -', async () => {
    const { root, a, b, disksA, disksB } = await setup('pipe');
    await a.ok(['vm', 'create', 'p', '--size', '32M', '--dir', disksA]);
    const disk = path.join(disksA, 'p.qcow2');
    const rnd = path.join(root, 'r.bin');
    await writeFile(rnd, rng(11).bytes(5 * 1024 * 1024));
    await qemuIo(disk, [`write -s ${rnd} 1M 5M`, 'write -P 0x66 10M 3M']);
    await a.ok(['snapshot', 'create', 'p', '--name', 'one']);
    await qemuIo(disk, [`write -s ${rnd} 20M 5M`]);
    await a.ok(['snapshot', 'create', 'p', '--name', 'two']);
    const env = { ...process.env, CLONEBOX_BUNDLE_PACK_BYTES: String(1024 * 1024), CLONEBOX_BUNDLE_FRAME_BYTES: String(256 * 1024) };
    const cmd =
      `"${process.execPath}" "${CLI_PATH}" --home "${a.home}" snapshot export p -o - --json 2>"${root}/export.json" | ` +
      `"${process.execPath}" "${CLI_PATH}" --home "${b.home}" snapshot import p - --dir "${disksB}" --json`;
    const r = await run('bash', ['-o', 'pipefail', '-c', cmd], { env, timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ vm: 'p', snapshots: ['one', 'two'] });
    const ex = JSON.parse(await readFile(path.join(root, 'export.json'), 'utf8')) as ExportDoc;
    expect(ex.file).toBe('-');
    expect(ex.unique_bytes).toBeLessThan(ex.logical_bytes);
    await expectSameChain(a.home, 'p', b.home, 'p', { sameLayers: true });
    // A multi-pack bundle from stdin verifies too.
    const file = path.join(root, 'p.bundle');
    await run('bash', ['-c', `"${process.execPath}" "${CLI_PATH}" --home "${a.home}" snapshot export p -o - > "${file}"`], { env });
    const list = (await run('tar', ['-tf', file])).stdout.trim().split('\n');
    expect(list.length).toBeGreaterThan(5);
    const v = await run('bash', ['-c', `"${process.execPath}" "${CLI_PATH}" snapshot verify - --json < "${file}"`]);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true });
  });

  it('--since carries only the new layers and applies on top of the base, found by content id', async () => {
    const { root, a, b, disksA, disksB } = await setup('since');
    await a.ok(['vm', 'create', 'dev', '--size', '32M', '--dir', disksA]);
    const disk = path.join(disksA, 'dev.qcow2');
    const rnd = path.join(root, 'r.bin');
    await writeFile(rnd, rng(5).bytes(4 * 1024 * 1024));
    await qemuIo(disk, [`write -s ${rnd} 0 4M`]);
    await a.ok(['snapshot', 'create', 'dev', '--name', 's1']);
    await qemuIo(disk, ['write -P 0x21 8M 1M']);
    await a.ok(['snapshot', 'create', 'dev', '--name', 's2']);
    await a.ok(['snapshot', 'export', 'dev', '-o', path.join(root, 'full.bundle')]);
    await b.ok(['snapshot', 'import', 'dev', path.join(root, 'full.bundle'), '--dir', disksB]);

    await qemuIo(disk, ['write -P 0x22 12M 512k']);
    await a.ok(['snapshot', 'create', 'dev', '--name', 's3']);
    await qemuIo(disk, [`write -s ${rnd} 16M 1M`, 'write -z 0 64k']);
    await a.ok(['snapshot', 'create', 'dev', '--name', 's4']);
    const inc = path.join(root, 'inc.bundle');
    const ex = await a.json<ExportDoc & { since: string }>(['snapshot', 'export', 'dev', '--since', 's2', '-o', inc]);
    expect(ex.snapshots).toEqual(['s3', 's4']);
    // Only the new layers: 512K of pattern + 1M already known random data (deduped) + a zero cluster.
    expect(ex.logical_bytes).toBe(512 * 1024 + 1024 * 1024);
    expect(ex.stored_bytes).toBeLessThan(1024 * 1024 + 64 * 1024);

    // A VM that lacks the base: refused, naming it, nothing written.
    const other = path.join(root, 'disks-c');
    const r1 = await b.cli(['snapshot', 'import', 'fresh', inc, '--dir', other, '--json']);
    expect(r1.code).toBe(1);
    const e1 = parseJsonOutput<{ error: { code: string; message: string } }>(r1).error;
    expect(e1.code).toBe('BASE_MISSING');
    expect(e1.message).toContain('s2');
    expect(await readdir(path.join(b.home, 'vms'))).toEqual(['dev']);
    // A VM with a snapshot called s2 but other content: refused too (identity is content, not name).
    await b.ok(['vm', 'create', 'impostor', '--size', '32M', '--dir', other]);
    await qemuIo(path.join(other, 'impostor.qcow2'), ['write -P 0x01 0 1M']);
    await b.ok(['snapshot', 'create', 'impostor', '--name', 's1']);
    await b.ok(['snapshot', 'create', 'impostor', '--name', 's2']);
    const before = (await readdir(other)).sort();
    const r2 = await b.cli(['snapshot', 'import', 'impostor', inc, '--json']);
    expect(parseJsonOutput<{ error: { code: string } }>(r2).error.code).toBe('BASE_MISSING');
    expect((await readdir(other)).sort()).toEqual(before);

    // The VM holding s2: the new snapshots land on it, and the clean current state fast-forwards.
    const im = await b.json<{ snapshots: string[]; current: string; base: string }>(['snapshot', 'import', 'dev', inc]);
    expect(im).toMatchObject({ snapshots: ['s3', 's4'], current: 's4', base: 's2' });
    await expectSameChain(a.home, 'dev', b.home, 'dev', { sameLayers: true });
    const cmp = await qemuCompare(path.join(disksB, 'dev.qcow2'), path.join(disksA, 'dev@s4.qcow2'));
    expect(cmp.code).toBe(0);
    // The same bundle again: its snapshots exist now.
    const r3 = await b.cli(['snapshot', 'import', 'dev', inc, '--json']);
    expect(parseJsonOutput<{ error: { code: string } }>(r3).error.code).toBe('SNAPSHOT_EXISTS');
  });

  it('serves blocks placed again long after their frame (read back from an earlier layer, re-read from the bundle file, or from the spool for a pipe), plain and encrypted', async () => {
    const { root, a, b, disksA } = await setup('reuse');
    const rnd = path.join(root, 'r.bin');
    await writeFile(rnd, rng(21).bytes(40 * 1024 * 1024));
    // 64 KiB clusters: the importer reads repeated blocks back from the layer it wrote them to. 128 KiB
    // clusters assemble blocks in memory, so repeated blocks come from their frame again (from the
    // bundle file, or the spool for a pipe).
    for (const [vm, cs] of [
      ['big', '64K'],
      ['wide', '128K'],
    ] as const) {
      await a.ok(['vm', 'create', vm, '--size', '96M', '--cluster-size', cs, '--dir', disksA]);
      const disk = path.join(disksA, `${vm}.qcow2`);
      await qemuIo(disk, [`write -s ${rnd} 0 40M`]);
      await a.ok(['snapshot', 'create', vm, '--name', 'one']);
      // The first 4 MiB again, at the same place and elsewhere: their frames left the importer's cache long ago.
      await qemuIo(disk, [`write -s ${rnd} 0 4M`, `write -s ${rnd} 60M 4M`]);
      await a.ok(['snapshot', 'create', vm, '--name', 'two']);
    }
    const key = path.join(root, 'k.key');
    await a.ok(['key', 'generate', '-o', key]);
    for (const [vm, enc] of [
      ['big', false],
      ['big', true],
      ['wide', false],
      ['wide', true],
    ] as const) {
      const tag = `${vm}-${enc}`;
      const file = path.join(root, `${tag}.bundle`);
      const extra = enc ? ['--encrypt', '--key-file', key] : [];
      const ex = await a.json<ExportDoc>(['snapshot', 'export', vm, '-o', file, ...extra]);
      expect(ex.unique_bytes).toBe(40 * 1024 * 1024);
      const keyArgs = enc ? ['--key-file', key] : [];
      await b.ok(['snapshot', 'import', `file-${tag}`, file, '--dir', path.join(root, `out-file-${tag}`), ...keyArgs]);
      await expectSameChain(a.home, vm, b.home, `file-${tag}`, { sameLayers: true });
      const piped = await run('bash', [
        '-c',
        `"${process.execPath}" "${CLI_PATH}" --home "${b.home}" snapshot import pipe-${tag} - --dir "${path.join(root, `out-pipe-${tag}`)}" ${keyArgs.join(' ')} < "${file}"`,
      ]);
      expect(piped.code, piped.stderr).toBe(0);
      await expectSameChain(a.home, vm, b.home, `pipe-${tag}`, { sameLayers: true });
      expect((await readdir(path.join(root, `out-pipe-${tag}`))).filter((f) => f.startsWith('.'))).toEqual([]);
    }
  });

  it('encrypts everything readable, and tells a wrong key from a modified byte before writing anything', async () => {
    const { root, a, b, disksA, disksB } = await setup('enc');
    await a.ok(['vm', 'create', 'secretvmname', '--size', '16M', '--dir', disksA]);
    await qemuIo(path.join(disksA, 'secretvmname.qcow2'), ['write -P 0x33 0 2M']);
    await a.ok([
      'snapshot',
      'create',
      'secretvmname',
      '--name',
      'hiddensnapname',
      '--description',
      'confidential-description-text',
      '--tags',
      'privatetagvalue',
    ]);
    const pw = path.join(root, 'pw');
    await writeFile(pw, 'correct horse battery staple\n');
    const key = path.join(root, 'k.key');
    await a.ok(['key', 'generate', '-o', key]);
    expect((await readFile(key)).length).toBe(32);
    const again = await a.cli(['key', 'generate', '-o', key]);
    expect(again.code).toBe(1); // never overwrites a key

    for (const [label, flag, file] of [
      ['pass', '--passphrase-file', pw],
      ['key', '--key-file', key],
    ] as const) {
      const bundle = path.join(root, `${label}.bundle`);
      const ex = await a.json<ExportDoc>(['snapshot', 'export', 'secretvmname', '-o', bundle, '--encrypt', flag, file]);
      expect(ex.encrypted).toBe(true);
      const bytes = await readFile(bundle);
      for (const secret of ['secretvmname', 'hiddensnapname', 'confidential-description-text', 'privatetagvalue']) {
        expect(bytes.includes(Buffer.from(secret)), `${secret} readable in ${label} bundle`).toBe(false);
      }
      // No key, wrong key: refused with their own messages, nothing written.
      const none = await b.cli(['snapshot', 'import', 'x', bundle, '--dir', disksB, '--json']);
      expect(parseJsonOutput<{ error: { code: string } }>(none).error.code).toBe('KEY_REQUIRED');
      const wrongFile = path.join(root, `wrong-${label}`);
      if (label === 'pass') await writeFile(wrongFile, 'correct horse battery stapler\n');
      else await a.ok(['key', 'generate', '-o', wrongFile]);
      const wrong = await b.cli(['snapshot', 'import', 'x', bundle, '--dir', disksB, flag, wrongFile, '--json']);
      expect(wrong.code).toBe(1);
      const we = parseJsonOutput<{ error: { code: string; message: string } }>(wrong).error;
      expect(we.code).toBe('WRONG_KEY');
      expect(we.message).toMatch(/wrong (passphrase|key)/);
      // A modified byte in the middle of the pack: detected as damage, not as a wrong key.
      const mod = Buffer.from(bytes);
      const at = Math.floor(mod.length / 2);
      mod[at] = mod[at]! ^ 0x40;
      const modFile = path.join(root, `mod-${label}.bundle`);
      await writeFile(modFile, mod);
      const damaged = await b.cli(['snapshot', 'import', 'x', modFile, '--dir', disksB, flag, file, '--json']);
      expect(damaged.code).toBe(1);
      const de = parseJsonOutput<{ error: { code: string; message: string } }>(damaged).error;
      expect(de.code).toBe('BUNDLE_CORRUPT');
      expect(de.message).toMatch(/damaged or was modified/);
      expect(await readdir(disksB).catch(() => [])).toEqual([]);
      expect(await readdir(path.join(b.home, 'vms')).catch(() => [])).not.toContain('x');
      // The right key imports it.
      await b.ok(['snapshot', 'import', `ok-${label}`, bundle, '--dir', path.join(root, `out-${label}`), flag, file]);
      await expectSameChain(a.home, 'secretvmname', b.home, `ok-${label}`, { sameLayers: true });
      const ins = await a.json<{ readable: boolean; snapshots: unknown[] }>(['snapshot', 'inspect', bundle]);
      expect(ins.readable).toBe(false);
      expect(ins.snapshots).toEqual([]);
    }
  });
});
