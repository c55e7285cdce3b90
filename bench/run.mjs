#!/usr/bin/env node
/**
 * Runs the benches: every bench/*.bench.mjs, or the ones named on the command line
 * (`npm run bench -- qcow2-read`). Each bench measures clonebox and a peer tool on the same data in
 * the same run and reports ratios; results go to bench/out/<name>.json and a summary table is printed.
 *
 * Options: --runs N (timed runs per side, default 5), --list.
 */
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { BENCH_DIR, cpuPressure, distReady, writeResult } from './lib/harness.mjs';

const argv = process.argv.slice(2);
let runs = 5;
const names = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--runs') runs = Number(argv[++i]);
  else if (a.startsWith('--runs=')) runs = Number(a.slice(7));
  else if (a === '--list') names.push('--list');
  else if (a === '-h' || a === '--help') {
    process.stdout.write('usage: node bench/run.mjs [--runs N] [--list] [BENCH ...]\n');
    process.exit(0);
  } else names.push(a.replace(/\.bench\.mjs$/, ''));
}
if (!Number.isInteger(runs) || runs < 1) {
  process.stderr.write('bench: --runs needs a positive integer\n');
  process.exit(2);
}

const all = (await readdir(BENCH_DIR))
  .filter((f) => f.endsWith('.bench.mjs'))
  .map((f) => f.slice(0, -'.bench.mjs'.length))
  .sort();
if (names[0] === '--list') {
  process.stdout.write(`${all.join('\n')}\n`);
  process.exit(0);
}
const unknown = names.filter((n) => !all.includes(n));
if (unknown.length) {
  process.stderr.write(`bench: unknown bench ${unknown.join(', ')} (have: ${all.join(', ')})\n`);
  process.exit(2);
}
if (!distReady()) {
  process.stderr.write('bench: dist/ is missing; run `npm run bench` (it builds first) or `npx tsc -p tsconfig.json`\n');
  process.exit(1);
}

const selected = names.length ? names : all;
const rows = [];
let failed = 0;
for (const n of selected) {
  const mod = await import(pathToFileURL(path.join(BENCH_DIR, `${n}.bench.mjs`)).href);
  const t0 = Date.now();
  const loadStart = os.loadavg().map((x) => Math.round(x * 100) / 100);
  const pressureStart = cpuPressure();
  process.stderr.write(`== ${n}: ${mod.description ?? ''}\n`);
  try {
    const result = await mod.default({ runs, log: (m) => process.stderr.write(`   ${m}\n`) });
    result.wall_seconds = Math.round((Date.now() - t0) / 100) / 10;
    result.loadavg_start = loadStart;
    result.loadavg_end = os.loadavg().map((x) => Math.round(x * 100) / 100);
    result.cpu_pressure_start = pressureStart;
    result.cpu_pressure_end = cpuPressure();
    const file = await writeResult(n, result);
    process.stderr.write(`   done in ${result.wall_seconds} s, ${path.relative(process.cwd(), file)}\n`);
    for (const r of result.summary ?? []) rows.push({ bench: n, ...r });
  } catch (err) {
    failed++;
    process.stderr.write(`   FAILED: ${err?.stack ?? err}\n`);
    rows.push({ bench: n, case: 'FAILED', clonebox_ms: NaN, peer_ms: NaN, ratio: NaN, cpu_ratio: NaN });
  }
}

const pressure = cpuPressure();
const header = ['bench', 'case', 'clonebox ms', 'peer ms', 'ratio', 'cpu ratio', 'net ratio'];
const body = rows.map((r) => [r.bench, r.case, fmt(r.clonebox_ms), fmt(r.peer_ms), fmtRatio(r.ratio), fmtRatio(r.cpu_ratio), fmtRatio(r.net_ratio)]);
const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
const line = (cells) => cells.map((c, i) => (i >= 2 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
process.stdout.write(`\n${line(header)}\n${body.map(line).join('\n')}\n`);
process.stdout.write(
  `\nratio = clonebox median wall time / peer median wall time over ${runs} alternated runs each; cpu ratio\n` +
    `= the same for user+system CPU time; net ratio (where a bench measures a start-up floor) = the wall\n` +
    `ratio with each side's process start-up time taken off. Below 1.00: clonebox is faster.\n` +
    `Machine now: ${os.cpus().length} CPUs, load average ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}` +
    `${pressure ? `, tasks waiting for a CPU ${pressure.some_avg60}% of the last minute` : ''}.\n`,
);
process.exit(failed ? 1 : 0);

function fmtRatio(x) {
  return Number.isFinite(x) ? x.toFixed(2) : '-';
}

function fmt(x) {
  return Number.isFinite(x) ? x.toFixed(0) : '-';
}
