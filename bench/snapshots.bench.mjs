/**
 * snapshots: the snapshot manager on real qcow2 images, against qemu-img on the same data in the same run.
 *
 * Every timed clonebox run is a whole CLI process (`node bin/clonebox.js --home H ...`, start-up
 * included), exactly as every timed qemu-img run is a whole process. Each pair of sides runs once
 * untimed (warm-up: page cache), then `runs` times alternating the order; medians are compared
 * (ratio = clonebox / peer, below 1: clonebox is faster).
 *
 *  1. create / restore, on a 1 GiB and a 100 GiB sparse disk holding 8 MiB written by qemu-io
 *     (4 MiB at the start, 1 MiB at 1/4, 1/2, 3/4 and at the end of the disk):
 *       clonebox  snapshot create v --name cN --json       (seal the current image, new overlay)
 *                 snapshot restore v --name base --yes --json (new overlay on the base layer)
 *       peer      qemu-img create -f qcow2 -b BASE -F qcow2 overlay (the same new overlay, by qemu)
 *     Each create run adds one snapshot (the chain grows by one per run, on both sides alike).
 *
 *  2. list with 1000 snapshots. 999 snapshots are written directly, the way the manager writes them:
 *     real layer files (one qcow2 overlay per snapshot, made by clonebox's own qcow2 writer through
 *     the image driver's createOverlay(), named <stem>@<name>.qcow2, each backed by its parent's layer
 *     under a relative name; the root layer is the original disk with its data) and real records
 *     (the manager's record fields, one JSON file per snapshot, plus vm.json's `current`); only the
 *     journal and the fsyncs are skipped. The tree has a branch every 50 snapshots and 3 of 4
 *     snapshots are auto snapshots under a retention policy (so the tree marks expired ones). The
 *     1000th snapshot is then made by the real CLI (`snapshot create`), which reads, recovers and
 *     validates the whole store. `qemu-img compare` of the newest state against the root layer walks
 *     every backing name. Timed: `snapshot list --json`, `list --tree`, `list --tree --json`; no peer
 *     tool does this, so the yardstick is `qemu-img info --output=json` of one image.
 *
 *  3. diff and delete --keep-children on a 4 GiB disk with 256 MiB of data in a realistic layout
 *     (8 x 16 MiB, 64 x 1 MiB and 1024 single 64 KiB clusters, scattered, seeded):
 *       s0  256 MiB of data A        s1  the same ranges rewritten with identical bytes A
 *       s2  the same ranges changed: data B (8 of the 1 MiB pieces zeroed instead)
 *       s3  a small child (3 MiB)     current: empty overlay on s3
 *     diff:   `snapshot diff --from s0 --to s1` vs `qemu-img compare s0 s1` (identical: both read all
 *             256 MiB of both states); `snapshot diff --from s1 --to s2` (256 MiB changed) against the
 *             same qemu-img compare of the identical pair as the full-read yardstick, because
 *             `qemu-img compare` stops at the first mismatch (its time on s1/s2 is recorded too).
 *     delete: `snapshot delete --name s2 --keep-children` (merge 256 MiB into the small child s3) vs
 *             `qemu-img rebase -b v@s1.qcow2 -F qcow2 v@s3.qcow2` (safe mode) on the same layers; and
 *             `delete --name s1 --keep-children` (child s2 covers all of s1) vs `qemu-img rebase -b
 *             v@s0.qcow2 -F qcow2 v@s2.qcow2`. Before every timed run the chain is rebuilt, untimed:
 *             hard links from a template for files the run never writes in place (clonebox writes a
 *             new file and renames it; qemu's backing files are opened read-only) and a real copy of
 *             the image qemu-img rebase rewrites in place.
 *
 *  0. start-up floor, for reading the ratios above: `clonebox --version`, `snapshot list` of a VM with
 *     no snapshots, `node -e 0`, against `qemu-img --version` and `qemu-img info` of one image.
 *
 * Results are checked on every run (JSON shapes, counts, changed bytes and ranges) and after the last
 * one (`qemu-img compare` against the template, `qemu-img check`). Env: BENCH_SNAPSHOTS_SKIP=list,diff,...
 * skips parts (startup, create-restore, list, diff, delete).
 */

