/**
 * archive: `clonebox archive push` of ten VMs cloned from one base into one repository, against the
 * size the data compresses to, against borg on the same files, and against `snapshot export` of the
 * same chain (issue 19's acceptance figures).
 *
 * The data (through the real CLI; seeded layout, fresh random bytes each build):
 *   base   a 2 GiB qcow2 disk (64 KiB clusters) holding 1 GiB of random bytes at 0..1 GiB
 *   vm0..vm9  full clones of it (the disk copied, then `vm add`), each with 20 MiB of its own writes
 *          over three snapshots: s1 8 MiB, s2 6 MiB, s3 6 MiB, half random, half log-like text, in
 *          1 MiB regions and scattered 64 KiB clusters anywhere on the disk (so some overwrite the base)
 *   reference  zstd -3 of the base's bytes + zstd -3 of every VM's own written bytes: what a store that
 *          keeps each block once, compressed, should approach (target: repository <= 1.05x of it)
 *
 * Measured:
 *   push all   `archive push vmI` for I = 0..9 into a fresh repository, one after the other (each timed
 *              once); the repository's size against the reference, and against borg
 *              (`borg create --compression zstd,3`, one archive per VM holding that VM's image files)
 *   second push  one new 8 MiB snapshot s4 on vm0, pushed again: bytes the repository grew by, against
 *              zstd -3 of the 8 MiB written + 64 KiB (target <= 1.1x of that)
 *   unchanged  a push of vm1 again: the repository must grow by a small record only
 *   speed      `archive push vm1` into a fresh repository vs `snapshot export vm1 -o F` of the same chain
 *              (one untimed warm-up, then `runs` alternated runs; target <= 1.1x)
 *   peak RSS   of a push into a fresh repository and of the tenth push into the full one (/usr/bin/time)
 *              (target <= 256 MiB)
 *   correct    vm3's s2 and vm0's s4 restored from the repository (`archive restore --as`), compared with
 *              the source layers by `qemu-img compare`
 * borg is optional: when it is not installed the bench says so and skips it (apt-get install borgbackup).
 * Env: BENCH_ARCHIVE_KEEP=DIR keeps the data in DIR and reuses it; BENCH_RUNS sets the runs when run alone.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
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
  round,
  sh,
  timeCommand,
  uptime,
  withTempDir,
} from './lib/harness.mjs';
import { prng } from './lib/layer.mjs';

export const name = 'archive';
export const description =
  'archive push of 10 VMs cloned from a 1 GiB base: repository size vs compressed unique data and borg; re-push; speed vs snapshot export; peak RSS';

const ENV = CLEAN_ENV;
const VMS = 10;
const BASE_BYTES = 1024 * MiB;
const DISK_BYTES = 2048 * MiB;
const CS = 64 * 1024;
/** Own writes per snapshot of each VM (20 MiB in all) and of the second push's new snapshot. */
const PLAN = [
  ['s1', 8],
  ['s2', 6],
  ['s3', 6],
];
const NEW_MIB = 8;
const DATA_VERSION = 1;

const cli = (home, args, opts = {}) => sh(NODE, [CLI, '--home', home, ...args], { env: ENV, ...opts });

/** zstd -3 size of the concatenation of `files`. */
function zstdSize(files) {
  if (files.length === 0) return 0;
  const r = spawnSync('bash', ['-c', 'cat "$@" | zstd -q -3 -T2 -c | wc -c', 'bash', ...files], { encoding: 'utf8', maxBuffer: MiB });
  if (r.status !== 0) throw new Error(`zstd of ${files.length} files: ${r.stderr}`);
  return Number(r.stdout.trim());
}

function duBytes(p) {
  return Number(sh('du', ['-sb', p]).split('\t')[0]);
}

/** Writes `mib` MiB of own data into `disk`: half random, half text, 1 MiB regions and 64 KiB clusters. */
async function ownWrites(w, mib) {
  const regions = [];
  const bigs = Math.floor(mib / 2);
  for (let i = 0; i < bigs; i++) regions.push(await w.region(i % 2 ? 'text' : 'random', MiB));
  const small = ((mib - bigs) * MiB) / CS;
  for (let i = 0; i < small; i++) regions.push(await w.region(i % 2 ? 'random' : 'text', CS, CS));
  w.apply(w.shuffle(regions.map(w.cmd)));
  return regions.map((r) => r.file);
}

