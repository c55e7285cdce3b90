#!/usr/bin/env node
// Makes fixtures/ again: the compatibility references that test/fixtures-*.unit.test.ts check without
// QEMU. Only for regenerating them (a new reader feature, a new hostile input): the committed files are
// the reference, and a regenerated set changes them all (the data is random), so review it like code.
//
// Needs qemu-img, qemu-io and the built CLI: `npm run build && node scripts/make-fixtures.mjs`.
// Every expected value is taken from QEMU (qemu-img map/info/convert/check) or written here by hand
// (the error codes of the hostile inputs), never from clonebox's own reader.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const OUT = path.join(ROOT, 'fixtures');
const CLI = path.join(ROOT, 'bin', 'clonebox.js');
const K = 1024;
const M = 1024 * K;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'clonebox-fixtures-'));
/** fixtures/README.md: one line per file, how it was made. */
const readme = [];

function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'buffer', maxBuffer: 256 * M, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
const qemuImg = (...args) => sh('qemu-img', args).toString('utf8');
const qemuIo = (file, cmds) => sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file]);
const cb = (home, ...args) => sh(process.execPath, [CLI, '--home', home, ...args]).toString('utf8');
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const json = (file, doc) => writeFileSync(file, `${JSON.stringify(doc, null, 2)}\n`);

/** Text-like bytes: compressible, but not a single repeated pattern. */
function textBytes(n) {
  const words = ['qcow2', 'cluster', 'snapshot', 'bundle', 'layer', 'block', 'the', 'of', 'zero', 'data', '\n'];
  let s = '';
  while (s.length < n) s += `${words[randomBytes(1)[0] % words.length]} `;
  return Buffer.from(s.slice(0, n));
}

let srcN = 0;
/** A qemu-io command writing `bytes` at `off`. */
function w(off, bytes) {
  const f = path.join(tmp, `src-${srcN++}.bin`);
  writeFileSync(f, bytes);
  return `write -s ${f} ${off} ${bytes.length}`;
}

/** What qemu-img map reports for the file opened alone (backing cut off), merged like clonebox's map. */
function mapAlone(file) {
  const spec = `json:${JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: file } })}`;
  const out = [];
  for (const e of JSON.parse(qemuImg('map', '--output=json', spec))) {
    const kind = e.data ? 'data' : e.present === false ? 'unallocated' : 'zero';
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.offset + last.length === e.start) last.length += e.length;
    else out.push({ offset: e.start, length: e.length, kind });
  }
  return { spec, map: out };
}

function rawSha(spec) {
  const raw = path.join(tmp, `raw-${srcN++}.raw`);
  qemuImg('convert', '-U', '-O', 'raw', spec, raw);
  const h = sha256(readFileSync(raw));
  rmSync(raw);
  return h;
}

// ------------------------------------------------------------------------------------------------ qcow2