import { randomBytes } from 'node:crypto';
import { copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CLEAN_ENV, CLI, cpuRatio, MiB, machineInfo, measure, NODE, ROOT, ratio, requireTool, round, sh, timeCommand, withTempDir } from './lib/harness.mjs';
import { prng } from './lib/layer.mjs';

export const name = 'snapshots';
export const description = 'snapshot create/restore (1 GiB, 100 GiB), list of 1000, diff and delete --keep-children vs qemu-img';

const GiB = 1024 * MiB;

/** The environment of every child: no test hooks, no inherited home. */
const ENV = CLEAN_ENV;

const cliArgs = (home, args) => [CLI, '--home', home, ...args];
/** Untimed CLI call; returns stdout (parsed when --json). */
function cli(home, ...args) {
  const out = sh(NODE, cliArgs(home, args), { env: ENV });
  return args.includes('--json') ? JSON.parse(out) : out;
}
/** Timed CLI process. */
async function timedCli(home, ...args) {
  const r = await timeCommand(NODE, cliArgs(home, args), { env: ENV });
  return { ms: r.ms, cpuMs: r.cpuMs, stdout: r.stdout, json: args.includes('--json') ? JSON.parse(r.stdout) : null };
}

function qemuIo(file, cmds) {
  // qemu-io runs one -c after another on one open image; batch them to keep argv reasonable.
  for (let i = 0; i < cmds.length; i += 400) sh('qemu-io', ['-f', 'qcow2', ...cmds.slice(i, i + 400).flatMap((c) => ['-c', c]), file]);
}

function mibps(bytes, ms) {
  return round(bytes / MiB / (ms / 1000), 0);
}

function check(file) {
  const out = sh('qemu-img', ['check', file]);
  if (!/No errors were found/.test(out)) throw new Error(`qemu-img check ${file}: ${out}`);
}

function compareIdentical(a, b) {
  sh('qemu-img', ['compare', a, b]);
}

// ------------------------------------------------------------------------------------------------
// 0. start-up floor: what any clonebox command costs before it does anything

async function startup(dir, runs, log) {
  const home = path.join(dir, 'startup', 'home');
  cli(home, 'vm', 'create', 'v', '--size', '1G', '--dir', path.join(dir, 'startup', 'disks'), '--json');
  const disk = path.join(dir, 'startup', 'disks', 'v.qcow2');
  log(`start-up floor (${runs} runs per side)...`);
  const res = await measure(
    {
      clonebox_version: () => timeCommand(NODE, [CLI, '--version'], { env: ENV }),
      clonebox_list_empty: () => timeCommand(NODE, cliArgs(home, ['snapshot', 'list', 'v', '--json']), { env: ENV }),
      node_e0: () => timeCommand(NODE, ['-e', '0'], { env: ENV }),
      qemu_img_version: () => timeCommand('qemu-img', ['--version'], { env: ENV }),
      qemu_img_info: () => timeCommand('qemu-img', ['info', '--output=json', disk], { env: ENV }),
    },
    { runs },
  );
  await rm(path.join(dir, 'startup'), { recursive: true, force: true });
  return res;
}

// ------------------------------------------------------------------------------------------------
// 1. create / restore on 1 GiB and 100 GiB