/** The base disk, ten clones with three snapshots each; returns what the measurements need. */
async function buildData(dir, log) {
  const stateFile = path.join(dir, 'data.json');
  if (existsSync(stateFile)) {
    const state = JSON.parse(await readFile(stateFile, 'utf8'));
    if (state.version === DATA_VERSION) return { ...state, reused: true };
  }
  await rm(dir, { recursive: true, force: true });
  const home = path.join(dir, 'home');
  const disks = path.join(dir, 'disks');
  const src = path.join(dir, 'src');
  await mkdir(disks, { recursive: true });
  await mkdir(src, { recursive: true });
  const rnd = prng(20261202);

  log('building the base: 1 GiB of random bytes in a 2 GiB qcow2 disk...');
  const base = path.join(dir, 'base.qcow2');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CS}`, base, String(DISK_BYTES)]);
  const { randomBytes } = await import('node:crypto');
  const baseFiles = [];
  const chunk = 64 * MiB;
  for (let off = 0; off < BASE_BYTES; off += chunk) {
    const f = path.join(src, `base-${String(off / chunk).padStart(2, '0')}.bin`);
    await writeFile(f, randomBytes(chunk));
    baseFiles.push(f);
  }
  for (let i = 0; i < baseFiles.length; i += 4) {
    sh('qemu-io', ['-f', 'qcow2', ...baseFiles.slice(i, i + 4).flatMap((f, k) => ['-c', `write -q -s ${f} ${(i + k) * chunk} ${chunk}`]), base]);
  }
  const baseZstd = zstdSize(baseFiles);
  for (const f of baseFiles) await rm(f);

  const vms = [];
  for (let v = 0; v < VMS; v++) {
    const vm = `vm${v}`;
    log(`${vm}: cloning the base, ${PLAN.map(([s, m]) => `${s} ${m} MiB`).join(', ')}...`);
    const disk = path.join(disks, `${vm}.qcow2`);
    await copyFile(base, disk);
    cli(home, ['vm', 'add', vm, '--disk', disk]);
    const w = regionWriter({ src, rnd, disk, size: DISK_BYTES, cs: CS });
    const own = [];
    for (const [snap, mib] of PLAN) {
      w.used.fill(0);
      own.push(...(await ownWrites(w, mib)));
      cli(home, ['snapshot', 'create', vm, '--name', snap]);
    }
    const ownZstd = zstdSize(own.filter(Boolean));
    for (const f of own) if (f) await rm(f);
    vms.push({ vm, own_bytes: PLAN.reduce((a, [, m]) => a + m * MiB, 0), own_zstd3_bytes: ownZstd });
  }
  await rm(src, { recursive: true, force: true });
  await rm(base);
  const state = { version: DATA_VERSION, home, disks, base_bytes: BASE_BYTES, base_zstd3_bytes: baseZstd, vms };
  await writeFile(stateFile, `${JSON.stringify(state, null, 2)}\n`);
  return { ...state, reused: false };
}

/** vm0's new snapshot s4 (8 MiB); on reused data an earlier s4 is dropped first. Returns zstd -3 of its bytes. */
async function newSnapshot(data, dir) {
  const home = data.home;
  const snaps = JSON.parse(cli(home, ['snapshot', 'list', 'vm0', '--json']));
  if (snaps.some((s) => s.name === 's4')) {
    cli(home, ['snapshot', 'restore', 'vm0', '--name', 's3', '--yes']);
    cli(home, ['snapshot', 'delete', 'vm0', '--name', 's4']);
  }
  const src = path.join(dir, 'src-s4');
  await rm(src, { recursive: true, force: true });
  await mkdir(src, { recursive: true });
  const w = regionWriter({ src, rnd: prng(Date.now() >>> 0), disk: path.join(data.disks, 'vm0.qcow2'), size: DISK_BYTES, cs: CS });
  const files = await ownWrites(w, NEW_MIB);
  const z = zstdSize(files.filter(Boolean));
  await rm(src, { recursive: true, force: true });
  cli(home, ['snapshot', 'create', 'vm0', '--name', 's4']);
  return z;
}

function haveBorg(log) {
  if (spawnSync('borg', ['--version'], { encoding: 'utf8' }).status === 0) return true;
  log('borg is not installed: the borg comparison is skipped (apt-get install -y borgbackup adds it)');
  return false;
}

/** Fails with a clear message when this build has no `archive` commands yet. */
function requireArchive() {
  const r = spawnSync(NODE, [CLI, 'archive', '--help'], { encoding: 'utf8', env: ENV });
  if (r.status !== 0)
    throw new Error(`this build has no \`clonebox archive\` (${(r.stderr || r.stdout).trim().split('\n')[0]}); build the archive branch first`);
}