function qcow2Fixtures() {
  const dir = path.join(OUT, 'qcow2');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const work = path.join(tmp, 'qcow2');
  mkdirSync(work);
  const create = (name, size, opts = [], backing) => {
    const f = path.join(work, name);
    const args = ['create', '-q', '-f', 'qcow2'];
    if (opts.length) args.push('-o', opts.join(','));
    if (backing) args.push('-b', backing, '-F', 'qcow2');
    args.push(f);
    if (size !== undefined) args.push(String(size));
    sh('qemu-img', args, { cwd: work });
    return f;
  };
  const mixedRaw = (name, size, chunk) => {
    const buf = Buffer.alloc(size);
    for (let off = 0; off < size; off += chunk) {
      // Mostly text (compressed clusters), some zeros, and a few random clusters qemu stores uncompressed.
      const k = randomBytes(1)[0] % 8;
      if (k === 0) randomBytes(chunk).copy(buf, off);
      else if (k < 6) textBytes(chunk).copy(buf, off);
    }
    const f = path.join(work, name);
    writeFileSync(f, buf);
    return f;
  };
  const images = [];
  const add = (name, what, file, chain = false) => images.push({ name, what, file, chain });

  let f = create('v2.qcow2', 1 * M, ['compat=0.10']);
  qemuIo(f, [w(0, randomBytes(16 * K)), w(64 * K, textBytes(100 * K)), w(512 * K, textBytes(64 * K)), 'write -z 256k 64k', 'discard 0 64k']);
  add('v2.qcow2', 'version 2 (compat=0.10): data, a zero write and a discard', f);

  f = create('v3.qcow2', 1 * M);
  qemuIo(f, [w(4 * K, randomBytes(12 * K)), w(16 * K, textBytes(58 * K)), w(300 * K, textBytes(33 * K)), 'discard 512k 64k']);
  add('v3.qcow2', 'version 3: data with partly written clusters', f);

  f = path.join(work, 'zlib.qcow2');
  qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4k', mixedRaw('zlib.raw', 256 * K, 4 * K), f);
  qemuIo(f, [w(100, randomBytes(1000))]);
  add('zlib.qcow2', 'compressed clusters (deflate, 4 KiB clusters), one rewritten in part', f);

  f = path.join(work, 'zstd.qcow2');
  qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=4k', mixedRaw('zstd.raw', 256 * K, 4 * K), f);
  add('zstd.qcow2', 'compressed clusters (compression_type=zstd, 4 KiB clusters)', f);

  f = create('zero.qcow2', 1 * M);
  qemuIo(f, [w(0, randomBytes(8 * K)), w(8 * K, textBytes(504 * K)), 'write -z 64k 128k', 'write -z -u 320k 64k', 'write -z 768k 64k', 'write -z -u 896k 64k']);
  add('zero.qcow2', 'zero clusters with a host cluster kept (write -z) and without (write -z -u)', f);

  f = create('prealloc.qcow2', 1 * M, ['preallocation=metadata']);
  qemuIo(f, [w(64 * K, randomBytes(8 * K)), w(72 * K, textBytes(56 * K))]);
  add('prealloc.qcow2', 'preallocation=metadata: every cluster has a host cluster, most read as zeros', f);

  f = create('extl2.qcow2', 1 * M, ['extended_l2=on', 'cluster_size=64k']);
  qemuIo(f, [w(2 * K, randomBytes(6 * K)), 'write -z 64k 4k', w(130 * K, randomBytes(10 * K)), w(256 * K, textBytes(64 * K)), 'write -z -u 280k 8k']);
  add('extl2.qcow2', 'extended L2 entries with 2 KiB subclusters: partial data, zero and unallocated subclusters', f);

  f = create('cluster512.qcow2', 256 * K, ['cluster_size=512']);
  qemuIo(f, [w(1000, randomBytes(5000)), 'write -z 8k 4k', w(100 * K, textBytes(3 * K))]);
  add('cluster512.qcow2', 'the smallest cluster size, 512 bytes', f);

  f = create('cluster2m.qcow2', 6 * M, ['cluster_size=2M']);
  qemuIo(f, [w(100 * K, randomBytes(16 * K)), 'write -z 2M 2M', w(5 * M, textBytes(64 * K))]);
  add('cluster2m.qcow2', 'the largest cluster size, 2 MiB', f);

  create('chain-base.qcow2', 1 * M);
  qemuIo(path.join(work, 'chain-base.qcow2'), [w(0, randomBytes(24 * K)), w(24 * K, textBytes(232 * K)), w(512 * K, textBytes(128 * K))]);
  add('chain-base.qcow2', 'backing chain: the base', path.join(work, 'chain-base.qcow2'));
  create('chain-mid.qcow2', undefined, ['cluster_size=16k'], 'chain-base.qcow2');
  qemuIo(path.join(work, 'chain-mid.qcow2'), [w(32 * K, randomBytes(8 * K)), w(40 * K, textBytes(32 * K)), 'write -z 512k 64k']);
  add('chain-mid.qcow2', 'backing chain: a middle layer with another cluster size, zeroing part of the base', path.join(work, 'chain-mid.qcow2'), true);
  f = create('chain-top.qcow2', undefined, [], 'chain-mid.qcow2');
  qemuIo(f, [w(200 * K, randomBytes(8 * K)), w(208 * K, textBytes(72 * K)), 'write -z -u 0 64k']);
  add('chain-top.qcow2', 'backing chain: the top, reading through two layers', f, true);

  const index = [];
  for (const im of images) {
    const info = JSON.parse(qemuImg('info', '--output=json', '-U', im.file));
    const { spec, map } = mapAlone(im.file);
    const check = JSON.parse(sh('qemu-img', ['check', '--output=json', im.file]).toString('utf8'));
    const doc = {
      file: `${im.name}.gz`,
      what: im.what,
      info: {
        version: info['format-specific'].data.compat === '0.10' ? 2 : 3,
        virtual_size: info['virtual-size'],
        cluster_size: info['cluster-size'],
        backing_file: info['backing-filename'] ?? null,
        backing_format: info['backing-filename-format'] ?? null,
        compression_type: info['format-specific'].data['compression-type'],
        extended_l2: info['format-specific'].data['extended-l2'] ?? false,
      },
      compressed_clusters: check['compressed-clusters'] ?? 0,
      map,
      sha256_alone: rawSha(spec),
      sha256_chain: im.chain ? rawSha(im.file) : null,
    };
    writeFileSync(path.join(dir, doc.file), gzipSync(readFileSync(im.file), { level: 9 }));
    index.push(doc);
    readme.push(`| qcow2/${doc.file} | ${im.what}; qemu-img create/convert and qemu-io, gzipped |`);
  }
  json(path.join(dir, 'expected.json'), index);
  readme.push(
    "| qcow2/expected.json | per image: qemu-img info, qemu-img map of the file alone (merged), qemu-img check's compressed clusters, sha256 of qemu-img convert alone and through the chain |",
  );
}

