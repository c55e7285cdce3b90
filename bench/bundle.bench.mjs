/**
 * bundle: `snapshot export` / `snapshot import` of a 3-layer chain against tar + zstd on the same layer
 * files in the same run, and the bundle's size against zstd of the unique data, borg and restic.
 *
 * The chain (a 4 GiB disk, 64 KiB clusters, written with qemu-io through the real CLI: vm create,
 * writes, snapshot create x3), about 470 MiB of layer data:
 *   l1  256 MiB: 8 x 8 MiB random, 8 x 8 MiB text, 32 x 1 MiB random/text, 16 x 1 MiB one-byte
 *       patterns, 1280 scattered 64 KiB clusters (random/text), 8 MiB of zero writes
 *   l2  132 MiB: 32 MiB of l1's extents rewritten with the same bytes at the same place (a package
 *       reinstalled), 32 MiB of l1's extents copied to other 1 MiB-aligned places, 8 MiB copied 4 KiB
 *       off alignment (no 64 KiB dedup possible), 32 MiB new text, 16 MiB new random, 8 MiB new
 *       scattered clusters, 4 MiB of zero writes
 *   l3  80 MiB: 16 MiB of l2's new text rewritten identically, 16 MiB new random, 16 MiB new text,
 *       8 MiB scattered clusters, 8 MiB of zero writes, plus 16 MiB of l1's patterns copied
 * Every random or text region has its own bytes (seeded layout, fresh random content per run).
 *
 * Timed sides (whole processes, spawn to exit; one untimed warm-up each, then `runs` alternated runs):
 *   export   clonebox snapshot export v -o B              vs  tar -cf - L1 L2 L3 | zstd -3 -T2 -o T
 *   import   clonebox snapshot import w B --dir D (fresh home and dir every run)
 *                                                         vs  zstd -d -c T | tar -xf - -C D
 *   encrypted  export --encrypt --key-file K               vs  the plain export (target: within 1.1x)
 * Untimed: peak RSS of export and import (/usr/bin/time -f %M), the round trip
 * checked with qemu-img compare, sizes: the bundle, tar|zstd -3, zstd -3 of the unique 64 KiB blocks
 * (what the bundle must approach), borg (`borg create --compression zstd,3`; Debian's borgbackup is
 * installed by this bench when missing) and restic when it can be had the same way.
 * Env: BENCH_BUNDLE_KEEP=DIR keeps the data in DIR (and reuses it when present).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { regionWriter } from './lib/chain-data.mjs';
import {
  CLEAN_ENV,
  CLI,
  cpuRatio,
  MiB,
  machineInfo,
  measure,
  NODE,
  peakRss,
  ROOT,
  ratio,
  requireTool,
  round,
  sh,
  timeCommand,
  withTempDir,
} from './lib/harness.mjs';
import { prng } from './lib/layer.mjs';

export const name = 'bundle';
export const description = 'snapshot export/import of a 3-layer chain vs tar|zstd -3 -T2; size vs zstd of unique data, borg, restic; peak RSS';

const ENV = CLEAN_ENV;
const VM = 'v';

/** Builds the chain through the CLI; returns its layer files. */
async function buildChain(dir, log) {
  const home = path.join(dir, 'home');
  const disks = path.join(dir, 'disks');
  const src = path.join(dir, 'src');
  const layers = ['l1', 'l2', 'l3'].map((s) => path.join(disks, `${VM}@${s}.qcow2`));
  if (layers.every((l) => existsSync(l)) && existsSync(path.join(home, 'vms', VM, 'vm.json'))) return { home, disks, layers, reused: true };
  await rm(dir, { recursive: true, force: true });
  await mkdir(src, { recursive: true });
  const rnd = prng(20261122);
  const cs = 64 * 1024;
  const size = 4096 * MiB;
  sh(NODE, [CLI, '--home', home, 'vm', 'create', VM, '--size', '4G', '--dir', disks], { env: ENV });
  const disk = path.join(disks, `${VM}.qcow2`);
  const { used, pick, apply, shuffle, region, cmd } = regionWriter({ src, rnd, disk, size, cs });

  log('building l1 (256 MiB)...');
  const l1 = [];
  for (let i = 0; i < 8; i++) l1.push(await region('random', 8 * MiB), await region('text', 8 * MiB));
  for (let i = 0; i < 32; i++) l1.push(await region(i % 2 ? 'random' : 'text', MiB));
  for (let i = 0; i < 16; i++) l1.push(await region('pattern', MiB));
  for (let i = 0; i < 1280; i++) l1.push(await region(i % 3 ? 'text' : 'random', cs, cs));
  for (let i = 0; i < 8; i++) l1.push(await region('zero', MiB));
  apply(shuffle(l1.map(cmd)));
  sh(NODE, [CLI, '--home', home, 'snapshot', 'create', VM, '--name', 'l1'], { env: ENV });

  log('building l2 (132 MiB)...');
  used.fill(0);
  const big = l1.filter((r) => r.len === 8 * MiB);
  const l2 = [];
  for (const r of big.slice(0, 4)) l2.push(cmd(r)); // same bytes, same place
  for (const r of big.slice(4, 8)) l2.push(`write -q -s ${r.file} ${pick(8 * MiB)} ${8 * MiB}`); // aligned copies
  l2.push(`write -q -s ${big[0].file} ${pick(9 * MiB) + 4096} ${8 * MiB}`); // a copy off alignment
  const l2new = [];
  for (let i = 0; i < 4; i++) l2new.push(await region('text', 8 * MiB));
  for (let i = 0; i < 2; i++) l2new.push(await region('random', 8 * MiB));
  for (let i = 0; i < 128; i++) l2new.push(await region(i % 2 ? 'text' : 'random', cs, cs));
  for (let i = 0; i < 4; i++) l2new.push(await region('zero', MiB));
  apply(shuffle([...l2, ...l2new.map(cmd)]));
  sh(NODE, [CLI, '--home', home, 'snapshot', 'create', VM, '--name', 'l2'], { env: ENV });

  log('building l3 (80 MiB)...');
  used.fill(0);
  const l3 = [];
  for (const r of l2new.filter((x) => x.kind === 'text' && x.len === 8 * MiB).slice(0, 2)) l3.push(cmd(r));
  for (let i = 0; i < 2; i++) l3.push(cmd(await region('random', 8 * MiB)), cmd(await region('text', 8 * MiB)));
  for (let i = 0; i < 128; i++) l3.push(cmd(await region(i % 2 ? 'text' : 'random', cs, cs)));
  for (let i = 0; i < 8; i++) l3.push(cmd(await region('zero', MiB)));
  for (const r of l1.filter((x) => x.kind === 'pattern')) l3.push(`write -q -P ${((l1.indexOf(r) * 37) % 255) + 1} ${pick(MiB)} ${MiB}`);
  apply(shuffle(l3));
  sh(NODE, [CLI, '--home', home, 'snapshot', 'create', VM, '--name', 'l3'], { env: ENV });
  await rm(src, { recursive: true, force: true });
  return { home, disks, layers, reused: false };
}