async function createRestore(dir, runs, log, src) {
  const sizes = [
    { label: '1 GiB', bytes: GiB },
    { label: '100 GiB', bytes: 100 * GiB },
  ];
  const out = [];
  for (const s of sizes) {
    const d = path.join(dir, `cr-${s.bytes / GiB}g`);
    const home = path.join(d, 'home');
    const disks = path.join(d, 'disks');
    cli(home, 'vm', 'create', 'v', '--size', String(s.bytes), '--dir', disks, '--json');
    const disk = path.join(disks, 'v.qcow2');
    const at = (f) => Math.floor((s.bytes * f) / MiB) * MiB;
    qemuIo(disk, [`write -q -s ${src} 0 4M`, ...[0.25, 0.5, 0.75].map((f) => `write -q -s ${src} ${at(f)} 1M`), `write -q -s ${src} ${s.bytes - MiB} 1M`]);
    cli(home, 'snapshot', 'create', 'v', '--name', 'base', '--json');
    const baseLayer = path.join(disks, 'v@base.qcow2');
    const peerOut = path.join(d, 'peer-overlay.qcow2');
    log(`${s.label}: create (${runs} runs per side)...`);
    let n = 0;
    const create = await measure(
      {
        clonebox: async () => {
          const r = await timedCli(home, 'snapshot', 'create', 'v', '--name', `c${++n}`, '--json');
          if (r.json.name !== `c${n}` || !r.json.current) throw new Error(`snapshot create returned ${r.stdout}`);
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
        qemu_img: () => timeCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', disk, '-F', 'qcow2', peerOut], { env: ENV }),
      },
      { runs, before: (side) => (side === 'qemu_img' ? rm(peerOut, { force: true }) : undefined) },
    );
    const cbOverlayBytes = (await stat(disk)).size;
    const qemuOverlayBytes = (await stat(peerOut)).size;
    check(disk);
    check(path.join(disks, `v@c${n}.qcow2`));
    log(`${s.label}: restore (${runs} runs per side)...`);
    const restore = await measure(
      {
        clonebox: async () => {
          const r = await timedCli(home, 'snapshot', 'restore', 'v', '--name', 'base', '--yes', '--json');
          if (r.json.restored !== 'base' || r.json.vm !== 'v') throw new Error(`snapshot restore returned ${r.stdout}`);
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
        qemu_img: () => timeCommand('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', baseLayer, '-F', 'qcow2', peerOut], { env: ENV }),
      },
      { runs, before: (side) => (side === 'qemu_img' ? rm(peerOut, { force: true }) : undefined) },
    );
    // The restored state is the base snapshot's content, through clonebox's overlay.
    compareIdentical(disk, baseLayer);
    check(disk);
    out.push({
      disk: s.label,
      virtual_size: s.bytes,
      data_bytes: 8 * MiB,
      snapshots_at_end: n + 1,
      overlay_file_bytes: { clonebox: cbOverlayBytes, qemu_img: qemuOverlayBytes },
      create: {
        clonebox: create.clonebox,
        qemu_img_create_b: create.qemu_img,
        ratio: ratio(create.clonebox, create.qemu_img),
        cpu_ratio: cpuRatio(create.clonebox, create.qemu_img),
      },
      restore: {
        clonebox: restore.clonebox,
        qemu_img_create_b: restore.qemu_img,
        ratio: ratio(restore.clonebox, restore.qemu_img),
        cpu_ratio: cpuRatio(restore.clonebox, restore.qemu_img),
      },
    });
    await rm(d, { recursive: true, force: true });
  }
  const [small, big] = out;
  return {
    sizes: out,
    clonebox_100g_over_1g: {
      create: round(big.create.clonebox.median_ms / small.create.clonebox.median_ms, 2),
      restore: round(big.restore.clonebox.median_ms / small.restore.clonebox.median_ms, 2),
    },
  };
}

// ------------------------------------------------------------------------------------------------
// 2. list with 1000 snapshots

/**
 * Builds a VM with `total` snapshots under `d` (see the header); returns its home, disk and the
 * seconds the direct writing took. Exported for profiling by hand.
 */
export async function makeManySnapshots(d, src, { total = 1000, log = () => {} } = {}) {
  const TOTAL = total;
  const home = path.join(d, 'home');
  const disks = path.join(d, 'disks');
  cli(home, 'vm', 'create', 'v', '--size', '10G', '--dir', disks, '--json');
  const disk = path.join(disks, 'v.qcow2');
  qemuIo(disk, [`write -q -s ${src} 0 4M`, `write -q -s ${src} 5G 1M`]);
  const { createOverlay, layerPathFor } = await import(pathToFileURL(path.join(ROOT, 'dist', 'src', 'drivers', 'image.js')).href);
  const vmFile = path.join(home, 'vms', 'v', 'vm.json');
  const snapDir = path.join(home, 'vms', 'v', 'snapshots');
  await mkdir(snapDir, { recursive: true });
  const geo = { virtualSize: 10 * GiB, clusterSize: 65536 };
  const nameOf = (i) => `s${String(i).padStart(4, '0')}`;
  // A branch every 50 snapshots: snapshot i (i % 50 == 0) was taken after restoring snapshot i - 25.
  const parentOf = (i) => (i === 0 ? null : i % 50 === 0 ? i - 25 : i - 1);
  const t0 = Date.now();
  const start = t0 - TOTAL * 3_600_000; // one snapshot an hour
  log(`writing ${TOTAL - 1} snapshots (layers with the qcow2 writer, records as the manager writes them)...`);
  for (let i = 0; i < TOTAL - 1; i++) {
    const nm = nameOf(i);
    const layer = layerPathFor(disk, nm);
    const p = parentOf(i);
    if (p === null)
      await rename(disk, layer); // the first snapshot seals the original disk
    else await createOverlay(layer, layerPathFor(disk, nameOf(p)), geo);
    const auto = i % 4 !== 0;
    const rec = {
      name: nm,
      vm_name: 'v',
      type: 'disk',
      state: 'ready',
      created_at: new Date(start + i * 3_600_000).toISOString(),
      description: auto ? 'automatic snapshot before: make test' : `checkpoint ${i}`,
      parent: p === null ? null : nameOf(p),
      tags: auto ? ['auto'] : i % 100 === 0 ? ['release'] : [],
      auto_created: auto,
      auto_policy: auto ? 'run' : null,
      expires_at: null,
      disks: [{ target: 'vda', path: layer }],
      size_bytes: p === null ? 5 * MiB : 0,
      content_id: null,
      memory_path: null,
    };
    await writeFile(path.join(snapDir, `${nm}.json`), `${JSON.stringify(rec, null, 2)}\n`);
  }
  await createOverlay(disk, layerPathFor(disk, nameOf(TOTAL - 2)), geo);
  const vm = JSON.parse(await readFile(vmFile, 'utf8'));
  await writeFile(vmFile, `${JSON.stringify({ ...vm, current: nameOf(TOTAL - 2) }, null, 2)}\n`);
  const genSeconds = round((Date.now() - t0) / 1000, 1);
  // The last one through the real CLI, then a policy (auto snapshots: keep 24 hourly, 7 daily).
  cli(home, 'snapshot', 'create', 'v', '--name', nameOf(TOTAL - 1), '--json');
  cli(home, 'snapshot', 'policy', 'v', '--keep-hourly', '24', '--keep-daily', '7', '--json');
  // Every backing name resolves, and the newest state still holds the root's data.
  compareIdentical(disk, layerPathFor(disk, nameOf(0)));
  for (const i of [0, Math.floor(TOTAL / 2), TOTAL - 1]) check(layerPathFor(disk, nameOf(i)));
  return { home, disk, rootLayer: layerPathFor(disk, nameOf(0)), genSeconds };
}

async function list1000(dir, runs, log, src) {
  const TOTAL = 1000;
  const d = path.join(dir, 'list');
  const { home, rootLayer, genSeconds } = await makeManySnapshots(d, src, { total: TOTAL, log });
  const countNodes = (nodes) => nodes.reduce((a, n) => a + 1 + countNodes(n.children), 0);
  log(`list with ${TOTAL} snapshots (${runs} runs per side)...`);
  const res = await measure(
    {
      list_json: async () => {
        const r = await timedCli(home, 'snapshot', 'list', 'v', '--json');
        if (r.json.length !== TOTAL) throw new Error(`list --json gave ${r.json.length} snapshots`);
        return { ms: r.ms, cpuMs: r.cpuMs, stdout_bytes: r.stdout.length };
      },
      list_tree: async () => {
        const r = await timedCli(home, 'snapshot', 'list', 'v', '--tree');
        const lines = r.stdout.trimEnd().split('\n').length;
        if (lines < TOTAL + 1) throw new Error(`list --tree printed ${lines} lines`);
        return { ms: r.ms, cpuMs: r.cpuMs, lines, stdout_bytes: r.stdout.length, expired_marks: (r.stdout.match(/\[expired\]/g) ?? []).length };
      },
      list_tree_json: async () => {
        const r = await timedCli(home, 'snapshot', 'list', 'v', '--tree', '--json');
        if (countNodes(r.json.roots) !== TOTAL) throw new Error(`list --tree --json has ${countNodes(r.json.roots)} nodes`);
        return { ms: r.ms, cpuMs: r.cpuMs };
      },
      qemu_img_info: () => timeCommand('qemu-img', ['info', '--output=json', rootLayer], { env: ENV }),
    },
    { runs },
  );
  await rm(d, { recursive: true, force: true });
  return {
    snapshots: TOTAL,
    written_directly: TOTAL - 1,
    made_by_cli: 1,
    generation_seconds: genSeconds,
    target_ms: 500,
    list_json: res.list_json,
    list_tree: res.list_tree,
    list_tree_json: res.list_tree_json,
    qemu_img_info_one_image: res.qemu_img_info,
    ratio_list_json_vs_qemu_info: ratio(res.list_json, res.qemu_img_info),
    cpu_ratio_list_json_vs_qemu_info: cpuRatio(res.list_json, res.qemu_img_info),
    ratio_list_tree_vs_qemu_info: ratio(res.list_tree, res.qemu_img_info),
    cpu_ratio_list_tree_vs_qemu_info: cpuRatio(res.list_tree, res.qemu_img_info),
    ratio_list_tree_json_vs_qemu_info: ratio(res.list_tree_json, res.qemu_img_info),
    cpu_ratio_list_tree_json_vs_qemu_info: cpuRatio(res.list_tree_json, res.qemu_img_info),
  };
}

// ------------------------------------------------------------------------------------------------
// 3. diff and delete --keep-children

/** 256 MiB in a realistic scattered layout over `virtualSize` (seeded). */
function layout(virtualSize, seed = 7) {
  const rnd = prng(seed);
  const cs = 65536;
  const used = new Uint8Array(virtualSize / cs);
  const pick = (len) => {
    const n = len / cs;
    const align = Math.min(len, MiB) / cs;
    for (let t = 0; t < 100000; t++) {
      const c = Math.floor((rnd() * (used.length - n)) / align) * align;
      if (used.subarray(c, c + n).some((x) => x)) continue;
      used.fill(1, c, c + n);
      return c * cs;
    }
    throw new Error('layout: no room');
  };
  const ops = [];
  for (let i = 0; i < 8; i++) ops.push({ off: pick(16 * MiB), len: 16 * MiB });
  for (let i = 0; i < 64; i++) ops.push({ off: pick(MiB), len: MiB });
  for (let i = 0; i < 1024; i++) ops.push({ off: pick(cs), len: cs });
  const free = pick(4 * MiB); // room for the child's own data
  return { ops, free, cs };
}

function mergedRanges(ops) {
  const s = [...ops].sort((a, b) => a.off - b.off);
  const out = [];
  for (const o of s) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === o.off) last.length += o.len;
    else out.push({ offset: o.off, length: o.len });
  }
  return out;
}

