/**
 * history: what a command costs against the length of a VM's history (issue #16, goal 4). One VM per
 * chain length (default 10, 100 and 1,000 snapshots in one line); for each length, in the same run:
 *
 *   list       `snapshot list v --json`                      peer: `qemu-img info --output=json` of one layer
 *   create     `snapshot create v --name cN --json`          peer: `qemu-img create -f qcow2 -b NEWEST -F qcow2`
 *              (each run adds one empty snapshot)
 *   restore    `snapshot restore v --name NEW --yes --json`  peer: the same qemu-img create
 *   export     `snapshot export v --since PREV --name NEW -o F --json` of the newest snapshot (4 MiB of
 *              random data): the first one after the chain was built (no content id computed yet, one
 *              sample) and then the steady state (median)      peer: `tar -cf - NEWLAYER | zstd -3 -T2`
 *   sync       an incremental `snapshot sync --team T --json` of one new snapshot (4 MiB) between two
 *              homes over a private DHT on 127.0.0.1; the sharer's `snapshot sync --watch` runs in the
 *              background, the receiver's home is restored to its state after the full pull before
 *              every run                                   peer: `rsync -a` of the sharer's disk directory
 *              (every layer file; the destination restored likewise), which also visits every file
 *
 * Building the chains: the root layer is the VM's disk with 4 MiB written by qemu-io; every later
 * snapshot is a real qcow2 layer made by clonebox's own qcow2 writer (one 64 KiB cluster of random
 * data each, backed by its parent's layer under a relative name, named <stem>@<name>.qcow2) and a real
 * record (the manager's fields, one JSON file per snapshot, plus vm.json's `current`); only the journal
 * and the fsyncs are skipped, as in snapshots.bench.mjs. The newest snapshot is then made by the real
 * CLI, which reads, recovers and validates the whole store, and `qemu-img info --backing-chain` checks
 * that every backing name resolves.
 *
 * Printed per operation: median wall time per chain length and the ratio of the longest to the
 * shortest chain (target: list < 500 ms at 1,000; create, restore, export --since and the incremental
 * sync no slower at 1,000 than at 10, i.e. a ratio near 1.0), and clonebox/peer at each length.
 *
 * Env: BENCH_HISTORY_LENGTHS (comma list, default 10,100,1000), BENCH_HISTORY_SKIP (comma list of
 * list, create, restore, export, sync).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import { CLEAN_ENV, CLI, cpuRatio, MiB, machineInfo, measure, NODE, ROOT, ratio, requireTool, round, sh, timeCommand, withTempDir } from './lib/harness.mjs';

export const name = 'history';
export const description = 'list, create, restore, export --since and incremental sync against chain length (10, 100, 1000 snapshots)';

const ENV = CLEAN_ENV;
const GiB = 1024 * MiB;
const VS = GiB;
const CS = 65536;
const TEAM = 'hist';
const dist = (p) => pathToFileURL(path.join(ROOT, 'dist', 'src', p)).href;

const cliArgs = (home, args) => [CLI, '--home', home, ...args];
function cli(home, ...args) {
  const out = sh(NODE, cliArgs(home, args), { env: ENV });
  return args.includes('--json') ? JSON.parse(out) : out;
}
async function timedCli(home, ...args) {
  const r = await timeCommand(NODE, cliArgs(home, args), { env: ENV });
  return { ms: r.ms, cpuMs: r.cpuMs, stdout: r.stdout, json: args.includes('--json') ? JSON.parse(r.stdout) : null };
}

const nameOf = (i) => `s${String(i).padStart(4, '0')}`;

/** A VM "v" in `d/home` with `total` snapshots in one line (see the header). Exported for profiling by hand. */
export async function buildChain(d, total, log) {
  const home = path.join(d, 'home');
  const disks = path.join(d, 'disks');
  cli(home, 'vm', 'create', 'v', '--size', String(VS), '--dir', disks, '--json');
  const disk = path.join(disks, 'v.qcow2');
  const src4 = path.join(d, 'r4');
  await writeFile(src4, randomBytes(4 * MiB));
  sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${src4} 0 4M`, disk]);
  const { layerPathFor } = await import(dist('drivers/image.js'));
  const { Qcow2Writer } = await import(dist('qcow2/writer.js'));
  const vmFile = path.join(home, 'vms', 'v', 'vm.json');
  const snapDir = path.join(home, 'vms', 'v', 'snapshots');
  await mkdir(snapDir, { recursive: true });
  const t0 = Date.now();
  const start = t0 - total * 3_600_000;
  log(`${total}: writing ${total - 1} snapshots (64 KiB each, qcow2 writer; records as the manager writes them)...`);
  const layer = async (file, backing, data, at) => {
    const w = await Qcow2Writer.create(file, {
      virtualSize: VS,
      clusterSize: CS,
      backingFile: backing === null ? null : path.basename(backing),
      backingFormat: backing === null ? null : 'qcow2',
    });
    if (data) await w.write(at, data);
    await w.finish();
  };
  for (let i = 0; i < total - 1; i++) {
    const nm = nameOf(i);
    const file = layerPathFor(disk, nm);
    if (i === 0) await rename(disk, file);
    else await layer(file, layerPathFor(disk, nameOf(i - 1)), randomBytes(CS), 8 * MiB + (i % 4096) * CS);
    const rec = {
      name: nm,
      vm_name: 'v',
      type: 'disk',
      state: 'ready',
      created_at: new Date(start + i * 3_600_000).toISOString(),
      description: `step ${i}`,
      parent: i === 0 ? null : nameOf(i - 1),
      tags: [],
      auto_created: false,
      auto_policy: null,
      expires_at: null,
      disks: [{ target: 'vda', path: file }],
      size_bytes: i === 0 ? 4 * MiB : CS,
      content_id: null,
      memory_path: null,
    };
    await writeFile(path.join(snapDir, `${nm}.json`), `${JSON.stringify(rec, null, 2)}\n`);
  }
  await layer(disk, layerPathFor(disk, nameOf(total - 2)), randomBytes(CS), 8 * MiB + 4095 * CS);
  const vm = JSON.parse(await readFile(vmFile, 'utf8'));
  await writeFile(vmFile, `${JSON.stringify({ ...vm, current: nameOf(total - 2) }, null, 2)}\n`);
  const genSeconds = round((Date.now() - t0) / 1000, 1);
  cli(home, 'snapshot', 'create', 'v', '--name', nameOf(total - 1), '--json');
  // Every backing name resolves (qemu-img compare through a chain of 1,000 takes minutes: info only).
  const chain = JSON.parse(sh('qemu-img', ['info', '--backing-chain', '--output=json', disk]));
  if (chain.length !== total + 1) throw new Error(`qemu-img info --backing-chain: ${chain.length} images, expected ${total + 1}`);
  return { home, disks, disk, layerOf: (n) => layerPathFor(disk, n), genSeconds, src4 };
}

/** Background process (the DHT, the sharer's watch); stop() sends SIGTERM and waits. */
function background(args, label) {
  const child = spawn(NODE, args, { stdio: ['ignore', 'pipe', 'pipe'], env: ENV });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-16384);
  });
  const exited = new Promise((r) => child.once('exit', (c, s) => r(c ?? s)));
  const lines = readline.createInterface({ input: child.stdout });
  return {
    firstLine: (ms) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${label} printed nothing in ${ms / 1000} s: ${stderr}`)), ms);
        lines.once('line', (l) => {
          clearTimeout(t);
          resolve(l);
        });
        void exited.then((c) => reject(new Error(`${label} exited (${c}): ${stderr}`)));
      }),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * A copy of a home (hypercore refuses copied CORESTORE device files: those are hard-linked). Its qcow2
 * layers are hard-linked too: a copy has new inodes, and a layer's cached map and its entry in the
 * local-blocks index are stamped with size, mtime and inode, so a copied home re-read every layer of
 * the history at every timed sync (15 s of CPU at 1,000 snapshots) where a real home reads none.
 * Sync never writes into an existing layer or disk (new files are renamed into place).
 */
