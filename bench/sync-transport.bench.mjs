/**
 * sync-transport: how should team sync move blocks between two workstations?
 *
 *   hypercore  the sharer appends the blocks to a Hypercore; the receiver opens the core by key and
 *              downloads the whole range with sparse replication (Merkle-verified by Hypercore), on
 *              the connection's Protomux beside the other channels.
 *   protomux   the blocks travel on the clonebox/blocks channel of the same connection with the real
 *              code (src/sync/blocks.ts): requests by hash, a 16 MiB window, one block per frame,
 *              each block checked against its SHA-256 and written to a file at its offset.
 *   stream     the same bytes as plain Protomux messages, no hashing, no writing: the ceiling of one
 *              connection on this machine.
 *
 * Two processes (a sharer and a receiver, each a TeamSwarm of its own home after the membership proof)
 * on a private 3-node DHT on 127.0.0.1 run by this process. Blocks are random (like compressed data),
 * BENCH_SYNC_MIB MiB per case (default 128) in blocks of 64 KiB, 256 KiB, 1 MiB and 4 MiB. Each side
 * runs `runs` times per block size, alternating the order; medians are compared. The sharer's Hypercore
 * append time and storage size, and the receiver's time to read the downloaded blocks back out of its
 * Hypercore ("extract": what a pull into qcow2 layers would add), are reported beside.
 *
 * Run: `npm run bench -- sync-transport` (or `node bench/sync-transport.bench.mjs` after a build).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MiB, machineInfo, measure, ROOT, round, sh, withTempDir } from './lib/harness.mjs';

export const name = 'sync-transport';
export const description = 'team sync block transport: Hypercore sparse replication vs a Protomux channel (two processes, loopback DHT)';

const SELF = fileURLToPath(import.meta.url);
const dist = (p) => pathToFileURL(path.join(ROOT, 'dist', p)).href;
const BLOCK_SIZES = [64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const CONTROL = 'clonebox-bench/control';
const STREAM = 'clonebox-bench/stream';
const WINDOW_BYTES = 16 * MiB;

const label = (n) => (n >= MiB ? `${n / MiB}M` : `${n / 1024}K`);

// ------------------------------------------------------------------------------------------------
// Parent: private DHT, two homes, two child processes.

export default async function run({ runs = 5, log = () => {} } = {}) {
  const totalMiB = Number(process.env.BENCH_SYNC_MIB ?? 128);
  const { startPrivateDht } = await import(dist('src/sync/bootstrap.js'));
  const { resolveHome } = await import(dist('src/store/home.js'));
  const { ensureIdentity } = await import(dist('src/sync/identity.js'));
  const { createTeam, joinTeam } = await import(dist('src/sync/teams.js'));

  return withTempDir('sync-transport', async (dir) => {
    const homes = { serve: path.join(dir, 'sharer'), fetch: path.join(dir, 'receiver') };
    await ensureIdentity(resolveHome(homes.serve), 'sharer');
    await ensureIdentity(resolveHome(homes.fetch), 'receiver');
    const { invite } = await createTeam(resolveHome(homes.serve), 'bench');
    await joinTeam(resolveHome(homes.fetch), 'bench', invite);

    const net = await startPrivateDht({ host: '127.0.0.1', port: 0 });
    const children = [];
    try {
      const env = {
        ...process.env,
        BENCH_SYNC_BOOTSTRAP: `${net.address.host}:${net.address.port}`,
        BENCH_SYNC_RUNS: String(runs),
        BENCH_SYNC_MIB: String(totalMiB),
        BENCH_SYNC_TMP: dir,
      };
      const server = startChild('serve', homes.serve, env, children, log);
      await server.line((l) => l === 'ready');
      log(`sharer ready; receiver fetching ${totalMiB} MiB per case, ${runs} runs per side...`);
      const client = startChild('fetch', homes.fetch, env, children, log);
      const resultLine = await client.line((l) => l.startsWith('{'));
      const fetched = JSON.parse(resultLine);
      await client.exited;

      const cases = fetched.cases.map((c) => {
        const mibps = (ms) => round(c.bytes / MiB / (ms / 1000), 1);
        const side = (x) => ({
          ...x,
          mib_per_s: mibps(x.median_ms),
          best_mib_per_s: mibps(x.min_ms),
          cpu_ms_per_mib: x.cpu_median_ms === null ? null : round(x.cpu_median_ms / (c.bytes / MiB), 2),
        });
        return {
          block_size: c.block_size,
          blocks: c.blocks,
          bytes: c.bytes,
          hypercore: side(c.hypercore),
          hypercore_extract_ms: c.hypercore_extract_ms,
          sharer_append_ms: c.append_ms,
          sharer_append_mib_per_s: mibps(c.append_ms),
          sharer_hypercore_storage_bytes: c.storage_bytes,
          protomux: side(c.protomux),
          stream: side(c.stream),
        };
      });
      for (const c of cases) {
        const fmt = (x) => `${x.mib_per_s} MiB/s (best ${x.best_mib_per_s}, ${x.cpu_ms_per_mib} CPU ms/MiB)`;
        log(
          `${label(c.block_size)}: hypercore ${fmt(c.hypercore)} +${c.hypercore_extract_ms} ms extract, sharer append ${c.sharer_append_mib_per_s} MiB/s; ` +
            `protomux ${fmt(c.protomux)}; stream ${fmt(c.stream)}`,
        );
      }
      return {
        name,
        machine: machineInfo(),
        loadavg_after: os.loadavg().map((x) => round(x, 2)),
        runs,
        mib_per_case: totalMiB,
        window_bytes: WINDOW_BYTES,
        cases,
        summary: cases.map((c) => ({
          case: `${label(c.block_size)} blocks: protomux vs hypercore`,
          clonebox_ms: c.protomux.median_ms,
          peer_ms: c.hypercore.median_ms,
          ratio: round(c.protomux.median_ms / c.hypercore.median_ms, 3),
          cpu_ratio: c.protomux.cpu_median_ms && c.hypercore.cpu_median_ms ? round(c.protomux.cpu_median_ms / c.hypercore.cpu_median_ms, 3) : null,
        })),
      };
    } finally {
      for (const ch of children) if (ch.exitCode === null) ch.kill('SIGTERM');
      await Promise.all(children.map((ch) => (ch.exitCode === null ? new Promise((r) => ch.once('exit', r)) : null)));
      await net.close();
    }
  });
}

function startChild(role, home, env, children, log = () => {}) {
  const child = spawn(process.execPath, [SELF, role, home], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    for (const l of String(d).split('\n'))
      if (l.startsWith('progress: ')) log(l.slice(10));
      else if (l && process.env.BENCH_SYNC_DEBUG) log(`[${role}] ${l}`);
  });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    lines.push(l);
    for (const w of [...waiters])
      if (w.match(l)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(l);
      }
  });
  const exited = new Promise((resolve, reject) =>
    child.on('exit', (code, sig) => {
      const err = new Error(`${role} exited ${code ?? sig}: ${stderr.trim().slice(-2000)}`);
      for (const w of waiters.splice(0)) w.reject(err);
      if (code === 0 || (role === 'serve' && sig === 'SIGTERM')) resolve();
      else reject(err);
    }),
  );
  exited.catch(() => undefined);
  return {
    exited,
    line: (match) => {
      const found = lines.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        if (child.exitCode !== null) return reject(new Error(`${role} exited: ${stderr.trim().slice(-2000)}`));
        waiters.push({ match, resolve, reject });
      });
    },
  };
}

// ------------------------------------------------------------------------------------------------
// Children: both join the team's swarm with the real clonebox code (DHT, membership proof).

async function joinSwarm(home, services) {
  const { resolveHome } = await import(dist('src/store/home.js'));
  const { ensureIdentity } = await import(dist('src/sync/identity.js'));
  const { loadTeam } = await import(dist('src/sync/teams.js'));
  const { TeamSwarm } = await import(dist('src/sync/swarm.js'));
  const { parseHostPort } = await import(dist('src/sync/hostport.js'));
  const h = resolveHome(home);
  return TeamSwarm.open({
    home: h,
    team: await loadTeam(h, 'bench'),
    identity: await ensureIdentity(h),
    bootstrap: [parseHostPort(process.env.BENCH_SYNC_BOOTSTRAP)],
    deadline: Date.now() + 15_000,
    log: (l) => process.stderr.write(`${l}\n`),
    services,
  });
}

/** Sends messages with backpressure: queue, and resume on the channel's drain. */
function sender(message) {
  const queue = [];
  let blocked = false;
  const pump = () => {
    blocked = false;
    while (queue.length) {
      if (!message.send(queue.shift())) {
        blocked = true;
        return;
      }
    }
  };
  return {
    push: (m) => {
      queue.push(m);
      if (!blocked) pump();
    },
    drain: () => pump(),
  };
}