// ------------------------------------------------------------------------------------------------ bundles

function bundleFixtures() {
  const dir = path.join(OUT, 'bundle');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const home = path.join(tmp, 'home');
  const disks = path.join(tmp, 'disks');
  cb(home, 'vm', 'create', 'fixture', '--size', '4M', '--dir', disks);
  const disk = path.join(disks, 'fixture.qcow2');
  const dup = randomBytes(48 * K); // written twice: the bundle stores it once
  qemuIo(disk, [w(0, dup), w(512 * K, textBytes(192 * K)), 'write -P 0x5a 1M 64k', 'write -z 2M 256k']);
  cb(home, 'snapshot', 'create', 'fixture', '--name', 'base', '--description', 'the base system', '--tags', 'os,clean');
  qemuIo(disk, [w(3 * M, dup), w(64 * K, randomBytes(12 * K)), w(76 * K, textBytes(20 * K)), 'discard 512k 64k', 'write -z 1M 32k']);
  cb(home, 'snapshot', 'create', 'fixture', '--name', 'apps');
  qemuIo(disk, [w(33 * K, randomBytes(3 * K)), 'write -z 0 64k', w(3 * M + 128 * K, textBytes(40 * K))]);
  cb(home, 'snapshot', 'create', 'fixture', '--name', 'work', '--description', 'day 1');
  const key = path.join(dir, 'TEST-KEY-NOT-SECRET.key');
  cb(home, 'key', 'generate', '-o', key);
  cb(home, 'snapshot', 'export', 'fixture', '-o', path.join(dir, 'chain.cbx'));
  cb(home, 'snapshot', 'export', 'fixture', '-o', path.join(dir, 'chain-encrypted.cbx'), '--encrypt', '--key-file', key);
  const list = JSON.parse(cb(home, 'snapshot', 'list', 'fixture', '--json')).reverse(); // oldest first
  readme.push(
    '| bundle/chain.cbx | `clonebox snapshot export` of VM fixture (4 MiB): base, apps, work, written with qemu-io (random, text, pattern, zero and discarded ranges, 48 KiB written twice) |',
    '| bundle/chain-encrypted.cbx | the same chain exported with `--encrypt --key-file TEST-KEY-NOT-SECRET.key` |',
    '| bundle/TEST-KEY-NOT-SECRET.key | `clonebox key generate`: a TEST key, published here, protecting nothing |',
    "| bundle/expected.json | the snapshots' metadata and the sha256 of each disk's guest content (qemu-img convert of the source) |",
  );
  json(path.join(dir, 'expected.json'), {
    vm: 'fixture',
    snapshots: list.map((s) => ({
      name: s.name,
      parent: s.parent,
      description: s.description,
      tags: s.tags,
      created_at: s.created_at,
      disks: s.disks.map((d) => ({
        target: d.target,
        virtual_size: JSON.parse(qemuImg('info', '--output=json', '-U', d.path))['virtual-size'],
        sha256: rawSha(d.path),
      })),
    })),
  });
}