/** zstd -3 of the chain's unique 64 KiB blocks, cut exactly as the bundle cuts them (the size to approach). */
async function uniqueZstd(layers, dir) {
  const { openLayer } = await import(pathToFileURL(path.join(ROOT, 'dist', 'src', 'content', 'layer.js')).href);
  const { Batcher } = await import(pathToFileURL(path.join(ROOT, 'dist', 'src', 'content', 'batcher.js')).href);
  const { createHash } = await import('node:crypto');
  const out = path.join(dir, 'unique.bin');
  const fh = await open(out, 'w');
  const seen = new Set();
  let bytes = 0;
  try {
    for (const [i, l] of layers.entries()) {
      const src = await openLayer(l, false);
      const b = new Batcher(i, 4 * MiB, async (batch) => {
        for (const it of batch.items) {
          if (it.kind !== 'block') continue;
          const data = batch.buf.subarray(it.at, it.at + it.length);
          const h = createHash('sha256').update(data).digest('hex');
          if (seen.has(h)) continue;
          seen.add(h);
          await fh.write(data);
          bytes += data.length;
        }
      });
      for await (const p of src.pieces()) {
        if (p.kind === 'zero') await b.zero(p.offset, p.length);
        else await b.data(p.offset, p.length, p.fill);
      }
      await b.flush();
      await src.close();
    }
  } finally {
    await fh.close();
  }
  const z = `${out}.zst`;
  sh('zstd', ['-q', '-f', '-3', '-T2', out, '-o', z]);
  const zs = (await stat(z)).size;
  await rm(out, { force: true });
  await rm(z, { force: true });
  return { unique_bytes: bytes, unique_zstd3_bytes: zs };
}