async function serve(home) {
  const { BlockChannel } = await import(dist('src/sync/blocks.js'));
  const c = (await import('compact-encoding')).default;
  const Hypercore = (await import('hypercore')).default;
  const m = await import(dist('src/sync/messages.js'));
  const tmp = await mkdtemp(path.join(process.env.BENCH_SYNC_TMP ?? os.tmpdir(), 'sharer-'));
  const cores = [];
  const byHash = new Map();
  const peers = new Map(); // peer -> {replies, raw, control}
  const state = (peer) => {
    if (!peers.has(peer)) peers.set(peer, {});
    return peers.get(peer);
  };

  const services = {
    [m.BLOCKS_PROTOCOL]: (peer) => {
      BlockChannel.attach(peer.mux, {
        source: {
          async *read(hashes) {
            const missing = hashes.filter((h) => !byHash.has(h.toString('hex')));
            if (missing.length) yield { missing };
            for (const h of hashes) {
              const data = byHash.get(h.toString('hex'));
              if (data) yield { frame: { codec: m.CODEC_RAW, blocks: [{ hash: h, size: data.length }], data } };
            }
          },
        },
      });
    },
    [STREAM]: (peer) => {
      const st = state(peer);
      const stream = peer.mux.createChannel({ protocol: STREAM, messages: [{ encoding: c.raw }], ondrain: () => st.raw.drain() });
      st.raw = sender(stream.messages[0]);
      stream.open();
    },
    [CONTROL]: (peer) => {
      const st = state(peer);
      const control = peer.mux.createChannel({
        protocol: CONTROL,
        messages: [
          {
            encoding: c.json,
            onmessage: async (msg) => {
              if (msg.op === 'prepare') {
                const list = [];
                for (let i = 0; i < msg.count; i++) {
                  const b = randomBytes(msg.blockSize);
                  list.push(b);
                  byHash.set(createHash('sha256').update(b).digest('hex'), b);
                }
                const coreDir = path.join(tmp, `core-${msg.blockSize}`);
                const core = new Hypercore(coreDir);
                await core.ready();
                const t0 = process.hrtime.bigint();
                const per = Math.max(1, Math.floor((16 * MiB) / msg.blockSize));
                for (let i = 0; i < list.length; i += per) await core.append(list.slice(i, i + per));
                const appendMs = Number(process.hrtime.bigint() - t0) / 1e6;
                cores.push(core);
                core.replicate(peer.mux);
                const storage = Number(sh('du', ['-sb', coreDir]).split(/\s/)[0]);
                control.messages[0].send({
                  op: 'prepared',
                  key: core.key.toString('hex'),
                  hashes: list.map((b) => createHash('sha256').update(b).digest('hex')),
                  append_ms: round(appendMs),
                  storage_bytes: storage,
                });
              } else if (msg.op === 'cpu') {
                const u = process.cpuUsage();
                control.messages[0].send({ op: 'cpu', us: u.user + u.system });
              } else if (msg.op === 'stream') {
                const chunk = randomBytes(msg.blockSize);
                for (let i = 0; i < msg.count; i++) st.raw.push(chunk);
              }
            },
          },
        ],
      });
      control.open();
    },
  };
  const swarm = await joinSwarm(home, services);
  process.stdout.write('ready\n');
  await new Promise((r) => process.once('SIGTERM', r));
  for (const core of cores) await core.close();
  await swarm.close();
  await rm(tmp, { recursive: true, force: true });
  process.exit(0);
}

