/**
 * guest-chain: `snapshot export` of a REAL guest's chain against tar + zstd and borg on the same layer
 * files in the same run. Real binaries compress and deduplicate differently from bench/bundle's
 * synthetic regions.
 *
 * The chain (image driver, through the real CLI):
 *   base  the Debian guest of scripts/make-test-guest.sh (~150 MiB of qcow2: minbase + qemu-guest-agent)
 *   pkgs  host binaries and shared libraries written into free space at 1 MiB-aligned offsets (a set of
 *         packages installed: real ELF code and data)
 *   copy  half of those files written again at other 1 MiB-aligned offsets (the same packages copied or
 *         reinstalled elsewhere: what deduplication should find)
 *
 * Timed (whole processes, one untimed warm-up each, then `runs` alternated runs):
 *   clonebox snapshot export g -o B   vs  tar -cf - LAYERS | zstd -3 -T2
 * Untimed, once: borg create --compression zstd,3 (time and repository size).
 * Needs root (the guest image build); BENCH_RUNS sets the runs when run alone.
 */
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CLEAN_ENV, CLI, cpuRatio, MiB, machineInfo, measure, NODE, ROOT, ratio, requireTool, round, sh, timeCommand, withTempDir } from './lib/harness.mjs';

export const name = 'guest-chain';
export const description = 'snapshot export of a real Debian guest chain vs tar|zstd -3 -T2 and borg (zstd,3): size and time';

const ENV = CLEAN_ENV;
const VM = 'g';

/** Host ELF files (the qemu binary, shared libraries over 1 MiB) that fit in `room` bytes. */
function hostBinaries(room) {
  const out = sh('find', ['/usr/lib/x86_64-linux-gnu', '/usr/bin', '-maxdepth', '1', '-type', 'f', '-size', '+1M', '-size', '-24M'])
    .split('\n')
    .filter(Boolean)
    .sort();
  const picked = [];
  let used = 0;
  for (const f of out) {
    const size = Number(sh('stat', ['-c', '%s', f]).trim());
    const span = Math.ceil(size / MiB) * MiB;
    if (used + span > room) continue;
    picked.push({ file: f, size });
    used += span;
  }
  return picked;
}

/** Writes `files` into the disk one after another from `start`, each at a 1 MiB boundary. */
function writeFiles(disk, files, start) {
  let off = start;
  const cmds = [];
  for (const f of files) {
    cmds.push('-c', `write -s ${f.file} ${off} ${Math.ceil(f.size / 512) * 512}`);
    off += Math.ceil(f.size / MiB) * MiB;
  }
  sh('qemu-io', ['-f', 'qcow2', ...cmds, disk]);
  return off;
}

async function buildChain(dir, log) {
  const built = spawnSync('bash', [path.join(ROOT, 'scripts', 'make-test-guest.sh')], { encoding: 'utf8', maxBuffer: 16 * MiB });
  if (built.status !== 0) throw new Error(`cannot build the test guest: ${built.stderr.trim().split('\n').pop()}`);
  const img = path.join(built.stdout.trim().split('\n').pop(), 'guest.qcow2');
  const home = path.join(dir, 'home');
  const disks = path.join(dir, 'disks');
  await mkdir(disks, { recursive: true });
  const disk = path.join(disks, `${VM}.qcow2`);
  await copyFile(img, disk);
  const cb = (...args) => sh(NODE, [CLI, '--home', home, ...args], { env: ENV });
  cb('vm', 'add', VM, '--disk', disk);
  cb('snapshot', 'create', VM, '--name', 'base');
  // The guest's filesystem uses the first ~170 MiB of its 768 MiB; the binaries go above 400 MiB.
  const files = hostBinaries(160 * MiB);
  log(`pkgs: ${files.length} host binaries, ${(files.reduce((a, f) => a + f.size, 0) / MiB).toFixed(0)} MiB`);
  writeFiles(disk, files, 400 * MiB);
  cb('snapshot', 'create', VM, '--name', 'pkgs');
  writeFiles(
    disk,
    files.filter((_, i) => i % 2 === 0),
    580 * MiB,
  );
  cb('snapshot', 'create', VM, '--name', 'copy');
  return { home, disks, layers: ['base', 'pkgs', 'copy'].map((s) => path.join(disks, `${VM}@${s}.qcow2`)) };
}

