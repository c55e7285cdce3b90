/**
 * Damaged and hostile bundles: every one must be refused with a clear coded error and nothing written
 * (no VM, no snapshot record, no file, not even the disks directory). Bundles are made by the CLI from
 * a real chain; the imports run in-process (same code as the CLI) so that hundreds of them stay fast.
 */

import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KeySource, loadKeySource } from '../src/bundle/crypto.js';
import { importBundle } from '../src/bundle/import.js';
import { verifyBundle } from '../src/bundle/verify.js';
import { CloneboxError } from '../src/errors.js';
import { resolveHome } from '../src/store/home.js';
import { runCli } from './helpers/cli.js';
import { qemuIo } from './helpers/qemu.js';
import { compressibleBytes, rng } from './helpers/random.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

let root = '';
let plain: Buffer = Buffer.alloc(0);
let other: Buffer = Buffer.alloc(0);
let encrypted: Buffer = Buffer.alloc(0);
let pwKey: KeySource;
let attempt = 0;

async function cli(home: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<void> {
  const r = await runCli(args, { home, env, timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')}: ${r.stderr}`);
}

/** A chain of three snapshots exported with small packs (several tar entries to reorder). */
async function makeBundle(home: string, disks: string, vm: string, seed: number, extra: string[] = []): Promise<Buffer> {
  await mkdir(disks, { recursive: true });
  await cli(home, ['vm', 'create', vm, '--size', '24M', '--dir', disks]);
  const r = rng(seed);
  const data = path.join(disks, `${vm}.data`);
  await writeFile(data, Buffer.concat([r.bytes(1024 * 1024), compressibleBytes(r, 1024 * 1024)]));
  const disk = path.join(disks, `${vm}.qcow2`);
  await qemuIo(disk, [`write -s ${data} 0 2M`, 'write -z 4M 128k']);
  await cli(home, ['snapshot', 'create', vm, '--name', 'one', '--description', 'first']);
  await qemuIo(disk, [`write -s ${data} 8M 1M`, 'write -P 0x5 12M 300k']);
  await cli(home, ['snapshot', 'create', vm, '--name', 'two']);
  await qemuIo(disk, ['write -P 0x6 16M 64k']);
  await cli(home, ['snapshot', 'create', vm, '--name', 'three']);
  const out = path.join(root, `${vm}-${seed}-${extra.length ? 'enc' : 'plain'}.bundle`);
  await cli(home, ['snapshot', 'export', vm, '-o', out, ...extra], {
    CLONEBOX_BUNDLE_PACK_BYTES: String(256 * 1024),
    CLONEBOX_BUNDLE_FRAME_BYTES: String(128 * 1024),
  });
  return readFile(out);
}

beforeAll(async () => {
  root = await makeTempDir('clonebox-bundle-hostile-');
  const pw = path.join(root, 'pw');
  await writeFile(pw, 'open sesame\n');
  pwKey = (await loadKeySource({ passphraseFile: pw }))!;
  plain = await makeBundle(path.join(root, 'home-a'), path.join(root, 'disks-a'), 'src', 1);
  other = await makeBundle(path.join(root, 'home-b'), path.join(root, 'disks-b'), 'src', 2);
  encrypted = await makeBundle(path.join(root, 'home-c'), path.join(root, 'disks-c'), 'enc', 3, ['--encrypt', '--passphrase-file', pw]);
}, 300_000);

afterAll(cleanupTempDirs);

/** Imports `bytes` into a fresh VM of a shared home; returns the error, and checks nothing was left. */
async function refuse(bytes: Buffer, key: KeySource | null = null): Promise<CloneboxError> {
  const n = attempt++;
  const file = path.join(root, `try-${n}.bundle`);
  await writeFile(file, bytes);
  const home = resolveHome(path.join(root, 'victim-home'));
  const dir = path.join(root, `victim-disks-${n}`);
  let err: unknown = null;
  try {
    await importBundle(home, `v${n}`, { input: file, key, dir });
  } catch (e) {
    err = e;
  }
  expect(err, `import of damaged bundle #${n} succeeded`).toBeInstanceOf(CloneboxError);
  expect(existsSync(dir), `disks dir left behind by #${n}`).toBe(false);
  expect(existsSync(path.join(home.vmsDir, `v${n}`)), `VM dir left behind by #${n}`).toBe(false);
  return err as CloneboxError;
}

// -------------------------------------------------------------------------------------- tar helpers

interface Entry {
  name: string;
  data: Buffer;
}

function entries(tar: Buffer): Entry[] {
  const out: Entry[] = [];
  let o = 0;
  while (o + 512 <= tar.length) {
    const h = tar.subarray(o, o + 512);
    if (h.every((b) => b === 0)) break;
    const name = h.subarray(0, 100).toString('latin1').replace(/\0.*$/s, '');
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
    out.push({ name, data: tar.subarray(o + 512, o + 512 + size) });
    o += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

/** A ustar header with any field we like (for hostile archives). */
function header(name: string, size: number, opts: { type?: string; linkname?: string; sizeField?: Buffer; prefix?: string } = {}): Buffer {
  const h = Buffer.alloc(512);
  h.write(name.slice(0, 100), 0, 'latin1');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  if (opts.sizeField) opts.sizeField.copy(h, 124);
  else h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write(opts.type ?? '0', 156, 'latin1');
  if (opts.linkname) h.write(opts.linkname, 157, 'latin1');
  h.write('ustar\x0000', 257, 'latin1');
  if (opts.prefix) h.write(opts.prefix, 345, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

function tarOf(list: (Entry | Buffer)[], end = true): Buffer {
  const parts: Buffer[] = [];
  for (const e of list) {
    if (Buffer.isBuffer(e)) {
      parts.push(e);
      continue;
    }
    parts.push(header(e.name, e.data.length), e.data, Buffer.alloc((512 - (e.data.length % 512)) % 512));
  }
  if (end) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// -------------------------------------------------------------------------------------- tests

describe('damaged bundles are refused and nothing is written', () => {
  it('the test bundles are good and span several packs', async () => {
    const names = entries(plain).map((e) => e.name);
    expect(names.length).toBeGreaterThanOrEqual(6);
    expect(names.slice(0, 2)).toEqual(['header', 'meta']);
    expect(names[names.length - 1]).toBe('seal');
    // Rebuilt by this file's own tar writer, the bundle still imports: the cases below fail for what
    // they change, not because of the helpers.
    const rebuilt = path.join(root, 'rebuilt.bundle');
    await writeFile(rebuilt, tarOf(entries(plain)));
    const home = resolveHome(path.join(root, 'good-home'));
    const r = await importBundle(home, 'good', { input: rebuilt, key: null, dir: path.join(root, 'good-disks') });
    expect(r.snapshots).toEqual(['one', 'two', 'three']);
    expect((await verifyBundle(path.join(root, 'enc-3-enc.bundle'), pwKey)).ok).toBe(true);
  });

  it('refuses a bundle with one byte changed, wherever it is (plain and encrypted)', async () => {
    for (const [bytes, key] of [
      [plain, null],
      [encrypted, pwKey],
    ] as const) {
      const offsets = new Set<number>();
      const r = rng(99);
      for (let i = 0; i < 40; i++) offsets.add(Math.floor((i / 40) * bytes.length) + r.int(0, 512));
      for (let o = 0; o < 2048; o += 97) offsets.add(o); // tar headers, header entry, meta
      for (const o of [512 + 16, 512 + 40, 512 + 44, 512 + 60, 512 + 80, 512 + 120, bytes.length - 1, bytes.length - 600]) offsets.add(o);
      for (const o of offsets) {
        if (o >= bytes.length) continue;
        const mod = Buffer.from(bytes);
        mod[o] = mod[o]! ^ (1 << r.int(0, 8));
        const err = await refuse(mod, key);
        expect(['BUNDLE_CORRUPT', 'NOT_A_BUNDLE'], `offset ${o}: ${err.code} ${err.message}`).toContain(err.code);
      }
    }
  });

  it('refuses a bundle cut short at any length', async () => {
    const r = rng(5);
    const lengths = new Set([0, 1, 511, 512, 600, 1024, 1536, plain.length - 1024, plain.length - 1, plain.length - 513]);
    for (let i = 0; i < 25; i++) lengths.add(r.int(0, plain.length));
    for (const n of lengths) {
      const err = await refuse(plain.subarray(0, n));
      expect(['BUNDLE_CORRUPT', 'NOT_A_BUNDLE'], `length ${n}: ${err.message}`).toContain(err.code);
    }
  });

  it('refuses entries reordered, duplicated, dropped, renamed or taken from another bundle', async () => {
    const e = entries(plain);
    const o = entries(other);
    const packs = e.filter((x) => x.name.startsWith('pack-'));
    expect(packs.length).toBeGreaterThanOrEqual(3);
    const cases: [string, (Entry | Buffer)[]][] = [
      ['two packs swapped', [e[0]!, e[1]!, e[3]!, e[2]!, ...e.slice(4)]],
      [
        'pack contents swapped under their names',
        [e[0]!, e[1]!, { name: e[2]!.name, data: e[3]!.data }, { name: e[3]!.name, data: e[2]!.data }, ...e.slice(4)],
      ],
      ['a pack twice', [e[0]!, e[1]!, e[2]!, e[2]!, ...e.slice(3)]],
      ['a pack dropped', [e[0]!, e[1]!, ...e.slice(3)]],
      [
        'a pack dropped and the rest renumbered',
        [e[0]!, e[1]!, ...packs.slice(1).map((p, i) => ({ name: `pack-${String(i).padStart(8, '0')}`, data: p.data })), e[e.length - 1]!],
      ],
      ['the last pack dropped', [...e.slice(0, e.length - 2), e[e.length - 1]!]],
      ['no seal', e.slice(0, -1)],
      ['a pack from another bundle', [e[0]!, e[1]!, o[2]!, ...e.slice(3)]],
      ['the meta from another bundle', [e[0]!, o[1]!, ...e.slice(2)]],
      ['the seal from another bundle', [...e.slice(0, -1), o[o.length - 1]!]],
      ['the header from another bundle', [o[0]!, ...e.slice(1)]],
      ['meta before header', [e[1]!, e[0]!, ...e.slice(2)]],
      ['an entry after the seal', [...e, { name: 'extra', data: Buffer.from('x') }]],
      ['a second seal', [...e, e[e.length - 1]!]],
      ['an unknown entry among the packs', [e[0]!, e[1]!, e[2]!, { name: 'notes.txt', data: Buffer.from('hello') }, ...e.slice(3)]],
    ];
    for (const [what, list] of cases) {
      const err = await refuse(tarOf(list));
      expect(['BUNDLE_CORRUPT', 'NOT_A_BUNDLE'], `${what}: ${err.message}`).toContain(err.code);
    }
    // Between two encrypted bundles under the same passphrase, nothing can be spliced either.
    const enc = entries(encrypted);
    const err = await refuse(tarOf([enc[0]!, enc[1]!, { name: enc[3]!.name, data: enc[2]!.data }, ...enc.slice(3)]), pwKey);
    expect(err.code).toBe('BUNDLE_CORRUPT');
  });

  it('refuses hostile tar headers before reading their data', async () => {
    const e = entries(plain);
    const p0 = e[2]!;
    const body = (h: Buffer, data: Buffer) => [h, data, Buffer.alloc((512 - (data.length % 512)) % 512)];
    const giant256 = Buffer.alloc(12);
    giant256[0] = 0x80;
    giant256.writeUIntBE(2 ** 40, 6, 6);
    const cases: [string, Buffer][] = [
      ['absolute path', tarOf([e[0]!, e[1]!, ...body(header('/etc/passwd', p0.data.length), p0.data), ...e.slice(3)])],
      ['dot-dot path', tarOf([e[0]!, e[1]!, ...body(header('../../pack-00000000', p0.data.length), p0.data), ...e.slice(3)])],
      ['nested dot-dot', tarOf([...body(header('x/../header', e[0]!.data.length), e[0]!.data), ...e.slice(1)])],
      ['symlink in place of a pack', tarOf([e[0]!, e[1]!, header('pack-00000000', 0, { type: '2', linkname: '/etc/passwd' }), ...e.slice(3)])],
      ['hard link in place of a pack', tarOf([e[0]!, e[1]!, header('pack-00000000', 0, { type: '1', linkname: 'meta' }), ...e.slice(3)])],
      ['directory entry', tarOf([e[0]!, e[1]!, header('pack-00000000', 0, { type: '5' }), ...e.slice(2)])],
      ['pax extended header', tarOf([e[0]!, e[1]!, ...body(header('PaxHeader', 20, { type: 'x' }), Buffer.from('20 path=/etc/shadow\n')), ...e.slice(2)])],
      ['GNU long name', tarOf([e[0]!, e[1]!, ...body(header('././@LongLink', 12, { type: 'L' }), Buffer.from('pack-0000000')), ...e.slice(2)])],
      ['name prefix', tarOf([e[0]!, e[1]!, ...body(header('pack-00000000', p0.data.length, { prefix: '/tmp' }), p0.data), ...e.slice(3)])],
      ['giant octal size', tarOf([e[0]!, e[1]!, header('pack-00000000', 0, { sizeField: Buffer.from('77777777777\0', 'latin1') }), ...e.slice(3)], false)],
      ['giant base-256 size', tarOf([e[0]!, e[1]!, header('pack-00000000', 0, { sizeField: giant256 }), ...e.slice(3)], false)],
      ['giant meta', tarOf([e[0]!, header('meta', 0, { sizeField: Buffer.from('00777777777\0', 'latin1') })], false)],
      ['header entry of the wrong size', tarOf([{ name: 'header', data: Buffer.concat([e[0]!.data, Buffer.alloc(10)]) }, ...e.slice(1)])],
      ['not a tar file at all', Buffer.from('{"hello": "world"}\n'.repeat(100))],
      ['a tar of something else', tarOf([{ name: 'readme.txt', data: Buffer.from('hello') }])],
      [
        'bad header checksum',
        (() => {
          const b = Buffer.from(plain);
          b[1024 + 100] = 0x37;
          return b;
        })(),
      ],
      ['garbage after the end of the archive', Buffer.concat([plain, Buffer.from('trailing')])],
    ];
    for (const [what, bytes] of cases) {
      const err = await refuse(bytes);
      expect(['BUNDLE_CORRUPT', 'NOT_A_BUNDLE'], `${what}: ${err.code} ${err.message}`).toContain(err.code);
    }
  });

  it('tells a wrong passphrase from damage, and needs a key for an encrypted bundle', async () => {
    const wrong = path.join(root, 'wrong-pw');
    await writeFile(wrong, 'open sesame!\n');
    expect((await refuse(encrypted, await loadKeySource({ passphraseFile: wrong }))).code).toBe('WRONG_KEY');
    expect((await refuse(encrypted, null)).code).toBe('KEY_REQUIRED');
    const keyFile = path.join(root, 'some.key');
    await writeFile(keyFile, Buffer.alloc(32, 7), { mode: 0o600 });
    expect((await refuse(encrypted, await loadKeySource({ keyFile }))).code).toBe('WRONG_KEY');
    // verify reports instead of throwing.
    const file = path.join(root, 'enc-3-enc.bundle');
    const v = await verifyBundle(file, await loadKeySource({ passphraseFile: wrong }));
    expect(v.ok).toBe(false);
    expect(v.errors[0]!.code).toBe('WRONG_KEY');
    const left = await readdir(root);
    expect(left.filter((f) => f.startsWith('victim-disks-'))).toEqual([]);
  });
});