async function fetch(home) {
  const { BlockChannel } = await import(dist('src/sync/blocks.js'));
  const c = (await import('compact-encoding')).default;
  const Hypercore = (await import('hypercore')).default;
  const m = await import(dist('src/sync/messages.js'));
  const runs = Number(process.env.BENCH_SYNC_RUNS ?? 5);
  const total = Number(process.env.BENCH_SYNC_MIB ?? 128) * MiB;
  let onChunk = null;
  let onControl = null;
  let blocks = null;
  let control = null;
  const services = {
    [m.BLOCKS_PROTOCOL]: (peer) => {
      blocks = BlockChannel.attach(peer.mux);
    },
    [STREAM]: (peer) => {
      peer.mux.createChannel({ protocol: STREAM, messages: [{ encoding: c.raw, onmessage: (b) => onChunk(b) }] }).open();
    },
    [CONTROL]: (peer) => {
      control = peer.mux.createChannel({ protocol: CONTROL, messages: [{ encoding: c.json, onmessage: (msg) => onControl(msg) }] });
      control.open();
    },
  };
  const swarm = await joinSwarm(home, services);
  const [peer] = await swarm.waitForPeers(1, Date.now() + 15_000);
  if (!peer) throw new Error('no peer within 15 s');
  const mux = peer.mux;
  const tmp = await mkdtemp(path.join(process.env.BENCH_SYNC_TMP ?? os.tmpdir(), 'receiver-'));
  await Promise.all([blocks.channel, control].map((ch) => ch.fullyOpened()));
  const ask = (msg) =>
    new Promise((resolve) => {
      onControl = resolve;
      control.messages[0].send(msg);
    });

  const cases = [];
  let runNo = 0;
  for (const blockSize of BLOCK_SIZES) {
    const count = Math.max(1, Math.floor(total / blockSize));
    const prepared = await ask({ op: 'prepare', blockSize, count });
    const key = Buffer.from(prepared.key, 'hex');
    const hashes = prepared.hashes.map((h) => Buffer.from(h, 'hex'));
    let extractMs = null;

    const viaHypercore = async () => {
      const dir = path.join(tmp, `hc-${runNo++}`);
      const core = new Hypercore(dir, key);
      await core.ready();
      core.replicate(mux);
      const t0 = process.hrtime.bigint();
      await core.download({ start: 0, end: count }).done();
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (core.contiguousLength !== count) throw new Error(`hypercore: ${core.contiguousLength}/${count} blocks`);
      // What a pull would add: read every block back out of Hypercore storage (into a layer file).
      const fh = await open(path.join(dir, 'out'), 'w');
      const t1 = process.hrtime.bigint();
      for (let i = 0; i < count; i++) await fh.write(await core.get(i), 0, blockSize, i * blockSize);
      extractMs = round(Number(process.hrtime.bigint() - t1) / 1e6);
      await fh.close();
      await core.close();
      await rm(dir, { recursive: true, force: true });
      return { ms };
    };

    const viaProtomux = async () => {
      const file = path.join(tmp, `pm-${runNo++}`);
      const fh = await open(file, 'w');
      const index = new Map(hashes.map((h, i) => [h.toString('hex'), i]));
      const writes = [];
      const t0 = process.hrtime.bigint();
      const res = await blocks.fetch(hashes, {
        onBlock: (h, data) => {
          writes.push(fh.write(data, 0, data.length, index.get(h.toString('hex')) * blockSize));
        },
        expectedSize: () => blockSize,
        windowBytes: WINDOW_BYTES,
      });
      await Promise.all(writes);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (res.received !== count) throw new Error(`protomux: ${res.received}/${count} blocks (${res.corrupt.length} corrupt, ${res.missing.length} missing)`);
      await fh.close();
      await rm(file, { force: true });
      return { ms };
    };

    const viaStream = async () => {
      const t0 = process.hrtime.bigint();
      await new Promise((resolve) => {
        let got = 0;
        onChunk = (b) => {
          got += b.length;
          if (got >= count * blockSize) resolve();
        };
        control.messages[0].send({ op: 'stream', blockSize, count });
      });
      return { ms: Number(process.hrtime.bigint() - t0) / 1e6 };
    };

    // CPU of both processes during a run (user + system): steadier than wall time on a busy machine.
    const withCpu = (fn) => async () => {
      const s0 = (await ask({ op: 'cpu' })).us;
      const r0 = process.cpuUsage();
      const r = await fn();
      const r1 = process.cpuUsage(r0);
      const s1 = (await ask({ op: 'cpu' })).us;
      return { ...r, cpuMs: (r1.user + r1.system + s1 - s0) / 1000 };
    };
    process.stderr.write(`progress: ${label(blockSize)} blocks: sharer appended ${count} blocks to its Hypercore in ${prepared.append_ms} ms; measuring...\n`);
    const r = await measure({ hypercore: withCpu(viaHypercore), protomux: withCpu(viaProtomux), stream: withCpu(viaStream) }, { runs, warmup: 1 });
    cases.push({
      block_size: blockSize,
      blocks: count,
      bytes: count * blockSize,
      append_ms: prepared.append_ms,
      storage_bytes: prepared.storage_bytes,
      hypercore_extract_ms: extractMs,
      ...r,
    });
  }
  process.stdout.write(`${JSON.stringify({ cases })}\n`);
  await swarm.close();
  await rm(tmp, { recursive: true, force: true });
  process.exit(0);
}

// Direct invocation: a child role, or the whole bench on its own.
if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  const [role, home] = process.argv.slice(2);
  const fail = (err) => {
    process.stderr.write(`${err?.stack ?? err}\n`);
    process.exit(1);
  };
  if (role === 'serve') serve(home).catch(fail);
  else if (role === 'fetch') fetch(home).catch(fail);
  else {
    run({ runs: Number(process.env.BENCH_SYNC_RUNS ?? 3), log: (l) => process.stderr.write(`${l}\n`) }).then((r) => {
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      process.exit(0);
    }, fail);
  }
}