async function restoreHome(from, to) {
  await rm(to, { recursive: true, force: true });
  sh('cp', ['-a', '--reflink=auto', from, to]);
  const linked = [...sh('find', [from, '-name', 'CORESTORE', '-type', 'f']).split('\n'), ...sh('find', [from, '-name', '*.qcow2', '-type', 'f']).split('\n')];
  for (const f of linked.filter(Boolean)) sh('ln', ['-f', f, path.join(to, path.relative(from, f))]);
}

/** Runs one case; a failure is recorded (and logged) instead of ending the whole bench. */
async function guarded(out, key, total, log, fn) {
  try {
    out[key] = await fn();
    const r = out[key];
    log(
      `${total}: ${key}: clonebox ${r.clonebox.median_ms} ms (${r.clonebox.samples_ms.join(', ')}), peer ${r.peer.median_ms} ms${r.first_ms !== undefined ? `, first ${r.first_ms} ms` : ''}`,
    );
  } catch (err) {
    out[key] = { error: String(err?.message ?? err).slice(0, 2000) };
    log(`${total}: ${key} FAILED: ${out[key].error.split('\n')[0]}`);
  }
}

async function oneLength(dir, total, runs, log, skip) {
  const d = path.join(dir, `n${total}`);
  const { home, disks, disk, layerOf, genSeconds, src4 } = await buildChain(d, total, log);
  const out = { snapshots: total, generation_seconds: genSeconds };
  const prev = nameOf(total - 1);
  const peerOut = path.join(d, 'peer-overlay.qcow2');

  // The newest snapshot: 4 MiB of new data (exported and synced below).
  sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${src4} 600M 4M`, disk]);
  cli(home, 'snapshot', 'create', 'v', '--name', 'new', '--json');
  const newLayer = layerOf('new');

  if (!skip.has('list')) {
    log(`${total}: list (${runs} runs per side)...`);
    await guarded(out, 'list', total, log, async () => {
      const r = await measure(
        {
          clonebox: async () => {
            const x = await timedCli(home, 'snapshot', 'list', 'v', '--json');
            if (x.json.length !== total + 1) throw new Error(`list gave ${x.json.length} snapshots, expected ${total + 1}`);
            return { ms: x.ms, cpuMs: x.cpuMs };
          },
          qemu_img_info: () => timeCommand('qemu-img', ['info', '--output=json', newLayer], { env: ENV }),
        },
        { runs },
      );
      return { clonebox: r.clonebox, peer: r.qemu_img_info, ratio: ratio(r.clonebox, r.qemu_img_info), cpu_ratio: cpuRatio(r.clonebox, r.qemu_img_info) };
    });
  }

  if (!skip.has('export')) {
    log(`${total}: export --since ${prev} of the newest snapshot (4 MiB; ${runs} runs per side)...`);
    await guarded(out, 'export_since', total, log, async () => {
      const bundle = path.join(d, 'inc.cbx');
      const exportOnce = async () => {
        await rm(bundle, { force: true });
        const x = await timedCli(home, 'snapshot', 'export', 'v', '--since', prev, '--name', 'new', '-o', bundle, '--json');
        if (JSON.stringify(x.json.snapshots) !== '["new"]' || x.json.logical_bytes !== 4 * MiB)
          throw new Error(`export --since gave ${x.stdout.slice(0, 300)}`);
        return { ms: x.ms, cpuMs: x.cpuMs, bundle_bytes: x.json.bundle_bytes };
      };
      const first = await exportOnce();
      const peerFile = path.join(d, 'peer.tar.zst');
      const r = await measure(
        {
          clonebox: exportOnce,
          tar_zstd: () =>
            timeCommand(
              'bash',
              ['-c', 'tar -cf - -C "$1" "$2" | zstd -3 -T2 -q -f -o "$3"', 'bash', path.dirname(newLayer), path.basename(newLayer), peerFile],
              { env: ENV },
            ),
        },
        { runs },
      );
      const res = {
        first_ms: round(first.ms),
        first_cpu_ms: round(first.cpuMs),
        clonebox: r.clonebox,
        peer: r.tar_zstd,
        ratio: ratio(r.clonebox, r.tar_zstd),
        cpu_ratio: cpuRatio(r.clonebox, r.tar_zstd),
        bundle_bytes: first.bundle_bytes,
        peer_bytes: (await stat(peerFile)).size,
      };
      await rm(bundle, { force: true });
      return res;
    });
  }

  if (!skip.has('sync')) {
    log(`${total}: incremental sync of one new snapshot (4 MiB; ${runs} runs per side)...`);
    await guarded(out, 'sync_incremental', total, log, () => syncCase(d, home, disks, disk, src4, total, runs, log));
  }

  if (!skip.has('create')) {
    log(`${total}: create (${runs} runs per side)...`);
    await guarded(out, 'create', total, log, async () => {
      let n = 0;
      const r = await measure(
        {
          clonebox: async () => {
            const x = await timedCli(home, 'snapshot', 'create', 'v', '--name', `c${++n}`, '--json');
            if (x.json.name !== `c${n}`) throw new Error(`snapshot create returned ${x.stdout}`);
            return { ms: x.ms, cpuMs: x.cpuMs };
          },
          qemu_img: () => timeCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', newLayer, '-F', 'qcow2', peerOut], { env: ENV }),
        },
        { runs, before: (side) => (side === 'qemu_img' ? rm(peerOut, { force: true }) : undefined) },
      );
      return { clonebox: r.clonebox, peer: r.qemu_img, ratio: ratio(r.clonebox, r.qemu_img), cpu_ratio: cpuRatio(r.clonebox, r.qemu_img) };
    });
  }

  if (!skip.has('restore')) {
    log(`${total}: restore (${runs} runs per side)...`);
    await guarded(out, 'restore', total, log, async () => {
      const r = await measure(
        {
          clonebox: async () => {
            const x = await timedCli(home, 'snapshot', 'restore', 'v', '--name', 'new', '--yes', '--json');
            if (x.json.restored !== 'new') throw new Error(`snapshot restore returned ${x.stdout}`);
            return { ms: x.ms, cpuMs: x.cpuMs };
          },
          qemu_img: () => timeCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', newLayer, '-F', 'qcow2', peerOut], { env: ENV }),
        },
        { runs, before: (side) => (side === 'qemu_img' ? rm(peerOut, { force: true }) : undefined) },
      );
      const info = JSON.parse(sh('qemu-img', ['info', '--output=json', disk]));
      if (path.resolve(disks, info['backing-filename'] ?? '') !== newLayer) throw new Error(`restore left ${disk} on ${info['backing-filename']}`);
      return { clonebox: r.clonebox, peer: r.qemu_img, ratio: ratio(r.clonebox, r.qemu_img), cpu_ratio: cpuRatio(r.clonebox, r.qemu_img) };
    });
  }
  await rm(d, { recursive: true, force: true });
  return out;
}

/**
 * Sharer = the chain's home; the receiver pulls everything once (untimed), then the sharer takes one
 * more snapshot (4 MiB) and every timed run pulls it into a fresh copy of the receiver's home.
 */
async function syncCase(d, home, disks, disk, src4, total, runs, log) {
  const invite = cli(home, 'team', 'create', TEAM, '--name', 'sharer', '--json').invite;
  // The first share publishes the whole history and the full pull registers it: timed once each
  // (untimed before: minutes at 1,000 snapshots, issue #16).
  const share = await timedCli(home, 'snapshot', 'share', 'v', '--team', TEAM, '--json');
  log(`${total}: first share of ${total + 1} snapshots: ${round(share.ms)} ms (CPU ${round(share.cpuMs)} ms)`);
  const recvBase = path.join(d, 'recv-base');
  const recv = path.join(d, 'recv');
  // The full pull goes to `recv` itself (records hold absolute layer paths), then is copied aside.
  cli(recv, 'team', 'join', TEAM, '--invite', invite, '--name', 'receiver', '--json');
  const boot = background([CLI, '--home', path.join(d, 'boot'), 'dht', 'bootstrap', '--host', '127.0.0.1', '--port', '0', '--json'], 'dht bootstrap');
  const procs = [boot];
  try {
    const bs = JSON.parse(await boot.firstLine(20_000)).bootstrap;
    const startSharer = () => {
      const s = background([CLI, '--home', home, 'snapshot', 'sync', '--team', TEAM, '--bootstrap', bs, '--watch', '--timeout', '60'], 'sharer');
      procs.push(s);
      return s;
    };
    const syncArgs = ['snapshot', 'sync', '--team', TEAM, '--bootstrap', bs, '--timeout', '120', '--json'];
    let sharer = startSharer();
    // The full pull of a long history is setup, not the timed case: it gets all the time it needs
    // (at 1,000 snapshots under load it took longer than the incremental runs' 120 s).
    const fullRun = await timedCli(recv, ...syncArgs.map((a) => (a === '120' ? '1800' : a)));
    const full = fullRun.json;
    const fullCount = full.chains.reduce((a, c) => a + c.snapshots.length, 0);
    if (fullCount < total + 1) throw new Error(`full pull brought ${fullCount} snapshots, expected ${total + 1}`);
    log(`${total}: the receiver pulled all ${fullCount} snapshots: ${round(fullRun.ms)} ms (CPU ${round(fullRun.cpuMs)} ms)`);
    await sharer.stop();
    await restoreHome(recv, recvBase);
    // The rsync side's destination as it was before the new snapshot.
    const destBase = path.join(d, 'dest-base');
    const dest = path.join(d, 'dest');
    sh('rsync', ['-a', `${disks}/`, `${destBase}/`]);
    sh('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${src4} 700M 4M`, disk]);
    cli(home, 'snapshot', 'create', 'v', '--name', 'inc', '--json');
    const pub = cli(home, 'snapshot', 'share', 'v', '--team', TEAM, '--json');
    if (!pub.published?.includes('inc')) throw new Error(`share did not publish the new snapshot: ${JSON.stringify(pub)}`);
    sharer = startSharer();
    const r = await measure(
      {
        clonebox: async () => {
          const x = await timedCli(recv, ...syncArgs);
          const got = x.json.chains.flatMap((c) => c.snapshots);
          if (JSON.stringify(got) !== '["inc"]') throw new Error(`incremental sync pulled ${JSON.stringify(got)}: ${x.stdout.slice(0, 400)}`);
          return { ms: x.ms, cpuMs: x.cpuMs, bytes_received: x.json.bytes_received };
        },
        rsync: () => timeCommand('rsync', ['-a', `${disks}/`, `${dest}/`], { env: ENV }),
      },
      { runs, before: (side) => (side === 'clonebox' ? restoreHome(recvBase, recv) : restoreHome(destBase, dest)) },
    );
    return {
      clonebox: r.clonebox,
      peer: r.rsync,
      ratio: ratio(r.clonebox, r.rsync),
      cpu_ratio: cpuRatio(r.clonebox, r.rsync),
      first_share: { ms: round(share.ms), cpu_ms: round(share.cpuMs) },
      full_pull: { ms: round(fullRun.ms), cpu_ms: round(fullRun.cpuMs), snapshots: fullCount },
    };
  } finally {
    for (const p of procs.reverse()) await p.stop();
  }
}

