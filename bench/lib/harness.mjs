/**
 * Shared helpers for the benches: temp dirs, timing of child processes, paired measurements with
 * medians, page-cache reports and result files. No bench asserts a timing: they measure and report.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const ROOT = path.dirname(BENCH_DIR);
const OUT_DIR = path.join(BENCH_DIR, 'out');
/** The CLI as a user runs it, and the Node that runs it. */
export const CLI = path.join(ROOT, 'bin', 'clonebox.js');
export const NODE = process.execPath;
/** The environment for clonebox runs: no CLONEBOX_* setting of the shell may change what is measured. */
export const CLEAN_ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CLONEBOX_')));

/** Runs `fn(dir)` with a fresh temp dir that is removed afterwards, whatever happens. */
export async function withTempDir(prefix, fn) {
  const dir = await mkdtemp(path.join(process.env.CLONEBOX_BENCH_TMP ?? os.tmpdir(), `clonebox-bench-${prefix}-`));
  const cleanup = () => {
    try {
      spawnSync('rm', ['-rf', dir]);
    } catch {
      /* best effort */
    }
  };
  process.once('SIGINT', cleanup);
  try {
    return await fn(dir);
  } finally {
    process.removeListener('SIGINT', cleanup);
    await rm(dir, { recursive: true, force: true });
  }
}

/** Checks that a tool is on PATH; throws a readable error otherwise. */
export function requireTool(name) {
  const r = spawnSync(name, ['--version'], { encoding: 'utf8' });
  if (r.error) throw new Error(`${name} is not installed (bash scripts/install-system-deps.sh installs it)`);
  return (r.stdout || r.stderr).split('\n')[0].trim();
}

/** Runs a command to completion (not timed); throws with its stderr on failure. */
export function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...opts });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 6).join(' ')}... exited ${r.status}: ${r.stderr.trim().slice(0, 2000)}`);
  return r.stdout;
}

/** Separates the command's own stderr from the output of bash's `times`. */
const TIMES_MARK = '@@clonebox-bench-times@@';

/**
 * Runs a command and returns its wall time in milliseconds (spawn to exit, so process start-up is
 * counted on both sides), its CPU time (user + system, from bash's `times`, which covers the
 * command's whole process tree), its stdout and exit code. Throws if it fails: exits with a code not in
 * `okCodes` (default [0]; `qemu-img compare` exits 1 on a mismatch, which a bench may expect).
 */
export function timeCommand(cmd, args, { okCodes = [0], ...opts } = {}) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn('bash', ['-c', `"$@"; s=$?; printf '\\n${TIMES_MARK}\\n' >&2; times >&2; exit $s`, 'bash', cmd, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...opts,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const at = err.lastIndexOf(`\n${TIMES_MARK}\n`);
      const stderr = at < 0 ? err : err.slice(0, at);
      // `times` prints the shell's own user/system times, then its children's: the command's.
      const times =
        at < 0
          ? ''
          : (err
              .slice(at + TIMES_MARK.length + 2)
              .trim()
              .split('\n')
              .pop() ?? '');
      const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(times.trim());
      const cpuMs = m ? (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])) * 1000 : NaN;
      if (!okCodes.includes(code)) reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? signal}): ${stderr.trim().slice(0, 2000)}`));
      else resolve({ ms, cpuMs, stdout: out, stderr, code });
    });
  });
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Measures two sides on the same data, alternating A,B,B,A,A,B... so that drift on the shared machine
 * hits both sides alike. `sides` maps a label to an async function returning {ms, ...extra}. One
 * untimed warm-up run of each side comes first (it also fills the page cache).
 * Returns per-side samples and medians.
 */
