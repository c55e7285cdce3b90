/**
 * archive-speed: `clonebox archive push` of one chain into a fresh repository against `snapshot export`
 * of the same chain (issue 19: push within 1.1x of export, peak RSS <= 256 MiB).
 *
 * The chain (through the real CLI): a qcow2 disk of BENCH_ARCHIVE_SPEED_MIB MiB (default 512; 64 KiB
 * clusters), snapshot s1 holding a quarter of the disk in random bytes and an eighth in log-like text
 * (1 MiB regions at random places), s2 a sixteenth more random bytes. 512 MiB: 224 MiB of data; 2048
 * MiB: 896 MiB.
 *
 * Measured: one untimed warm-up of each side, then `runs` alternated runs (push into a repository made
 * fresh before each run; export to one file with --force): median wall and CPU time (user + system of
 * the whole process tree), the push/export ratios (target 1.1), and the peak RSS of one more run of
 * each under /usr/bin/time (target 256 MiB); then `archive check --read-data` of that repository (the
 * bench fails when a block does not read back). Wall time under load says little; CPU time is steadier.
 * Env: BENCH_ARCHIVE_SPEED_MIB (disk size, a multiple of 64), BENCH_RUNS when run alone.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { regionWriter } from './lib/chain-data.mjs';
import {
  CLEAN_ENV,
  CLI,
  cpuRatio,
  filesBytes,
  MiB,
  machineInfo,
  measure,
  NODE,
  peakRss,
  ratio,
  requireTool,
  sh,
  timeCommand,
  uptime,
  withTempDir,
} from './lib/harness.mjs';
import { prng } from './lib/layer.mjs';

export const name = 'archive-speed';
export const description = 'archive push of one chain into a fresh repository vs snapshot export of it: wall and CPU time, peak RSS';

const ENV = CLEAN_ENV;
const CS = 64 * 1024;

function diskMiB() {
  const v = Number(process.env.BENCH_ARCHIVE_SPEED_MIB ?? 512);
  if (!Number.isInteger(v) || v < 64 || v % 64 !== 0)
    throw new Error(`BENCH_ARCHIVE_SPEED_MIB must be a multiple of 64, got ${process.env.BENCH_ARCHIVE_SPEED_MIB}`);
  return v;
}

const cli = (home, args) => sh(NODE, [CLI, '--home', home, ...args], { env: ENV });

/** Writes `mib` MiB of `kind` data in 1 MiB regions at free places of the disk. */
async function fill(w, kind, mib) {
  const regions = [];
  for (let i = 0; i < mib; i++) regions.push(await w.region(kind, MiB));
  w.apply(w.shuffle(regions.map(w.cmd)));
}

async function buildChain(dir, mib) {
  const home = path.join(dir, 'home');
  const src = path.join(dir, 'src');
  await mkdir(src, { recursive: true });
  const disk = path.join(dir, 'disk.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CS}`, disk, `${mib}M`]);
  cli(home, ['vm', 'add', 'vm', '--disk', disk]);
  const w = regionWriter({ src, rnd: prng(20261202), disk, size: mib * MiB, cs: CS });
  await fill(w, 'random', mib / 4);
  await fill(w, 'text', mib / 8);
  cli(home, ['snapshot', 'create', 'vm', '--name', 's1']);
  await rm(src, { recursive: true, force: true });
  await mkdir(src);
  await fill(w, 'random', mib / 16);
  cli(home, ['snapshot', 'create', 'vm', '--name', 's2']);
  await rm(src, { recursive: true, force: true });
  return { home, data_bytes: (mib / 4 + mib / 8 + mib / 16) * MiB };
}

export default async function run({ runs = 5, log = () => {} } = {}) {
  requireTool('qemu-img');
  requireTool('qemu-io');
  const mib = diskMiB();
  return withTempDir('archive-speed', async (dir) => {
    log(`building a ${mib} MiB chain (s1: ${mib / 4} MiB random + ${mib / 8} MiB text, s2: ${mib / 16} MiB random)...`);
    const { home, data_bytes } = await buildChain(dir, mib);
    const repo = path.join(dir, 'repo');
    const bundle = path.join(dir, 'vm.bundle');
    const pushArgs = [CLI, '--home', home, 'archive', 'push', 'vm', '--repo', repo, '--json'];
    const exportArgs = [CLI, '--home', home, 'snapshot', 'export', 'vm', '-o', bundle, '--force', '--json'];
    const init = () => {
      spawnSync('rm', ['-rf', repo]);
      cli(home, ['archive', 'init', repo]);
    };
    const loadStart = uptime();
    log(`${runs} alternated runs per side (load: ${loadStart})...`);
    const speed = await measure(
      {
        clonebox: () => timeCommand(NODE, pushArgs, { env: ENV }).then((r) => ({ ms: r.ms, cpuMs: r.cpuMs })),
        'snapshot export': () => timeCommand(NODE, exportArgs, { env: ENV }).then((r) => ({ ms: r.ms, cpuMs: r.cpuMs })),
      },
      { runs, before: (side) => (side === 'clonebox' ? init() : undefined) },
    );
    init();
    const rssPush = peakRss([NODE, ...pushArgs]);
    const rssExport = peakRss([NODE, ...exportArgs]);
    // The push stored what it read, whole: every block read back and checked against its id.
    const checked = JSON.parse(cli(home, ['archive', 'check', '--read-data', '--repo', repo, '--json']));
    if (!checked.ok) throw new Error(`archive check --read-data after the push: ${JSON.stringify(checked)}`);
    const repoBytes = await filesBytes(repo);
    const bundleBytes = (await stat(bundle)).size;
    const result = {
      name,
      description,
      date: new Date().toISOString(),
      runs,
      machine: machineInfo(),
      uptime_start: loadStart,
      uptime_end: uptime(),
      chain: { disk_bytes: mib * MiB, data_bytes },
      speed: {
        ...speed,
        ratio: ratio(speed.clonebox, speed['snapshot export']),
        cpu_ratio: cpuRatio(speed.clonebox, speed['snapshot export']),
        target: 1.1,
      },
      peak_rss_bytes: { push: rssPush, export: rssExport, target: 256 * MiB },
      repository_bytes: repoBytes,
      bundle_bytes: bundleBytes,
    };
    const s = (x) => `${(x / 1000).toFixed(2)} s`;
    log(
      `push ${s(speed.clonebox.median_ms)} (cpu ${s(speed.clonebox.cpu_median_ms)}) vs export ${s(speed['snapshot export'].median_ms)} (cpu ${s(speed['snapshot export'].cpu_median_ms)}): ${result.speed.ratio}x wall, ${result.speed.cpu_ratio}x cpu (target 1.1x)`,
    );
    log(
      `peak RSS push ${(rssPush / MiB).toFixed(0)} MiB, export ${(rssExport / MiB).toFixed(0)} MiB (target 256 MiB); repository ${repoBytes} bytes, bundle ${bundleBytes} bytes`,
    );
    log(`load: ${result.uptime_end}`);
    result.summary = [
      {
        case: `push vs export, ${mib} MiB chain`,
        clonebox_ms: speed.clonebox.median_ms,
        peer_ms: speed['snapshot export'].median_ms,
        ratio: result.speed.ratio,
        cpu_ratio: result.speed.cpu_ratio,
      },
    ];
    return result;
  });
}

// `node bench/archive-speed.bench.mjs` runs it alone (bench/run.mjs is the usual way).
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await run({ runs: Number(process.env.BENCH_RUNS ?? 3), log: (m) => process.stderr.write(`   ${m}\n`) });
  process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
}