export default async function run({ runs = 5, log = () => {} } = {}) {
  const qemu = requireTool('qemu-img');
  requireTool('qemu-io');
  requireTool('zstd');
  const lengths = (process.env.BENCH_HISTORY_LENGTHS ?? '10,100,1000').split(',').map(Number);
  if (lengths.some((n) => !Number.isInteger(n) || n < 2)) throw new Error('BENCH_HISTORY_LENGTHS: chain lengths of at least 2');
  const skip = new Set((process.env.BENCH_HISTORY_SKIP ?? '').split(',').filter(Boolean));
  if (!skip.has('sync')) requireTool('rsync');
  const machine = machineInfo();
  return withTempDir('history', async (dir) => {
    const perLength = [];
    for (const n of lengths) perLength.push(await oneLength(dir, n, runs, log, skip));
    const lo = perLength[0];
    const hi = perLength[perLength.length - 1];
    const ops = [
      ['list', 'list'],
      ['create', 'create'],
      ['restore', 'restore'],
      ['export_since', 'export --since'],
      ['sync_incremental', 'sync (incremental)'],
    ];
    const growth = {};
    const summary = [];
    for (const [key, label] of ops) {
      if (!lo[key]) continue;
      if (!lo[key].clonebox || !hi[key].clonebox) {
        for (const p of perLength)
          if (p[key].error) summary.push({ case: `${label} @${p.snapshots} FAILED`, clonebox_ms: NaN, peer_ms: NaN, ratio: NaN, cpu_ratio: NaN });
        continue;
      }
      growth[key] = round(hi[key].clonebox.median_ms / lo[key].clonebox.median_ms, 2);
      // The growth as a table row: the longest chain against the shortest (target: about 1.0).
      summary.push({
        case: `${label} ${hi.snapshots}/${lo.snapshots}`,
        clonebox_ms: hi[key].clonebox.median_ms,
        peer_ms: lo[key].clonebox.median_ms,
        ratio: growth[key],
        cpu_ratio: null,
      });
      for (const p of perLength) {
        if (!p[key].clonebox) continue;
        summary.push({
          case: `${label} @${p.snapshots}`,
          clonebox_ms: p[key].clonebox.median_ms,
          peer_ms: p[key].peer.median_ms,
          ratio: p[key].ratio,
          cpu_ratio: p[key].cpu_ratio,
        });
      }
      log(
        `${label}: ${perLength.map((p) => `${p.snapshots}: ${p[key].clonebox?.median_ms ?? 'failed'} ms`).join(', ')}; ${hi.snapshots}/${lo.snapshots} = ${growth[key].toFixed(2)}` +
          (key === 'export_since' ? `; first export after building: ${perLength.map((p) => `${p.snapshots}: ${p[key].first_ms} ms`).join(', ')}` : ''),
      );
    }
    return {
      machine,
      qemu_img: qemu,
      lengths,
      targets: { list_ms_at_1000: 500, growth_longest_over_shortest: 1.0 },
      growth_longest_over_shortest: growth,
      per_length: perLength,
      summary,
    };
  });
}