export default async function run({ runs = 5, log = () => {} } = {}) {
  requireTool('qemu-img');
  requireTool('qemu-io');
  const zstdVersion = requireTool('zstd');
  requireArchive();
  const borg = haveBorg(log);
  const body = async (dir) => {
    const data = await buildData(path.join(dir, 'data'), log);
    const { home, disks } = data;
    const reference = data.base_zstd3_bytes + data.vms.reduce((a, v) => a + v.own_zstd3_bytes, 0);
    log(`data${data.reused ? ' (reused)' : ''}: base zstd -3 ${(data.base_zstd3_bytes / MiB).toFixed(1)} MiB, reference ${(reference / MiB).toFixed(1)} MiB`);

    // Every push of this bench goes through here: a timed process with its --json report.
    const push = async (repo, vm) => {
      const r = await timeCommand(NODE, [CLI, '--home', home, 'archive', 'push', vm, '--repo', repo, '--json'], { env: ENV });
      return { ms: r.ms, cpuMs: r.cpuMs, report: JSON.parse(r.stdout) };
    };
    const init = (repo) => {
      spawnSync('rm', ['-rf', repo]);
      cli(home, ['archive', 'init', repo]);
    };

    log(`pushing ${VMS} VMs into one repository (load: ${uptime()})...`);
    const repo = path.join(dir, 'repo');
    init(repo);
    const pushes = [];
    let rss10 = null;
    for (const v of data.vms) {
      const before = await filesBytes(repo);
      if (v.vm === `vm${VMS - 1}`) {
        // The last push is measured for memory (the index then holds the nine VMs before it).
        rss10 = peakRss([NODE, CLI, '--home', home, 'archive', 'push', v.vm, '--repo', repo]);
        pushes.push({ vm: v.vm, ms: null, grew_bytes: (await filesBytes(repo)) - before });
      } else {
        const p = await push(repo, v.vm);
        pushes.push({ vm: v.vm, ms: round(p.ms), cpu_ms: round(p.cpuMs), grew_bytes: (await filesBytes(repo)) - before, report: p.report });
      }
      log(`  ${v.vm}: +${(pushes.at(-1).grew_bytes / MiB).toFixed(2)} MiB${pushes.at(-1).ms ? ` in ${(pushes.at(-1).ms / 1000).toFixed(1)} s` : ''}`);
    }
    const repoBytes = await filesBytes(repo);
    const repoDu = duBytes(repo);

    log('pushing vm1 again, unchanged...');
    const beforeSame = await filesBytes(repo);
    const same = await push(repo, 'vm1');
    const unchangedGrew = (await filesBytes(repo)) - beforeSame;

    log('second push: a new 8 MiB snapshot s4 on vm0...');
    const newZstd = await newSnapshot(data, dir);
    const beforeSecond = await filesBytes(repo);
    const second = await push(repo, 'vm0');
    const secondGrew = (await filesBytes(repo)) - beforeSecond;
    const secondBound = newZstd + 64 * 1024;

    log('restoring vm3 s2 and vm0 s4 from the repository, comparing with qemu-img compare...');
    const rhome = path.join(dir, 'restore-home');
    await rm(rhome, { recursive: true, force: true });
    for (const [vm, snap] of [
      ['vm3', 's2'],
      ['vm0', 's4'],
    ]) {
      const as = `${vm}-${snap}`;
      cli(rhome, ['archive', 'restore', vm, snap, '--repo', repo, '--as', as]);
      const list = JSON.parse(cli(rhome, ['snapshot', 'list', as, '--json']));
      const got = list.find((s) => s.name === snap);
      if (!got) throw new Error(`restored ${as} has no snapshot ${snap}: ${list.map((s) => s.name).join(', ')}`);
      sh('qemu-img', ['compare', '-q', path.join(disks, `${vm}@${snap}.qcow2`), got.disks[0].path]);
    }
    await rm(rhome, { recursive: true, force: true });

    let borgResult = null;
    if (borg) {
      log(`borg create --compression zstd,3, one archive per VM (load: ${uptime()})...`);
      const brepo = path.join(dir, 'borg');
      await rm(brepo, { recursive: true, force: true });
      const benv = {
        ...ENV,
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
        BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
        BORG_BASE_DIR: path.join(dir, 'borg-base'),
      };
      sh('borg', ['init', '--encryption=none', brepo], { env: benv });
      const files = await readdir(disks);
      let ms = 0;
      for (const v of data.vms) {
        // The VM's image files as they stood at the first pushes (s4 of vm0 came later: left out).
        const mine = files.filter((f) => (f === `${v.vm}.qcow2` || f.startsWith(`${v.vm}@`)) && !f.endsWith('@s4.qcow2')).sort();
        ms += (await timeCommand('borg', ['create', '--compression', 'zstd,3', `${brepo}::${v.vm}`, ...mine], { env: benv, cwd: disks })).ms;
      }
      borgResult = { version: sh('borg', ['--version']).trim(), repo_bytes: await filesBytes(brepo), du_bytes: duBytes(brepo), create_ms_total: round(ms) };
    }

    log(`push vm1 into a fresh repository vs snapshot export vm1: ${runs} timed runs per side...`);
    const fresh = path.join(dir, 'repo-fresh');
    const bundle = path.join(dir, 'vm1.bundle');
    const speed = await measure(
      {
        clonebox: () => push(fresh, 'vm1'),
        'snapshot export': async () => {
          const r = await timeCommand(NODE, [CLI, '--home', home, 'snapshot', 'export', 'vm1', '-o', bundle, '--force', '--json'], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      { runs, before: (side) => (side === 'clonebox' ? init(fresh) : undefined) },
    );
    init(fresh);
    const rssFresh = peakRss([NODE, CLI, '--home', home, 'archive', 'push', 'vm1', '--repo', fresh]);
    const freshBytes = await filesBytes(fresh);
    const bundleBytes = (await stat(bundle)).size;
    spawnSync('rm', ['-rf', fresh, bundle]);

    const result = {
      name,
      description,
      date: new Date().toISOString(),
      runs,
      machine: machineInfo(),
      uptime_end: uptime(),
      zstd: zstdVersion,
      data: { vms: VMS, base_bytes: data.base_bytes, base_zstd3_bytes: data.base_zstd3_bytes, per_vm: data.vms, reused: data.reused },
      repository: {
        bytes: repoBytes,
        du_bytes: repoDu,
        reference_bytes: reference,
        ratio_vs_reference: round(repoBytes / reference, 4),
        target: 1.05,
        pushes,
      },
      borg: borgResult && { ...borgResult, repository_vs_borg: round(repoBytes / borgResult.repo_bytes, 4) },
      unchanged_push: { grew_bytes: unchangedGrew, ms: round(same.ms), report: same.report },
      second_push: {
        grew_bytes: secondGrew,
        new_bytes: NEW_MIB * MiB,
        new_zstd3_bytes: newZstd,
        bound_bytes: secondBound,
        ratio_vs_bound: round(secondGrew / secondBound, 4),
        target: 1.0,
        ms: round(second.ms),
        report: second.report,
      },
      speed: {
        ...speed,
        ratio: ratio(speed.clonebox, speed['snapshot export']),
        cpu_ratio: cpuRatio(speed.clonebox, speed['snapshot export']),
        target: 1.1,
        fresh_repository_bytes: freshBytes,
        bundle_bytes: bundleBytes,
      },
      peak_rss_bytes: { push_fresh: rssFresh, push_tenth: rss10, target: 256 * MiB },
    };
    const mib = (x) => (x === null || x === undefined ? '-' : `${(x / MiB).toFixed(2)} MiB`);
    log(
      `repository ${mib(repoBytes)} = ${result.repository.ratio_vs_reference}x the reference ${mib(reference)} (target 1.05x); borg ${mib(borgResult?.repo_bytes)}`,
    );
    log(
      `second push grew ${mib(secondGrew)} against zstd(new) + 64 KiB = ${mib(secondBound)} (${result.second_push.ratio_vs_bound}x; target <= 1.1x of zstd(new) + 64 KiB)`,
    );
    log(`unchanged push grew ${unchangedGrew} bytes`);
    log(`push ${result.speed.ratio}x snapshot export (cpu ${result.speed.cpu_ratio}x; target 1.1x); peak RSS fresh ${mib(rssFresh)}, tenth ${mib(rss10)}`);
    log(`load: ${result.uptime_end}`);
    result.summary = [
      {
        case: 'push vm1 vs snapshot export vm1',
        clonebox_ms: speed.clonebox.median_ms,
        peer_ms: speed['snapshot export'].median_ms,
        ratio: result.speed.ratio,
        cpu_ratio: result.speed.cpu_ratio,
      },
    ];
    return result;
  };
  const keep = process.env.BENCH_ARCHIVE_KEEP;
  if (keep) {
    await mkdir(keep, { recursive: true });
    return body(path.resolve(keep));
  }
  return withTempDir('archive', body);
}

// `node bench/archive.bench.mjs` runs it alone (bench/run.mjs is the usual way).
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const r = await run({ runs: Number(process.env.BENCH_RUNS ?? 3), log: (m) => process.stderr.write(`   ${m}\n`) });
  process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
}
