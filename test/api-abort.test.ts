/**
 * Aborting long operations through the library's AbortSignal: export, import and sync are stopped
 * mid-way (from onProgress, after the first bytes) and must reject with ABORTED leaving nothing behind
 * (no temporary or output file; no VM, layer, record, journal or disks directory; nothing registered
 * and no listed pull temporaries). The CLI half checks that SIGINT takes the same path.
 */

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clonebox, CloneboxError, type ProgressEvent } from '../src/index.js';
import { CLI_PATH } from './helpers/cli.js';
import { qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

let root = '';
let bundle = '';
const MiB = 1024 * 1024;

/** Every file and directory under `dir` (relative paths), or [] when it does not exist. */
async function tree(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      out.push(path.relative(dir, p) + (e.isDirectory() ? '/' : ''));
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out.sort();
}

async function expectAborted(p: Promise<unknown>): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CloneboxError);
  expect((err as CloneboxError).code).toBe('ABORTED');
}

/** Aborts `ac` at the first progress report with some bytes done; counts the reports. */
function abortAtFirstBytes(ac: AbortController): { onProgress: (p: ProgressEvent) => void; seen: () => number } {
  let n = 0;
  return {
    onProgress: (p) => {
      n++;
      if (p.done > 0) ac.abort();
    },
    seen: () => n,
  };
}

beforeAll(async () => {
  root = await makeTempDir('clonebox-api-abort-');
  // Small packs and frames: many progress reports (and packs) from a few MiB.
  process.env.CLONEBOX_BUNDLE_PACK_BYTES = String(256 * 1024);
  process.env.CLONEBOX_BUNDLE_FRAME_BYTES = String(128 * 1024);
  const cb = await Clonebox.open({ home: path.join(root, 'home-a') });
  try {
    const vm = await cb.vms.create('src', { size: '32M', dir: path.join(root, 'disks-a') });
    const data = path.join(root, 'data');
    await writeFile(data, rng(7).bytes(8 * MiB));
    await qemuIo(vm.disks[0]!.path, [`write -s ${data} 0 8M`]);
    await cb.snapshots.create('src', { name: 'one' });
    await qemuIo(vm.disks[0]!.path, ['write -P 0x3 16M 2M']);
    await cb.snapshots.create('src', { name: 'two' });
    bundle = path.join(root, 'src.bundle');
    await cb.bundles.export('src', { output: bundle });
  } finally {
    await cb.close();
  }
}, 300_000);

afterAll(async () => {
  delete process.env.CLONEBOX_BUNDLE_PACK_BYTES;
  delete process.env.CLONEBOX_BUNDLE_FRAME_BYTES;
  await cleanupTempDirs();
});