async function duBytes(p) {
  return Number(sh('du', ['-sb', p]).split('\t')[0]);
}

export default async function run({ runs = 5, log = () => {} } = {}) {
  requireTool('qemu-img');
  requireTool('qemu-io');
  const zstdVersion = requireTool('zstd');
  const haveBorg = spawnSync('borg', ['--version'], { encoding: 'utf8' }).status === 0;
  return withTempDir('guest-chain', async (dir) => {
    const chain = await buildChain(dir, log);
    const names = chain.layers.map((l) => path.basename(l));
    const layerBytes = (await Promise.all(chain.layers.map((l) => stat(l)))).reduce((a, s) => a + s.size, 0);
    log(`chain: ${names.join(', ')}: ${(layerBytes / MiB).toFixed(0)} MiB of layer files`);
    const bundle = path.join(dir, 'chain.bundle');
    const tarZst = path.join(dir, 'chain.tar.zst');
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
    const sizes = { layer_files: layerBytes, bundle: (await stat(bundle)).size, tar_zstd3: (await stat(tarZst)).size, borg: null, borg_create_ms: null };
    if (haveBorg) {
      const repo = path.join(dir, 'borg');
      const benv = { ...ENV, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(dir, 'borg-base') };
      sh('borg', ['init', '--encryption=none', repo], { env: benv });
      const t = await timeCommand('borg', ['create', '--compression', 'zstd,3', `${repo}::chain`, ...names], { env: benv, cwd: chain.disks });
      sizes.borg = await duBytes(repo);
      sizes.borg_create_ms = round(t.ms);
    } else log('borg is not installed: no borg figures');
    const result = {
      name,
      description,
      date: new Date().toISOString(),
      runs,
      machine: machineInfo(),
      zstd: zstdVersion,
      export: { ...exp, ratio: ratio(exp.clonebox, exp['tar|zstd']), cpu_ratio: cpuRatio(exp.clonebox, exp['tar|zstd']) },
      sizes,
      size_ratios: {
        bundle_vs_tar_zstd3: round(sizes.bundle / sizes.tar_zstd3, 3),
        bundle_vs_borg: sizes.borg ? round(sizes.bundle / sizes.borg, 3) : null,
      },
      dedup: {
        logical_bytes: exp.clonebox.report.logical_bytes,
        unique_bytes: exp.clonebox.report.unique_bytes,
        stored_bytes: exp.clonebox.report.stored_bytes,
      },
    };
    const mib = (x) => (x === null ? '-' : `${(x / MiB).toFixed(1)} MiB`);
    log(
      `sizes: layers ${mib(layerBytes)}, bundle ${mib(sizes.bundle)}, tar|zstd -3 ${mib(sizes.tar_zstd3)}, borg ${mib(sizes.borg)} (${sizes.borg_create_ms ?? '-'} ms)`,
    );
    result.summary = [
      {
        case: 'real guest chain: export vs tar|zstd -3 -T2',
        clonebox_ms: exp.clonebox.median_ms,
        peer_ms: exp['tar|zstd'].median_ms,
        ratio: result.export.ratio,
        cpu_ratio: result.export.cpu_ratio,
      },
    ];
    return result;
  });
}

// `node bench/guest-chain.bench.mjs` runs it alone (bench/run.mjs is the usual way).
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await run({ runs: Number(process.env.BENCH_RUNS ?? 3), log: (m) => process.stderr.write(`   ${m}\n`) });
  process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
}
