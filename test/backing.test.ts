/**
 * Attack 3 of issue #11: an image's backing file is followed anywhere (an absolute path, `..`, a
 * device, a format sniffed), so `vm add` and then `export`/`share` carry a host file's bytes to others.
 * Real images made with qemu-img (and, for a header without a backing format, clonebox's own writer).
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { CliHome, parseJsonOutput } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { qemuImg } from './helpers/qemu.js';
import { makeTempDir } from './helpers/temp.js';

let root = '';
let h: CliHome;

function errorOf(r: { stdout: string }): { code: string; message: string } {
  return parseJsonOutput<{ error: { code: string; message: string } }>(r as never).error;
}

/** A qcow2 overlay `top` (16M) on `backing` as its header names it, with the given format (null: none recorded). */
async function overlay(top: string, backing: string, format: 'qcow2' | 'raw' | null): Promise<void> {
  await qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', format ?? 'qcow2', top, '16M']);
  if (format !== null) return;
  // qemu-img no longer writes a backing name without a format (older versions and other tools did):
  // turn the backing-format header extension into the end of the extension list.
  const img = await readFile(top);
  const at = img.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]));
  expect(at).toBeGreaterThan(0);
  img.fill(0, at, at + 4);
  await writeFile(top, img);
}

beforeAll(async () => {
  root = await makeTempDir('clonebox-backing-');
  h = new CliHome(path.join(root, 'home'), { timeoutMs: 60_000 });
  // A host secret outside the VM's directory, and the VM's directory with a proper base.
  await writeFile(path.join(root, 'id_ed25519'), 'PRIVATE KEY MATERIAL\n'.repeat(100));
  await mkdir(path.join(root, 'vm', 'sub'), { recursive: true });
  await qemuImg(['create', '-q', '-f', 'qcow2', path.join(root, 'vm', 'base.qcow2'), '16M']);
});

