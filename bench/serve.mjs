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

  const svc = await spawnServer([path.join(root, 'bin', 'clonebox.js'), '--home', home, 'serve', '--insecure-http', '--listen', '127.0.0.1:0']);
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
  const measure = async (name, url, headers) => {
    // A short warm-up (JIT, caches) before the timed run.
    await autocannon({ url, connections: CONNECTIONS, amount: 2000, headers });
    const loadBefore = os.loadavg()[0];
    const r = await load(url, headers);
    if (r.non2xx || r.errors) throw new Error(`${name}: ${r.non2xx} non-2xx replies, ${r.errors} errors`);
    rows.push({ name, requests_per_s: Math.round(r.requests.average), p99_ms: r.latency.p99, load1: Number(loadBefore.toFixed(2)) });
  };
  await measure('ceiling (node:http static JSON)', `${ceiling.url}/`, {});
  await measure('GET snapshot collection (100)', collUrl, auth);
  await measure('GET one snapshot', `${collUrl}/s050`, auth);

  const top = rows[0].requests_per_s;
  process.stdout.write(`clonebox serve, ${CONNECTIONS} connections, ${SECONDS} s each, ${os.cpus().length} cores\n`);
  for (const r of rows) {
    r.share_of_ceiling = Number((r.requests_per_s / top).toFixed(2));
    process.stdout.write(
      `${r.name.padEnd(34)} ${String(r.requests_per_s).padStart(7)} req/s  p99 ${String(r.p99_ms).padStart(4)} ms  ${(r.share_of_ceiling * 100).toFixed(0).padStart(3)}% of ceiling  (load ${r.load1})\n`,
    );
  }
  await mkdir(path.join(root, 'bench', 'out'), { recursive: true });
  await writeFile(
    path.join(root, 'bench', 'out', 'serve.json'),
    `${JSON.stringify({ seconds: SECONDS, connections: CONNECTIONS, snapshots: SNAPSHOTS, rows }, null, 2)}\n`,
  );
  await rm(dir, { recursive: true, force: true });
} finally {
  for (const p of procs) p.kill('SIGTERM');
  await rm(home, { recursive: true, force: true });
}
