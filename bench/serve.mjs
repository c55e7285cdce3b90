#!/usr/bin/env node
/**
 * serve: `clonebox serve` under load, against plain node:http answering a static JSON body (the
 * ceiling: no routing, no auth, no reads) in the same run. Not a *.bench.mjs (run.mjs does not pick
 * it up): run it alone, after `npm run build`:  node bench/serve.mjs
 *
 * A VM with 100 snapshots (made through the library, each a real journaled create). Both servers run
 * in their own process on 127.0.0.1 over plain HTTP (`serve --insecure-http`: TLS would measure TLS,
 * and the ceiling has none); autocannon drives them from this process with 50 connections for
 * BENCH_SERVE_SECONDS (default 10) each:
 *   ceiling     GET /            plain node:http, a static JSON body as large as the collection reply
 *   collection  GET .../Snapshots            (session token, X-Auth-Token)
 *   snapshot    GET .../Snapshots/<name>     (session token)
 * Prints requests/s and p99 latency of each, and each service figure as a share of the ceiling;
 * writes bench/out/serve.json. The load of the machine (os.loadavg) is printed beside the figures.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { Clonebox } = await import(path.join(root, 'dist', 'src', 'index.js'));
const { addAccount } = await import(path.join(root, 'dist', 'src', 'serve', 'index.js'));

const SECONDS = Number(process.env.BENCH_SERVE_SECONDS ?? 10);
const CONNECTIONS = 50;
const SNAPSHOTS = 100;
const PW = 'bench password';

/** Spawns a server process; resolves with its URL once it printed one. */
function spawnServer(args, env = {}) {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (b) => {
      out += b;
      const m = /(http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve({ child, url: m[1] });
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${out}`)));
  });
}

/**
 * CPU seconds (user + system) a process has used, from /proc (Linux). Per request, this is the figure
 * a loaded machine disturbs least: requests/s there measure the scheduler as much as the server.
 */
function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return null;
  }
}

function load(url, headers = {}) {
  return autocannon({ url, connections: CONNECTIONS, duration: SECONDS, headers });
}

const home = await mkdtemp(path.join(os.tmpdir(), 'clonebox-bench-serve-'));
const procs = [];
try {
  const cb = await Clonebox.open({ home });
  await cb.vms.create('web', { size: '64M' });
  for (let i = 0; i < SNAPSHOTS; i++) await cb.snapshots.create('web', { name: `s${String(i).padStart(3, '0')}` });
  await cb.close();
  await addAccount(home, 'bench', 'ReadOnly', PW);

  // BENCH_SERVE_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") goes to the service's node: how
  // bench/README.md's profile was taken (the profile is written when the service exits on SIGTERM).
  const nodeArgs = (process.env.BENCH_SERVE_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const svc = await spawnServer([
    ...nodeArgs,
    path.join(root, 'bin', 'clonebox.js'),
    '--home',
    home,
    'serve',
    '--insecure-http',
    '--no-schedule',
    '--listen',
    '127.0.0.1:0',
  ]);
  procs.push(svc.child);
  const login = await fetch(`${svc.url}/redfish/v1/SessionService/Sessions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ UserName: 'bench', Password: PW }),
  });
  const token = login.headers.get('x-auth-token');
  if (login.status !== 201 || !token) throw new Error(`login failed: ${login.status}`);
  const auth = { 'X-Auth-Token': token };
  const collUrl = `${svc.url}/redfish/v1/Systems/web/Oem/HawkFish/Snapshots`;
  const coll = await (await fetch(collUrl, { headers: auth })).text();
  if (JSON.parse(coll)['Members@odata.count'] !== SNAPSHOTS) throw new Error('the collection does not list every snapshot');

  const staticBody = JSON.stringify({ padding: 'x'.repeat(Math.max(0, coll.length - 16)) });
  const dir = await mkdtemp(path.join(os.tmpdir(), 'clonebox-bench-static-'));
  const script = path.join(dir, 'static.mjs');
  await writeFile(
    script,
    `import http from 'node:http';
const body = ${JSON.stringify(staticBody)};
const s = http.createServer((req, res) => { res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }); res.end(body); });
s.listen(0, '127.0.0.1', () => console.log('http://127.0.0.1:' + s.address().port));
`,
  );
  const ceiling = await spawnServer([script]);
  procs.push(ceiling.child);

  const rows = [];
  const measure = async (name, url, headers, pid) => {
    // A short warm-up (JIT, caches) before the timed run.
    await autocannon({ url, connections: CONNECTIONS, amount: 2000, headers });
    const loadBefore = os.loadavg()[0];
    const cpuBefore = cpuSeconds(pid);
    const r = await load(url, headers);
    const cpuAfter = cpuSeconds(pid);
    if (r.non2xx || r.errors) throw new Error(`${name}: ${r.non2xx} non-2xx replies, ${r.errors} errors`);
    const cpuUs = cpuBefore === null || cpuAfter === null || !r.requests.total ? null : Math.round(((cpuAfter - cpuBefore) * 1e6) / r.requests.total);
    rows.push({
      name,
      requests_per_s: Math.round(r.requests.average),
      p99_ms: r.latency.p99,
      server_cpu_us_per_request: cpuUs,
      load1: Number(loadBefore.toFixed(2)),
    });
  };
  // BENCH_SERVE_ROUNDS (default 1): the three runs repeated, alternated, each row the median of its runs.
  const ROUNDS = Number(process.env.BENCH_SERVE_ROUNDS ?? 1);
  const all = [];
  for (let i = 0; i < ROUNDS; i++) {
    await measure('ceiling (node:http static JSON)', `${ceiling.url}/`, {}, ceiling.child.pid);
    await measure('GET snapshot collection (100)', collUrl, auth, svc.child.pid);
    await measure('GET one snapshot', `${collUrl}/s050`, auth, svc.child.pid);
    all.push(rows.splice(0));
  }
  const median = (xs) => {
    const v = xs.filter((x) => x !== null).sort((a, b) => a - b);
    return v.length ? v[Math.floor((v.length - 1) / 2)] : null;
  };
  for (let k = 0; k < all[0].length; k++) {
    const runs = all.map((r) => r[k]);
    rows.push({
      name: runs[0].name,
      requests_per_s: median(runs.map((r) => r.requests_per_s)),
      p99_ms: median(runs.map((r) => r.p99_ms)),
      server_cpu_us_per_request: median(runs.map((r) => r.server_cpu_us_per_request)),
      load1: median(runs.map((r) => r.load1)),
      // The share of each round's own ceiling, then the median of those.
      share_of_ceiling: Number(median(all.map((r) => r[k].requests_per_s / r[0].requests_per_s)).toFixed(2)),
    });
  }

  process.stdout.write(`clonebox serve, ${CONNECTIONS} connections, ${SECONDS} s each, ${os.cpus().length} cores, median of ${ROUNDS} alternated round(s)\n`);
  for (const r of rows) {
    process.stdout.write(
      `${r.name.padEnd(34)} ${String(r.requests_per_s).padStart(7)} req/s  p99 ${String(r.p99_ms).padStart(4)} ms  ${(r.share_of_ceiling * 100).toFixed(0).padStart(3)}% of ceiling  server CPU ${String(r.server_cpu_us_per_request ?? '?').padStart(4)} us/req  (load ${r.load1})\n`,
    );
  }
  await mkdir(path.join(root, 'bench', 'out'), { recursive: true });
  await writeFile(
    path.join(root, 'bench', 'out', 'serve.json'),
    `${JSON.stringify({ seconds: SECONDS, connections: CONNECTIONS, snapshots: SNAPSHOTS, rounds: ROUNDS, rows, runs: all }, null, 2)}\n`,
  );
  await rm(dir, { recursive: true, force: true });
} finally {
  // Waited for: the service writes its --cpu-prof profile on the way out.
  await Promise.all(
    procs.map((p) =>
      p.exitCode !== null
        ? null
        : new Promise((resolve) => {
            p.once('exit', resolve);
            p.kill('SIGTERM');
          }),
    ),
  );
  await rm(home, { recursive: true, force: true });
}