describe('vm add refuses backing files outside the image directory, devices and unrecorded formats', () => {
  it('refuses an absolute backing path to a host file (the attack), and accepts it when named with --allow-backing', async () => {
    const top = path.join(root, 'vm', 'abs.qcow2');
    const secret = path.join(root, 'id_ed25519');
    await overlay(top, secret, 'raw');
    const r = await h.cli(['vm', 'add', 'abs', '--disk', top, '--json']);
    expect(r.code).toBe(1);
    const e = errorOf(r);
    expect(e.code).toBe('BACKING_REFUSED');
    expect(e.message).toContain(secret);
    expect(r.stderr).toContain(`--allow-backing ${secret}`);
    const ok = await h.json<{ disks: { backing_chain: { path: string; format: string; allowed_because: string | null }[] }[] }>([
      'vm',
      'add',
      'abs',
      '--disk',
      top,
      '--allow-backing',
      secret,
    ]);
    expect(ok.disks[0]!.backing_chain.map((l) => [l.path, l.format])).toEqual([
      [top, 'qcow2'],
      [secret, 'raw'],
    ]);
    expect(ok.disks[0]!.backing_chain[0]!.allowed_because).toMatch(/absolute/);
  });

  it('refuses a relative path that leaves the directory, directly or through a symlink', async () => {
    const top = path.join(root, 'vm', 'sub', 'up.qcow2');
    await overlay(top, '../../id_ed25519', 'raw');
    expect(errorOf(await h.cli(['vm', 'add', 'up', '--disk', top, '--json'])).code).toBe('BACKING_REFUSED');
    await symlink(path.join(root, 'id_ed25519'), path.join(root, 'vm', 'looks-local.img'));
    const top2 = path.join(root, 'vm', 'link.qcow2');
    await overlay(top2, 'looks-local.img', 'raw');
    const e = errorOf(await h.cli(['vm', 'add', 'link', '--disk', top2, '--json']));
    expect(e.code).toBe('BACKING_REFUSED');
    expect(e.message).toMatch(/leaves the directory/);
  });

  it('refuses a device and a FIFO, and a backing file whose format is not recorded', async () => {
    await symlink('/dev/zero', path.join(root, 'vm', 'zero.img'));
    const top = path.join(root, 'vm', 'dev.qcow2');
    await overlay(top, '/dev/zero', 'raw');
    expect(errorOf(await h.cli(['vm', 'add', 'dev', '--disk', top, '--json'])).code).toBe('BACKING_REFUSED');
    expect((await run('mkfifo', [path.join(root, 'vm', 'fifo.img')])).code).toBe(0);
    const top2 = path.join(root, 'vm', 'fifo.qcow2');
    await overlay(top2, 'fifo.img', 'raw');
    const e2 = errorOf(await h.cli(['vm', 'add', 'fifo', '--disk', top2, '--json']));
    expect(e2.code).toBe('BACKING_REFUSED');
    expect(e2.message).toMatch(/not a regular file/);
    const top3 = path.join(root, 'vm', 'sniffed.qcow2');
    await overlay(top3, 'base.qcow2', null);
    const e3 = errorOf(await h.cli(['vm', 'add', 'sniffed', '--disk', top3, '--json']));
    expect(e3.code).toBe('BACKING_REFUSED');
    expect(e3.message).toMatch(/without a format/);
  });

  it('refuses a missing backing file with BACKING_MISSING, and accepts a chain inside the directory', async () => {
    const top = path.join(root, 'vm', 'orphan.qcow2');
    await overlay(top, 'gone.qcow2', 'qcow2');
    const e = errorOf(await h.cli(['vm', 'add', 'orphan', '--disk', top, '--json']));
    expect(e.code).toBe('BACKING_MISSING');
    expect(e.message).toContain('gone.qcow2');
    const good = path.join(root, 'vm', 'sub', 'good.qcow2');
    await overlay(good, '../base.qcow2', 'qcow2');
    // The tree is the top image's directory: sub/ cannot reach its parent...
    expect(errorOf(await h.cli(['vm', 'add', 'good', '--disk', good, '--json'])).code).toBe('BACKING_REFUSED');
    // ...while an image beside its base can, and its chain is shown.
    const fine = path.join(root, 'vm', 'fine.qcow2');
    await overlay(fine, 'base.qcow2', 'qcow2');
    const r = await h.ok(['vm', 'add', 'fine', '--disk', fine]);
    expect(r.stdout).toContain(`${fine} (qcow2) on ${path.join(root, 'vm', 'base.qcow2')} (qcow2)`);
  });

  it('export checks a root on a base again: a header changed after vm add is refused, an allowed backing file is remembered', async () => {
    // Registered with a proper chain, then the header is pointed at the host secret.
    const top = path.join(root, 'vm', 'later.qcow2');
    await overlay(top, 'base.qcow2', 'qcow2');
    await h.ok(['vm', 'add', 'later', '--disk', top]);
    await h.ok(['snapshot', 'create', 'later', '--name', 's1']);
    const secret = path.join(root, 'id_ed25519');
    await qemuImg(['rebase', '-q', '-u', '-b', secret, '-F', 'raw', path.join(root, 'vm', 'later@s1.qcow2')]);
    const r = await h.cli(['snapshot', 'export', 'later', '-o', path.join(root, 'later.cbx'), '--json']);
    expect(r.code).toBe(1);
    expect(errorOf(r).code).toBe('BACKING_REFUSED');
    expect(existsSync(path.join(root, 'later.cbx'))).toBe(false);
    // The VM added with --allow-backing exports (the secret is part of that disk, as its owner said).
    await h.ok(['snapshot', 'create', 'abs', '--name', 's1']);
    await h.ok(['snapshot', 'export', 'abs', '-o', path.join(root, 'abs.cbx')]);
  });

  it('image info shows the chain and where it stops being followed', async () => {
    const abs = path.join(root, 'vm', 'info-abs.qcow2');
    await overlay(abs, path.join(root, 'id_ed25519'), 'raw');
    const info = await h.json<{ backing_chain: { path: string; refused: string | null }[] }>(['image', 'info', abs]);
    expect(info.backing_chain).toHaveLength(1);
    expect(info.backing_chain[0]!.refused).toMatch(/absolute/);
    const fine = await h.json<{ backing_chain: { path: string; refused: string | null }[] }>(['image', 'info', path.join(root, 'vm', 'fine.qcow2')]);
    expect(fine.backing_chain.map((l) => l.path)).toEqual([path.join(root, 'vm', 'fine.qcow2'), path.join(root, 'vm', 'base.qcow2')]);
    const human = await h.ok(['image', 'info', path.join(root, 'vm', 'orphan.qcow2')]);
    expect(human.stdout).toMatch(/not followed: backing file .*gone\.qcow2 is missing/);
  });
});