// ------------------------------------------------------------------------------------------------ hostile

const u64 = (b, at) => Number(b.readBigUInt64BE(at));
function layout(b) {
  const clusterBits = b.readUInt32BE(20);
  const l1 = u64(b, 40);
  const l2 = u64(b, l1) & 0x00fffffffffffe00;
  return { cs: 2 ** clusterBits, clusterBits, l1, l2, extendedL2: (u64(b, 72) & 16) !== 0 };
}

/** A ustar header (hostile tar entries). */
function tarHeader(name, size, { type = '0', linkname, sizeField } = {}) {
  const h = Buffer.alloc(512);
  h.write(name, 0, 'latin1');
  h.write('0000644\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  if (sizeField) sizeField.copy(h, 124);
  else h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write(type, 156, 'latin1');
  if (linkname) h.write(linkname, 157, 'latin1');
  h.write('ustar\x0000', 257, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** The tar entries of a bundle: [offset of the header, name, size]. */
function tarEntries(tar) {
  const out = [];
  for (let o = 0; o + 512 <= tar.length; ) {
    const h = tar.subarray(o, o + 512);
    if (h.every((x) => x === 0)) break;
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
    out.push({ at: o, name: h.subarray(0, 100).toString('latin1').replace(/\0.*$/s, ''), size });
    o += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

function hostileFixtures() {
  const dir = path.join(OUT, 'hostile');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const work = path.join(tmp, 'hostile');
  mkdirSync(work);
  const cases = [];
  const put = (file, bytes, kind, code, why, extra = {}) => {
    writeFileSync(path.join(dir, file), bytes);
    cases.push({ file, kind, code, why, ...extra });
    readme.push(`| hostile/${file} | ${why}: must fail with ${code} |`);
  };

  // A small image with data and a zero cluster, made by QEMU, patched below.
  const plainFile = path.join(work, 'plain.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', plainFile, '1M']);
  qemuIo(plainFile, [w(0, textBytes(8 * K)), w(256 * K, textBytes(8 * K)), 'write -z 512k 4k']);
  const plain = readFileSync(plainFile);
  const pl = layout(plain);
  const patch = (fn) => {
    const b = Buffer.from(plain);
    return fn(b) ?? b;
  };
  put(
    'magic.qcow2',
    patch((b) => void b.writeUInt32BE(0x514649fa, 0)),
    'qcow2',
    'NOT_QCOW2',
    'wrong magic',
  );
  put(
    'cluster-bits-63.qcow2',
    patch((b) => void b.writeUInt32BE(63, 20)),
    'qcow2',
    'QCOW2_CORRUPT',
    'cluster_bits 63: refused before any allocation',
  );
  put(
    'l1-size-max.qcow2',
    patch((b) => void b.writeUInt32BE(0xffffffff, 36)),
    'qcow2',
    'QCOW2_TOO_LARGE',
    'an L1 table of 2^32-1 entries',
  );
  put(
    'size-2-63.qcow2',
    patch((b) => void b.writeBigUInt64BE(1n << 63n, 24)),
    'qcow2',
    'QCOW2_CORRUPT',
    'a virtual size of 2^63',
  );
  put(
    'l2-entry-past-eof.qcow2',
    patch((b) => void b.writeBigUInt64BE((1n << 40n) | (1n << 63n), pl.l2)),
    'qcow2',
    'QCOW2_TRUNCATED',
    'a data cluster past the end of the file',
  );
  // 131072 L1 entries (64 TiB of guest space) all naming one 64 KiB L2 table: 2^30 entries to walk.
  const bigFile = path.join(work, 'big-clusters.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', bigFile, '1M']);
  qemuIo(bigFile, [w(0, textBytes(8 * K))]);
  const big = readFileSync(bigFile);
  const bl = layout(big);
  const n = 131072;
  const l1 = Buffer.alloc(n * 8);
  for (let i = 0; i < n; i++) l1.writeBigUInt64BE(BigInt(bl.l2) | (1n << 63n), i * 8);
  const at = Math.ceil(big.length / bl.cs) * bl.cs;
  const alias = Buffer.concat([big, Buffer.alloc(at - big.length), l1]);
  alias.writeBigUInt64BE(BigInt(n) * BigInt(bl.cs / 8) * BigInt(bl.cs), 24);
  alias.writeUInt32BE(n, 36);
  alias.writeBigUInt64BE(BigInt(at), 40);
  put(
    'l1-alias.qcow2.gz',
    gzipSync(alias, { level: 9 }),
    'qcow2',
    'QCOW2_CORRUPT',
    'L1 entries aliasing one L2 table over a huge virtual size: enumerating them took hours (fixed in b2288cb)',
  );

  const compFile = path.join(work, 'compressed.qcow2');
  writeFileSync(path.join(work, 'text.raw'), textBytes(64 * K));
  qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4k', path.join(work, 'text.raw'), compFile);
  const comp = readFileSync(compFile);
  const cl = layout(comp);
  const x = 62 - (cl.clusterBits - 8);
  const first = comp.readBigUInt64BE(cl.l2);
  if (((first >> 62n) & 1n) !== 1n) throw new Error('compressed.qcow2: the first cluster is not compressed');
  const host = Number(first & ((1n << BigInt(x)) - 1n));
  const garbage = Buffer.from(comp);
  garbage.writeBigUInt64BE((first & ~((1n << BigInt(x)) - 1n)) | BigInt(cl.l1), cl.l2);
  put('compressed-garbage.qcow2', garbage, 'qcow2', 'QCOW2_CORRUPT', 'a compressed cluster descriptor pointing at the L1 table (not a deflate stream)');
  // The last compressed cluster in the file, cut in the middle of its stream.
  let lastHost = host;
  for (let i = 0; i < cl.cs / 8; i++) {
    const e = comp.readBigUInt64BE(cl.l2 + i * 8);
    if (((e >> 62n) & 1n) === 1n) lastHost = Math.max(lastHost, Number(e & ((1n << BigInt(x)) - 1n)));
  }
  put(
    'cut-in-compressed.qcow2',
    comp.subarray(0, lastHost + 100),
    'qcow2',
    'QCOW2_TRUNCATED',
    'the file ends inside a compressed cluster (refused as truncated since b2288cb)',
  );

  const backedFile = path.join(work, 'backed.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(work, 'backed-base.qcow2'), '1M']);
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'backed-base.qcow2', '-F', 'qcow2', backedFile, '1M'], { cwd: work });
  const backed = readFileSync(backedFile);
  const nameAt = u64(backed, 8);
  put(
    'cut-in-backing-name.qcow2',
    backed.subarray(0, nameAt + 4),
    'qcow2',
    'QCOW2_TRUNCATED',
    'the file ends inside the backing file name (refused as truncated since b2288cb)',
  );

  const el2File = path.join(work, 'extl2.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=16k', el2File, '1M']);
  qemuIo(el2File, [w(2 * K, randomBytes(6 * K))]);
  const el2 = readFileSync(el2File);
  const el = layout(el2);
  const both = Buffer.from(el2);
  both.writeBigUInt64BE(0x00000001_00000001n, el.l2 + 8);
  put('extl2-allocated-and-zero.qcow2', both, 'qcow2', 'QCOW2_CORRUPT', 'an extended L2 subcluster both allocated and zero');

  // a -> b -> a: each names the other as its backing file.
  for (const [me, other] of [
    ['loop-a.qcow2', 'loop-b.qcow2'],
    ['loop-b.qcow2', 'loop-a.qcow2'],
  ]) {
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-u', '-b', other, '-F', 'qcow2', path.join(work, me), '1M'], { cwd: work });
    copyFileSync(path.join(work, me), path.join(dir, me));
  }
  cases.push({ file: 'loop-a.qcow2', kind: 'chain', code: 'QCOW2_CORRUPT', why: 'a backing chain that loops (loop-a -> loop-b -> loop-a)' });
  readme.push(
    '| hostile/loop-a.qcow2, hostile/loop-b.qcow2 | qemu-img create -u, each naming the other as backing file: opening the chain must fail with QCOW2_CORRUPT |',
  );

  // Bundles: damaged copies of fixtures/bundle/chain.cbx.
  const bundle = readFileSync(path.join(OUT, 'bundle', 'chain.cbx'));
  const ents = tarEntries(bundle);
  const pack = ents.find((e) => e.name.startsWith('pack-'));
  const flip = Buffer.from(bundle);
  flip[pack.at + 512 + Math.floor(pack.size / 2)] ^= 0x40;
  put('bundle-flipped-byte.cbx', flip, 'bundle', 'BUNDLE_CORRUPT', 'one bit flipped inside a pack');
  put('bundle-truncated.cbx', bundle.subarray(0, pack.at + 512 + 1000), 'bundle', 'BUNDLE_CORRUPT', 'the bundle cut inside its first pack');
  const sym = Buffer.concat([
    bundle.subarray(0, pack.at),
    tarHeader(pack.name, 0, { type: '2', linkname: '/etc/passwd' }),
    bundle.subarray(pack.at + 512 + Math.ceil(pack.size / 512) * 512),
  ]);
  put('bundle-symlink-pack.cbx', sym, 'bundle', 'BUNDLE_CORRUPT', 'a symbolic link in place of a pack');
  const dotdot = Buffer.from(bundle);
  tarHeader(`../../${pack.name}`, pack.size).copy(dotdot, pack.at);
  put('bundle-dotdot-path.cbx', dotdot, 'bundle', 'BUNDLE_CORRUPT', 'a pack named ../../pack-...');
  const giant = Buffer.concat([bundle.subarray(0, pack.at), tarHeader(pack.name, 0, { sizeField: Buffer.from('77777777777\0', 'latin1') })]);
  put('bundle-giant-size.cbx', giant, 'bundle', 'BUNDLE_CORRUPT', 'a tar entry claiming 8 GiB: refused before reading it');
  const badsum = Buffer.from(bundle);
  badsum[ents[1].at + 100] = 0x37;
  put('bundle-bad-tar-checksum.cbx', badsum, 'bundle', 'BUNDLE_CORRUPT', 'a tar header whose checksum does not match');
  put('bundle-not-tar.cbx', Buffer.from('{"hello": "world"}\n'.repeat(100)), 'bundle', 'BUNDLE_CORRUPT', 'not a tar file at all');
  writeFileSync(path.join(dir, 'WRONG-TEST-KEY.key'), randomBytes(32));
  readme.push('| hostile/WRONG-TEST-KEY.key | 32 random bytes: a TEST key that does not open bundle/chain-encrypted.cbx (WRONG_KEY) |');
  cases.push({
    file: '../bundle/chain-encrypted.cbx',
    kind: 'bundle',
    key: 'WRONG-TEST-KEY.key',
    code: 'WRONG_KEY',
    why: 'the encrypted bundle with another key',
  });
  cases.push({ file: '../bundle/chain-encrypted.cbx', kind: 'bundle', key: null, code: 'KEY_REQUIRED', why: 'the encrypted bundle without a key' });

  json(path.join(dir, 'expected.json'), cases);
  readme.push('| hostile/expected.json | each case: file, kind (qcow2, chain, bundle), the error code it must produce, why |');
}

try {
  qcow2Fixtures();
  bundleFixtures();
  hostileFixtures();
  writeFileSync(
    path.join(OUT, 'README.md'),
    `# fixtures

Small reference files that guard compatibility, checked without QEMU by \`test/fixtures-*.unit.test.ts\`
(\`npm run test:unit\`): clonebox must read every image as QEMU did, import every bundle byte-identically,
and refuse every hostile input with its error code, in this version and every later one. They were made
by \`scripts/make-fixtures.mjs\` (\`npm run build && node scripts/make-fixtures.mjs\`, with qemu-img and
qemu-io); run it only to add a case, and review the result like code, since it remakes every file from new
random data. The expected values come from QEMU or are written in the script by hand, never from
clonebox's reader.

| file | how it was made |
| --- | --- |
${readme.join('\n')}
`,
  );
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