export async function measure(sides, { runs = 5, warmup = 1, before } = {}) {
  const names = Object.keys(sides);
  const samples = Object.fromEntries(names.map((n) => [n, []]));
  const cpu = Object.fromEntries(names.map((n) => [n, []]));
  const extras = Object.fromEntries(names.map((n) => [n, null]));
  for (let w = 0; w < warmup; w++)
    for (const n of names) {
      await before?.(n);
      extras[n] = await sides[n]();
    }
  for (let i = 0; i < runs; i++) {
    const order = i % 2 === 0 ? names : [...names].reverse();
    for (const n of order) {
      await before?.(n);
      const r = await sides[n]();
      samples[n].push(r.ms);
      if (Number.isFinite(r.cpuMs)) cpu[n].push(r.cpuMs);
      extras[n] = r;
    }
  }
  const result = {};
  for (const n of names) {
    const { ms: _ms, cpuMs: _c, stdout: _o, stderr: _e, ...rest } = extras[n] ?? {};
    result[n] = {
      median_ms: round(median(samples[n])),
      min_ms: round(Math.min(...samples[n])),
      samples_ms: samples[n].map((x) => round(x)),
      cpu_median_ms: cpu[n].length ? round(median(cpu[n])) : null,
      ...rest,
    };
  }
  return result;
}

export function round(x, d = 1) {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

/** Ratio clonebox/peer of median wall times (below 1.0: clonebox is faster). */
export function ratio(clonebox, peer) {
  return Math.round((clonebox.median_ms / peer.median_ms) * 1000) / 1000;
}

/** Ratio clonebox/peer of median CPU times (user + system), or null when not measured. */
export function cpuRatio(clonebox, peer) {
  if (!clonebox.cpu_median_ms || !peer.cpu_median_ms) return null;
  return Math.round((clonebox.cpu_median_ms / peer.cpu_median_ms) * 1000) / 1000;
}

/** Percentage of a file's pages in the page cache, via fincore(1) when available (null otherwise). */
export function cachedPercent(file) {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES,SIZE', file], { encoding: 'utf8' });
  if (r.status !== 0 || !r.stdout) return null;
  const [res, size] = r.stdout.trim().split(/\s+/).map(Number);
  if (!size) return null;
  return Math.round((res / size) * 1000) / 10;
}

export function machineInfo() {
  return {
    node: process.version,
    cpus: os.cpus().length,
    cpu_model: os.cpus()[0]?.model ?? null,
    mem_total_mib: Math.round(os.totalmem() / 2 ** 20),
    mem_free_mib: Math.round(os.freemem() / 2 ** 20),
    loadavg: os.loadavg().map((x) => round(x, 2)),
    cpu_pressure: cpuPressure(),
  };
}

/** Linux PSI: the share of time some task waited for a CPU (avg10, avg60 in percent), or null. */
export function cpuPressure() {
  try {
    const line = readFileSync('/proc/pressure/cpu', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('some'));
    const m = /avg10=([\d.]+) avg60=([\d.]+)/.exec(line ?? '');
    return m ? { some_avg10: Number(m[1]), some_avg60: Number(m[2]) } : null;
  } catch {
    return null;
  }
}

export async function writeResult(name, result) {
  await mkdir(OUT_DIR, { recursive: true });
  const file = path.join(OUT_DIR, `${name}.json`);
  await writeFile(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}

export function distReady() {
  return existsSync(path.join(ROOT, 'dist', 'src', 'qcow2', 'reader.js'));
}

export const MiB = 1024 * 1024;

/** Peak RSS in bytes of one run of a command (/usr/bin/time), null when it did not say. */
export function peakRss(args, env = CLEAN_ENV) {
  const r = spawnSync('/usr/bin/time', ['-f', 'MAXRSS=%M', ...args], { encoding: 'utf8', env, maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
  const m = /MAXRSS=(\d+)/.exec(r.stderr);
  return m ? Number(m[1]) * 1024 : null;
}

/** Sum of the sizes of the regular files under `dir` (without directory entries). */
export async function filesBytes(dir) {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(path.join(e.parentPath ?? e.path, e.name))).size;
  }
  return total;
}

/** The machine's load, as `uptime` prints it (beside every timing taken on the shared machine). */
export function uptime() {
  return sh('uptime', []).trim();
}