async function linkTree(from, to, files) {
  await mkdir(to, { recursive: true });
  for (const f of files) await link(path.join(from, f), path.join(to, f));
}

async function diffDelete(dir, runs, log, srcA, srcB, skip) {
  const VS = 4 * GiB;
  const base = path.join(dir, 'chain');
  const work = path.join(base, 'work'); // the live VM (absolute paths in its records point here)
  const tmpl = path.join(base, 'template'); // hard-linked copy of work, taken once
  const peer = path.join(base, 'peer');
  const home = path.join(work, 'home');
  const disks = path.join(work, 'disks');
  const { ops, free } = layout(VS);
  const dataBytes = ops.reduce((a, o) => a + o.len, 0);
  log(`building the chain: s0, s1 (identical rewrite), s2 (changed), s3 (small), ${dataBytes / MiB} MiB per layer...`);
  cli(home, 'vm', 'create', 'v', '--size', String(VS), '--dir', disks, '--json');
  const disk = path.join(disks, 'v.qcow2');
  const L = (s) => path.join(disks, `v@${s}.qcow2`);
  qemuIo(
    disk,
    ops.map((o) => `write -q -s ${srcA} ${o.off} ${o.len}`),
  );
  cli(home, 'snapshot', 'create', 'v', '--name', 's0', '--json');
  qemuIo(
    disk,
    ops.map((o) => `write -q -s ${srcA} ${o.off} ${o.len}`),
  );
  cli(home, 'snapshot', 'create', 'v', '--name', 's1', '--json');
  let zeroed = 0;
  qemuIo(
    disk,
    ops.map((o) => (o.len === MiB && zeroed++ < 8 ? `write -q -z ${o.off} ${o.len}` : `write -q -s ${srcB} ${o.off} ${o.len}`)),
  );
  cli(home, 'snapshot', 'create', 'v', '--name', 's2', '--json');
  const smallOp = ops.find((o) => o.len === 16 * MiB);
  qemuIo(disk, [`write -q -s ${srcB} ${free} 2M`, `write -q -P 0x5a ${smallOp.off + 4 * MiB} 1M`]);
  cli(home, 'snapshot', 'create', 'v', '--name', 's3', '--json');
  for (const s of ['s0', 's1', 's2', 's3']) check(L(s));
  const layerBytes = Object.fromEntries(await Promise.all(['s0', 's1', 's2', 's3'].map(async (s) => [s, (await stat(L(s))).size])));
  sh('cp', ['-al', work, tmpl]);
  const T = (s) => path.join(tmpl, 'disks', `v@${s}.qcow2`);
  const result = { virtual_size: VS, data_bytes_per_layer: dataBytes, writes_per_layer: ops.length, layer_file_bytes: layerBytes };

  if (!skip.has('diff')) {
    log(`diff s0..s1 (identical rewrite) and s1..s2 (changed) vs qemu-img compare (${runs} runs per side)...`);
    const expectRanges = mergedRanges(ops);
    const diffSide = (from, to, expectBytes) => async () => {
      const r = await timedCli(home, 'snapshot', 'diff', 'v', '--from', from, '--to', to, '--json');
      const dd = r.json.disks[0];
      if (dd.changed_bytes !== expectBytes) throw new Error(`diff ${from}..${to}: ${dd.changed_bytes} bytes changed, expected ${expectBytes}`);
      if (expectBytes > 0 && JSON.stringify(dd.ranges) !== JSON.stringify(expectRanges))
        throw new Error(`diff ${from}..${to}: ranges differ from the ranges written`);
      return { ms: r.ms, cpuMs: r.cpuMs };
    };
    const res = await measure(
      {
        clonebox_identical: diffSide('s0', 's1', 0),
        clonebox_changed: diffSide('s1', 's2', dataBytes),
        qemu_compare_identical: async () => {
          const r = await timeCommand('qemu-img', ['compare', L('s0'), L('s1')], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
        qemu_compare_changed_first_mismatch: async () => {
          const r = await timeCommand('qemu-img', ['compare', L('s1'), L('s2')], { env: ENV, okCodes: [1] });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      { runs },
    );
    result.diff = {
      compared_bytes: dataBytes,
      identical: {
        clonebox: res.clonebox_identical,
        qemu_img_compare: res.qemu_compare_identical,
        clonebox_mib_s: mibps(dataBytes, res.clonebox_identical.median_ms),
        qemu_mib_s: mibps(dataBytes, res.qemu_compare_identical.median_ms),
        ratio: ratio(res.clonebox_identical, res.qemu_compare_identical),
        cpu_ratio: cpuRatio(res.clonebox_identical, res.qemu_compare_identical),
      },
      changed: {
        clonebox: res.clonebox_changed,
        changed_bytes: dataBytes,
        clonebox_mib_s: mibps(dataBytes, res.clonebox_changed.median_ms),
        ratio_vs_qemu_compare_identical_pair: ratio(res.clonebox_changed, res.qemu_compare_identical),
        cpu_ratio_vs_qemu_compare_identical_pair: cpuRatio(res.clonebox_changed, res.qemu_compare_identical),
        qemu_img_compare_stops_at_first_mismatch: res.qemu_compare_changed_first_mismatch,
      },
    };
  }

  if (!skip.has('delete')) {
    const files = ['v.qcow2', 'v@s0.qcow2', 'v@s1.qcow2', 'v@s2.qcow2', 'v@s3.qcow2'];
    const resetWork = async () => {
      await rm(work, { recursive: true, force: true });
      sh('cp', ['-al', tmpl, work]);
    };
    const resetPeer = async (copied) => {
      await rm(peer, { recursive: true, force: true });
      await linkTree(
        path.join(tmpl, 'disks'),
        peer,
        files.filter((f) => f !== copied),
      );
      await copyFile(path.join(tmpl, 'disks', copied), path.join(peer, copied)); // rewritten in place by qemu-img
    };
    const cases = [
      {
        key: 'merge_256m_into_small_child',
        del: 's2',
        child: 's3',
        newBase: 's1',
        merged: dataBytes,
        what: 'delete s2 --keep-children (256 MiB merged into the small child s3)',
      },
      {
        key: 'child_covers_deleted',
        del: 's1',
        child: 's2',
        newBase: 's0',
        merged: 0,
        what: 'delete s1 --keep-children (child s2 overwrites all of s1: nothing to merge)',
      },
    ];
    result.delete = {};
    for (const c of cases) {
      log(`${c.what} vs qemu-img rebase (${runs} runs per side)...`);
      const res = await measure(
        {
          clonebox: async () => {
            const r = await timedCli(home, 'snapshot', 'delete', 'v', '--name', c.del, '--keep-children', '--yes', '--json');
            if (JSON.stringify(r.json) !== JSON.stringify({ vm: 'v', deleted: [c.del], merged_into: [c.child] }))
              throw new Error(`delete returned ${r.stdout}`);
            return { ms: r.ms, cpuMs: r.cpuMs };
          },
          qemu_img_rebase: () =>
            timeCommand('qemu-img', ['rebase', '-b', `v@${c.newBase}.qcow2`, '-F', 'qcow2', path.join(peer, `v@${c.child}.qcow2`)], { env: ENV }),
        },
        { runs, before: (side) => (side === 'clonebox' ? resetWork() : resetPeer(`v@${c.child}.qcow2`)) },
      );
      // Both results hold the child's content unchanged, and are clean.
      compareIdentical(T(c.child), L(c.child));
      compareIdentical(T(c.child), path.join(peer, `v@${c.child}.qcow2`));
      check(L(c.child));
      check(path.join(peer, `v@${c.child}.qcow2`));
      const childOwn = layerBytes[c.child];
      result.delete[c.key] = {
        what: c.what,
        merged_bytes: c.merged,
        rewritten_file_bytes: {
          clonebox: (await stat(L(c.child))).size,
          qemu_img: (await stat(path.join(peer, `v@${c.child}.qcow2`))).size,
          child_before: childOwn,
        },
        clonebox: res.clonebox,
        qemu_img_rebase: res.qemu_img_rebase,
        clonebox_mib_s: c.merged ? mibps(c.merged, res.clonebox.median_ms) : null,
        qemu_mib_s: c.merged ? mibps(c.merged, res.qemu_img_rebase.median_ms) : null,
        ratio: ratio(res.clonebox, res.qemu_img_rebase),
        cpu_ratio: cpuRatio(res.clonebox, res.qemu_img_rebase),
      };
    }
    await resetWork();
  }
  await rm(base, { recursive: true, force: true });
  return result;
}

// ------------------------------------------------------------------------------------------------

export default async function run({ runs = 5, log = () => {} } = {}) {
  const qemuImg = requireTool('qemu-img');
  requireTool('qemu-io');
  const skip = new Set(
    (process.env.BENCH_SNAPSHOTS_SKIP ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );
  return withTempDir('snapshots', async (dir) => {
    const srcA = path.join(dir, 'random-a.bin');
    const srcB = path.join(dir, 'random-b.bin');
    await writeFile(srcA, randomBytes(16 * MiB));
    await writeFile(srcB, randomBytes(16 * MiB));
    const result = { name, description, date: new Date().toISOString(), runs, machine: machineInfo(), qemu_img: qemuImg };
    const summary = [];
    const row = (c, cb, peer, r) => summary.push({ case: c, clonebox_ms: cb.median_ms, peer_ms: peer.median_ms, ratio: r, cpu_ratio: cpuRatio(cb, peer) });
    if (!skip.has('startup')) {
      const st = await startup(dir, runs, log);
      result.startup = st;
      row('start-up: clonebox --version vs qemu-img --version', st.clonebox_version, st.qemu_img_version, ratio(st.clonebox_version, st.qemu_img_version));
      row('start-up: list, 0 snapshots vs qemu-img info', st.clonebox_list_empty, st.qemu_img_info, ratio(st.clonebox_list_empty, st.qemu_img_info));
      // The library issue's promise: `snapshot list` costs at most 100 ms more than bare Node.
      row(
        `start-up: list, 0 snapshots vs node -e 0 (+${round(st.clonebox_list_empty.median_ms - st.node_e0.median_ms, 0)} ms; goal +100)`,
        st.clonebox_list_empty,
        st.node_e0,
        ratio(st.clonebox_list_empty, st.node_e0),
      );
    }
    if (!skip.has('create-restore')) {
      result.create_restore = await createRestore(dir, runs, log, srcA);
      for (const s of result.create_restore.sizes) {
        row(`create ${s.disk} vs qemu-img create -b`, s.create.clonebox, s.create.qemu_img_create_b, s.create.ratio);
        row(`restore ${s.disk} vs qemu-img create -b`, s.restore.clonebox, s.restore.qemu_img_create_b, s.restore.ratio);
      }
    }
    if (!skip.has('list')) {
      const l = await list1000(dir, runs, log, srcA);
      result.list = l;
      row('list --json, 1000 snaps (yardstick: qemu-img info)', l.list_json, l.qemu_img_info_one_image, l.ratio_list_json_vs_qemu_info);
      row('list --tree, 1000 snaps (yardstick: qemu-img info)', l.list_tree, l.qemu_img_info_one_image, l.ratio_list_tree_vs_qemu_info);
      row('list --tree --json, 1000 (yardstick: qemu-img info)', l.list_tree_json, l.qemu_img_info_one_image, l.ratio_list_tree_json_vs_qemu_info);
    }
    if (!skip.has('diff') || !skip.has('delete')) {
      const c = await diffDelete(dir, runs, log, srcA, srcB, skip);
      result.chain = c;
      if (c.diff) {
        row('diff 256 MiB identical rewrite vs qemu-img compare', c.diff.identical.clonebox, c.diff.identical.qemu_img_compare, c.diff.identical.ratio);
        row(
          'diff 256 MiB changed vs compare (identical pair)',
          c.diff.changed.clonebox,
          c.diff.identical.qemu_img_compare,
          c.diff.changed.ratio_vs_qemu_compare_identical_pair,
        );
      }
      if (c.delete) {
        const a = c.delete.merge_256m_into_small_child;
        const b = c.delete.child_covers_deleted;
        row('delete --keep-children, 256 MiB merged vs rebase', a.clonebox, a.qemu_img_rebase, a.ratio);
        row('delete --keep-children, child covers it vs rebase', b.clonebox, b.qemu_img_rebase, b.ratio);
      }
    }
    result.summary = summary;
    return result;
  });
}