/** A tool, installed from Debian with apt-get when missing; null when that is not possible. */
function ensureTool(bin, pkg, log) {
  const probe = bin === 'restic' ? ['version'] : ['--version'];
  if (spawnSync(bin, probe, { encoding: 'utf8' }).status === 0) return true;
  log(`${bin} is missing: apt-get install -y ${pkg}...`);
  const r = spawnSync('apt-get', ['install', '-y', '-q', pkg], { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0) {
    log(`could not install ${pkg} (${(r.stderr || r.stdout).trim().split('\n').pop()})`);
    return false;
  }
  return spawnSync(bin, probe, { encoding: 'utf8' }).status === 0;
}

async function duBytes(p) {
  return Number(sh('du', ['-sb', p]).split('\t')[0]);
}

export default async function run({ runs = 5, log = () => {} } = {}) {
  requireTool('qemu-img');
  requireTool('qemu-io');
  const zstdVersion = requireTool('zstd');
  const haveBorg = ensureTool('borg', 'borgbackup', log);
  const haveRestic = ensureTool('restic', 'restic', log);
  const body = async (dir) => {
    const chain = await buildChain(dir, log);
    const bundle = path.join(dir, 'chain.bundle');
    const tarZst = path.join(dir, 'chain.tar.zst');
    const names = chain.layers.map((l) => path.basename(l));
    const layerBytes = (await Promise.all(chain.layers.map((l) => stat(l)))).reduce((a, s) => a + s.size, 0);
    log(`chain: ${names.join(', ')}: ${(layerBytes / MiB).toFixed(0)} MiB of layer files${chain.reused ? ' (reused)' : ''}`);
    const home2 = path.join(dir, 'home2');
    const dir2 = path.join(dir, 'imported');
    const xdir = path.join(dir, 'untarred');

    log(`export: ${runs} timed runs per side...`);
    const exp = await measure(
      {
        clonebox: async () => {
          const r = await timeCommand(NODE, [CLI, '--home', chain.home, 'snapshot', 'export', VM, '-o', bundle, '--force', '--json'], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs, report: JSON.parse(r.stdout) };
        },
        'tar|zstd': async () => {
          const r = await timeCommand(
            'bash',
            ['-c', `tar -C "${chain.disks}" -cf - ${names.map((n) => `"${n}"`).join(' ')} | zstd -q -3 -T2 -f -o "${tarZst}"`],
            { env: ENV },
          );
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      { runs },
    );

    log(`import: ${runs} timed runs per side...`);
    const imp = await measure(
      {
        clonebox: async () => {
          const r = await timeCommand(NODE, [CLI, '--home', home2, 'snapshot', 'import', 'w', bundle, '--dir', dir2, '--json'], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs, report: JSON.parse(r.stdout) };
        },
        'zstd|tar': async () => {
          const r = await timeCommand('bash', ['-c', `zstd -q -d -c "${tarZst}" | tar -xf - -C "${xdir}"`], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      {
        runs,
        before: async (side) => {
          if (side === 'clonebox') {
            await rm(home2, { recursive: true, force: true });
            await rm(dir2, { recursive: true, force: true });
          } else {
            await rm(xdir, { recursive: true, force: true });
            await mkdir(xdir, { recursive: true });
          }
        },
      },
    );

    log('checking the imported chain with qemu-img compare / check...');
    for (const s of ['l1', 'l2', 'l3']) {
      sh('qemu-img', ['compare', path.join(chain.disks, `${VM}@${s}.qcow2`), path.join(dir2, `w@${s}.qcow2`)]);
      sh('qemu-img', ['check', path.join(dir2, `w@${s}.qcow2`)]);
    }

    log('peak RSS, encrypted export, sizes...');
    const rssExport = peakRss([NODE, CLI, '--home', chain.home, 'snapshot', 'export', VM, '-o', bundle, '--force']);
    await rm(home2, { recursive: true, force: true });
    await rm(dir2, { recursive: true, force: true });
    const rssImport = peakRss([NODE, CLI, '--home', home2, 'snapshot', 'import', 'w', bundle, '--dir', dir2]);
    const keyFile = path.join(dir, 'bench.key');
    await rm(keyFile, { force: true });
    sh(NODE, [CLI, 'key', 'generate', '-o', keyFile], { env: ENV });
    const encBundle = path.join(dir, 'chain-enc.bundle');
    log(`encrypted export vs plain export: ${runs} timed runs per side...`);
    const encm = await measure(
      {
        encrypted: async () => {
          const r = await timeCommand(
            NODE,
            [CLI, '--home', chain.home, 'snapshot', 'export', VM, '-o', encBundle, '--force', '--encrypt', '--key-file', keyFile, '--json'],
            {
              env: ENV,
            },
          );
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
        plain: async () => {
          const r = await timeCommand(NODE, [CLI, '--home', chain.home, 'snapshot', 'export', VM, '-o', bundle, '--force', '--json'], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      { runs },
    );
    const enc = { ms: encm.encrypted.median_ms };
    const verify = await timeCommand(NODE, [CLI, 'snapshot', 'verify', encBundle, '--key-file', keyFile, '--json'], { env: ENV });

    const sizes = {
      layer_files: layerBytes,
      bundle: (await stat(bundle)).size,
      bundle_encrypted: (await stat(encBundle)).size,
      tar_zstd3: (await stat(tarZst)).size,
      ...(await uniqueZstd(chain.layers, dir)),
      borg: null,
      restic: null,
    };
    if (haveBorg) {
      const repo = path.join(dir, 'borg');
      await rm(repo, { recursive: true, force: true });
      const benv = {
        ...ENV,
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
        BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
        BORG_BASE_DIR: path.join(dir, 'borg-base'),
      };
      sh('borg', ['init', '--encryption=none', repo], { env: benv });
      const t = await timeCommand('borg', ['create', '--compression', 'zstd,3', `${repo}::chain`, ...names], { env: benv, cwd: chain.disks });
      sizes.borg = await duBytes(repo);
      sizes.borg_create_ms = round(t.ms);
    }
    if (haveRestic) {
      const repo = path.join(dir, 'restic');
      await rm(repo, { recursive: true, force: true });
      const renv = { ...ENV, RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache') };
      sh('restic', ['init', '-q', '--repo', repo], { env: renv });
      const t = await timeCommand('restic', ['backup', '-q', '--repo', repo, ...names], { env: renv, cwd: chain.disks });
      sizes.restic = await duBytes(repo);
      sizes.restic_backup_ms = round(t.ms);
    }
    const report = exp.clonebox.report;
    const result = {
      name,
      description,
      date: new Date().toISOString(),
      runs,
      machine: machineInfo(),
      zstd: zstdVersion,
      export: { ...exp, ratio: ratio(exp.clonebox, exp['tar|zstd']), cpu_ratio: cpuRatio(exp.clonebox, exp['tar|zstd']) },
      import: { ...imp, ratio: ratio(imp.clonebox, imp['zstd|tar']), cpu_ratio: cpuRatio(imp.clonebox, imp['zstd|tar']) },
      encrypted: {
        export_ms: round(enc.ms),
        plain_export_ms: encm.plain.median_ms,
        ratio: ratio(encm.encrypted, encm.plain),
        cpu_ratio: cpuRatio(encm.encrypted, encm.plain),
        verify_ms: round(verify.ms),
      },
      peak_rss_bytes: { export: rssExport, import: rssImport },
      sizes,
      size_ratios: {
        bundle_vs_unique_zstd3: round(sizes.bundle / sizes.unique_zstd3_bytes, 3),
        bundle_vs_tar_zstd3: round(sizes.bundle / sizes.tar_zstd3, 3),
        bundle_vs_borg: sizes.borg ? round(sizes.bundle / sizes.borg, 3) : null,
        bundle_vs_restic: sizes.restic ? round(sizes.bundle / sizes.restic, 3) : null,
      },
      dedup: {
        logical_bytes: report.logical_bytes,
        unique_bytes: report.unique_bytes,
        stored_bytes: report.stored_bytes,
        blocks: report.blocks,
        unique_blocks: report.unique_blocks,
      },
    };
    const mib = (x) => (x === null || x === undefined ? '-' : `${(x / MiB).toFixed(1)} MiB`);
    log(
      `sizes: bundle ${mib(sizes.bundle)}, encrypted ${mib(sizes.bundle_encrypted)}, tar|zstd -3 ${mib(sizes.tar_zstd3)}, zstd -3 of unique data ${mib(sizes.unique_zstd3_bytes)}, borg ${mib(sizes.borg)}, restic ${mib(sizes.restic)}`,
    );
    log(
      `ratios: bundle/unique-zstd ${result.size_ratios.bundle_vs_unique_zstd3}, bundle/tar-zstd ${result.size_ratios.bundle_vs_tar_zstd3}, bundle/borg ${result.size_ratios.bundle_vs_borg ?? '-'}, bundle/restic ${result.size_ratios.bundle_vs_restic ?? '-'}`,
    );
    log(
      `peak RSS: export ${mib(rssExport)}, import ${mib(rssImport)}; export ${result.export.ratio}x tar|zstd (cpu ${result.export.cpu_ratio}x), import ${result.import.ratio}x zstd|tar (cpu ${result.import.cpu_ratio}x)`,
    );
    // Issue #16's targets beside each ratio: export and import no slower than the peer, an encrypted
    // export within 1.1x of a plain one, the bundle no larger than before it (0.997x zstd -3 of the
    // unique data, 2026-12-02), peak RSS under 256 MiB.
    const met = (ok) => (ok ? 'met' : 'MISSED');
    const rssMax = Math.max(rssExport ?? 0, rssImport ?? 0);
    const sizeNote = `bundle ${result.size_ratios.bundle_vs_unique_zstd3}x zstd -3 of unique data (target <= 0.997: ${met(result.size_ratios.bundle_vs_unique_zstd3 <= 0.997)})`;
    const rssNote = `peak RSS ${mib(rssExport)} / ${mib(rssImport)} (target <= 256 MiB: ${met(rssMax <= 256 * MiB)})`;
    result.summary = [
      {
        case: `export vs tar|zstd -3 -T2 (target <= 1.0: ${met(result.export.ratio <= 1)}; ${sizeNote})`,
        clonebox_ms: exp.clonebox.median_ms,
        peer_ms: exp['tar|zstd'].median_ms,
        ratio: result.export.ratio,
        cpu_ratio: result.export.cpu_ratio,
      },
      {
        case: `import vs zstd -d|tar -x (target <= 1.0: ${met(result.import.ratio <= 1)}; ${rssNote})`,
        clonebox_ms: imp.clonebox.median_ms,
        peer_ms: imp['zstd|tar'].median_ms,
        ratio: result.import.ratio,
        cpu_ratio: result.import.cpu_ratio,
      },
      {
        case: `encrypted export vs plain export (target <= 1.1: ${met(result.encrypted.ratio <= 1.1)})`,
        clonebox_ms: encm.encrypted.median_ms,
        peer_ms: encm.plain.median_ms,
        ratio: result.encrypted.ratio,
        cpu_ratio: result.encrypted.cpu_ratio,
      },
    ];
    return result;
  };
  const keep = process.env.BENCH_BUNDLE_KEEP;
  if (keep) {
    await mkdir(keep, { recursive: true });
    return body(path.resolve(keep));
  }
  return withTempDir('bundle', body);
}

// `node bench/bundle.bench.mjs` runs it alone (bench/run.mjs is the usual way).
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await run({ runs: Number(process.env.BENCH_RUNS ?? 3), log: (m) => process.stderr.write(`   ${m}\n`) });
  process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
}