describe('abort through the signal', () => {
  it('an aborted export leaves no temporary and no output file', async () => {
    const out = path.join(root, 'out');
    await mkdir(out);
    const cb = await Clonebox.open({ home: path.join(root, 'home-a') });
    try {
      const ac = new AbortController();
      const p = abortAtFirstBytes(ac);
      await expectAborted(cb.bundles.export('src', { output: path.join(out, 'x.bundle'), signal: ac.signal, onProgress: p.onProgress }));
      expect(p.seen()).toBeGreaterThan(0);
      expect(await tree(out)).toEqual([]);
      // The VM is unlocked and unchanged: the same export runs to the end afterwards.
      const r = await cb.bundles.export('src', { output: path.join(out, 'x.bundle') });
      expect(r.snapshots).toEqual(['one', 'two']);
    } finally {
      await cb.close();
    }
  }, 120_000);

  it('an aborted import leaves no VM, layer, record, journal or disks directory', async () => {
    const home = path.join(root, 'home-b');
    const disks = path.join(root, 'disks-b');
    const cb = await Clonebox.open({ home });
    try {
      const ac = new AbortController();
      const p = abortAtFirstBytes(ac);
      await expectAborted(cb.bundles.import('dst', bundle, { dir: disks, signal: ac.signal, onProgress: p.onProgress }));
      expect(p.seen()).toBeGreaterThan(0);
      expect(await cb.vms.list()).toEqual([]);
      expect(await tree(path.join(home, 'vms'))).toEqual([]);
      expect(existsSync(disks)).toBe(false);
      // From a stream too (the CLI's stdin), aborted before a byte arrives: the stalled read gives way.
      const { PassThrough } = await import('node:stream');
      const pipe = new PassThrough();
      const ac2 = new AbortController();
      const importing = cb.bundles.import('dst', pipe, { dir: disks, signal: ac2.signal });
      setTimeout(() => ac2.abort(), 200);
      await expectAborted(importing);
      expect(await tree(path.join(home, 'vms'))).toEqual([]);
      expect(existsSync(disks)).toBe(false);
    } finally {
      await cb.close();
    }
  }, 120_000);

  it('an aborted verify rejects with ABORTED instead of reporting the bundle', async () => {
    const cb = await Clonebox.open({ home: path.join(root, 'home-a'), recover: false });
    try {
      const ac = new AbortController();
      const p = abortAtFirstBytes(ac);
      await expectAborted(cb.bundles.verify(bundle, { signal: ac.signal, onProgress: p.onProgress }));
      expect(p.seen()).toBeGreaterThan(0);
      expect((await cb.bundles.verify(bundle)).ok).toBe(true);
    } finally {
      await cb.close();
    }
  }, 120_000);

  it('an aborted sync registers nothing and lists no temporaries', async () => {
    const homeA = path.join(root, 'home-a');
    const homeC = path.join(root, 'home-c');
    const a = await Clonebox.open({ home: homeA });
    const c = await Clonebox.open({ home: homeC });
    const dht = await a.dht.bootstrap({ port: 0 });
    const serving = new AbortController();
    let sharer: Promise<unknown> | null = null;
    try {
      const { invite } = await a.teams.create('t', { name: 'alice', bootstrap: [dht.bootstrap] });
      await a.sync.share('src', { team: 't' });
      await c.teams.join('t', { invite, name: 'carol' });
      sharer = a.sync.run({ team: 't', watch: true, signal: serving.signal, onWarning: () => undefined });
      const ac = new AbortController();
      let received = 0;
      await expectAborted(
        c.sync.run({
          team: 't',
          timeout: 90,
          signal: ac.signal,
          onWarning: () => undefined,
          onProgress: (p) => {
            if (p.phase === 'receive' && p.done > 0) {
              received = p.done;
              ac.abort();
            }
          },
        }),
      );
      expect(received).toBeGreaterThan(0);
      expect(await c.vms.list()).toEqual([]);
      expect(await tree(path.join(homeC, 'vms'))).toEqual([]);
      const list = pullTempsList(homeC);
      expect(existsSync(list) ? (await readFile(list, 'utf8')).trim() : '').toBe('');
      expect((await tree(path.join(homeC, 'disks'))).filter((f) => !f.endsWith('/'))).toEqual([]);
    } finally {
      serving.abort();
      await sharer?.catch(() => undefined);
      await dht.close();
      await a.close();
      await c.close();
    }
  }, 180_000);
});

/** <home>/sync/pull-temps.list: the pull temporaries a sync has yet to hand to a journal. */
function pullTempsList(home: string): string {
  return path.join(home, 'sync', 'pull-temps.list');
}

describe('SIGINT in the CLI takes the same path', () => {
  it('an export interrupted by SIGINT exits 130 leaving no temporary and no output file', async () => {
    const out = path.join(root, 'out-cli');
    await mkdir(out);
    const child = spawn(process.execPath, [CLI_PATH, '--home', path.join(root, 'home-a'), 'snapshot', 'export', 'src', '-o', path.join(out, 'y.bundle')], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CLONEBOX_HOME: '' },
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    // Interrupted once its temporary holds some bytes: mid-way through the packs.
    const deadline = Date.now() + 60_000;
    let sent = false;
    while (!sent && Date.now() < deadline && child.exitCode === null) {
      for (const f of await readdir(out)) {
        if ((await stat(path.join(out, f)).catch(() => null))?.size) {
          child.kill('SIGINT');
          sent = true;
        }
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(sent).toBe(true);
    expect(await exited, stderr).toBe(130);
    expect(stderr).toMatch(/clonebox: error: interrupted/);
    expect(await tree(out)).toEqual([]);
  }, 120_000);

  it('an import from stdin interrupted by SIGINT exits 130 leaving no VM, journal or disks directory', async () => {
    const home = path.join(root, 'home-d');
    const disks = path.join(root, 'disks-d');
    const child = spawn(process.execPath, [CLI_PATH, '--home', home, 'snapshot', 'import', 'dst', '-', '--dir', disks], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, CLONEBOX_HOME: '' },
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.stdin.on('error', () => undefined); // EPIPE once the import has exited: expected here
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    // Half the bundle, then nothing: the import is past its prepare phase (journal begun) and waits.
    const bytes = await readFile(bundle);
    child.stdin.write(bytes.subarray(0, bytes.length >> 1));
    const journal = path.join(home, 'vms', 'dst', 'journal.json');
    const deadline = Date.now() + 60_000;
    while (!existsSync(journal) && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
    expect(existsSync(journal), stderr).toBe(true);
    child.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    child.stdin.destroy();
    expect(await tree(path.join(home, 'vms'))).toEqual([]);
    expect(existsSync(disks)).toBe(false);
  }, 120_000);
});
