/**
 * qcow2-read: reading ALL allocated data of one qcow2 layer, clonebox vs qemu-img, same data, same run.
 *
 * Sides (each one process, timed from spawn to exit, so start-up counts on both sides):
 *   clonebox        node bench/lib/read-layer.mjs LAYER: readData() from src/qcow2/stream.ts enumerates
 *                   the layer's runs, reads every data run, inflates compressed clusters, and the
 *                   consumer touches every 64-byte line of every chunk. Default options (fresh buffers).
 *   clonebox-reuse  the same with { reuseBuffers: true } (batches in one ring buffer; what a pipeline
 *                   that consumes each chunk before asking for the next can use).
 *   clonebox-api    Qcow2Image.runs() + readRun(), one read at a time (the random-access API), for reference.
 *   qemu-raw        qemu-img convert -O raw LAYER out.raw   (the yardstick; writes a sparse file,
 *                   out.raw is deleted before each run, untimed)
 *   qemu-null       qemu-img convert -n --target-is-zero --target-image-opts LAYER driver=null-co,...
 *                   (qemu's read path alone: the same conversion, data thrown away, and no zeroes
 *                   written for the holes: the null target reads as zeros)
 *
 * Then the plain layer again with a cold page cache: evicted (dd iflag=nocache) before every run of
 * every side, no warm-up; what exporting a layer nobody has read lately looks like.
 *
 * A last case runs the same sides on a layer holding one 64 KiB cluster: the start-up floor of each
 * process (Node loading clonebox vs qemu-img), to tell fixed cost from reading cost.
 *
 * Layers: one written by qemu-io (plain clusters in shuffled order, see lib/layer.mjs), and the same
 * content recompressed with `qemu-img convert -c` using zlib and using zstd. Before timing, qemu-img
 * converts each layer once and clonebox's bytes are compared with that raw output (every chunk, untimed).
 * Each side then runs once untimed (warm-up: the layer is in the page cache for every timed run, which
 * the result records with fincore), then `runs` times in alternating order; medians are compared.
 */

import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_DIR, cachedPercent, cpuRatio, MiB, machineInfo, measure, ROOT, ratio, requireTool, sh, timeCommand, withTempDir } from './lib/harness.mjs';
import { makeLayer } from './lib/layer.mjs';

/** qemu-img reading every block of a qcow2 file into a null target: its read cost alone. */
function qemuNull(file, virtualSize) {
  return () => timeCommand('qemu-img', ['convert', '-n', '--target-is-zero', '--target-image-opts', '-f', 'qcow2', file, `driver=null-co,size=${virtualSize}`]);
}
export const name = 'qcow2-read';
export const description = 'read all allocated data of a qcow2 layer vs qemu-img convert -O raw';

const READER = path.join(BENCH_DIR, 'lib', 'read-layer.mjs');

export default async function run({ runs = 5, log = () => {} } = {}) {
  const dataMiB = Number(process.env.BENCH_QCOW2_MIB ?? 384);
  const qemuImg = requireTool('qemu-img');
  requireTool('qemu-io');
  return withTempDir('qcow2-read', async (dir) => {
    const plain = path.join(dir, 'layer.qcow2');
    log(`making a 2 GiB layer holding ${dataMiB} MiB of data with qemu-io...`);
    const layout = await makeLayer(dir, plain, { dataMiB });
    const layers = [{ case: 'plain', file: plain }];
    if (!process.env.BENCH_QCOW2_NO_COMPRESSED) {
      log('recompressing it with qemu-img convert -c (zlib, then zstd)...');
      const zlib = path.join(dir, 'layer-zlib.qcow2');
      const zstd = path.join(dir, 'layer-zstd.qcow2');
      sh('qemu-img', ['convert', '-c', '-O', 'qcow2', plain, zlib]);
      sh('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', plain, zstd]);
      layers.push({ case: 'zlib', file: zlib }, { case: 'zstd', file: zstd });
    }
    const out = path.join(dir, 'out.raw');
    const cases = [];
    for (const l of layers) {
      const st = await stat(l.file);
      const info = JSON.parse(sh('node', [path.join(ROOT, 'bin', 'clonebox.js'), 'image', 'info', l.file, '--json']));
      const check = sh('qemu-img', ['check', l.file]);
      const compressedPct = /([\d.]+)% compressed clusters/.exec(check)?.[1] ?? null;
      log(
        `${l.case}: ${(st.size / MiB).toFixed(0)} MiB file, ${(info.data_bytes / MiB).toFixed(0)} MiB of data, ` +
          `${compressedPct}% compressed clusters; verifying, then ${runs} timed runs per side...`,
      );

      // Correctness first (untimed): clonebox's bytes equal qemu-img's raw output, chunk by chunk.
      sh('qemu-img', ['convert', '-O', 'raw', l.file, out]);
      const verified = JSON.parse(sh('node', [READER, l.file, '--verify', out]));
      if (verified.bytes !== info.data_bytes) throw new Error(`clonebox read ${verified.bytes} bytes of ${l.case}, image info says ${info.data_bytes}`);
      await rm(out, { force: true });

      const reader =
        (args, expect = verified.checksum) =>
        async () => {
          const r = await timeCommand('node', [READER, l.file, ...args]);
          const j = JSON.parse(r.stdout);
          if (j.bytes !== verified.bytes || j.checksum !== expect) throw new Error(`clonebox read different bytes from ${l.case} (${r.stdout.trim()})`);
          return { ms: r.ms, cpuMs: r.cpuMs, inner_ms: j.inner_ms };
        };
      const sides = {
        clonebox: reader([]),
        'clonebox-reuse': reader(['--opts', JSON.stringify({ reuseBuffers: true })]),
        'clonebox-api': reader(['--mode', 'runs']),
        'qemu-raw': () => timeCommand('qemu-img', ['convert', '-O', 'raw', l.file, out]),
        'qemu-null': qemuNull(l.file, info.virtual_size),
      };
      let cachedAfterWarmup = null;
      let calls = 0;
      const res = await measure(sides, {
        runs,
        before: async (side) => {
          if (side === 'qemu-raw') await rm(out, { force: true });
          if (++calls === Object.keys(sides).length + 1) cachedAfterWarmup = cachedPercent(l.file);
        },
      });
      const cachedAtEnd = cachedPercent(l.file);
      await rm(out, { force: true });
      const raw = res['qemu-raw'];
      cases.push({
        case: l.case,
        file_bytes: st.size,
        data_bytes: info.data_bytes,
        compressed_clusters_percent: compressedPct === null ? null : Number(compressedPct),
        page_cache_percent: { after_warmup: cachedAfterWarmup, at_end: cachedAtEnd },
        ratios: {
          clonebox_vs_qemu_raw: ratio(res.clonebox, raw),
          clonebox_vs_qemu_raw_cpu: cpuRatio(res.clonebox, raw),
          clonebox_reuse_vs_qemu_raw: ratio(res['clonebox-reuse'], raw),
          clonebox_reuse_vs_qemu_raw_cpu: cpuRatio(res['clonebox-reuse'], raw),
          clonebox_vs_qemu_null: ratio(res.clonebox, res['qemu-null']),
          clonebox_api_vs_qemu_raw: ratio(res['clonebox-api'], raw),
        },
        sides: res,
      });
    }
    // Cold cache: the plain layer evicted from the page cache before every run (dd iflag=nocache asks
    // the kernel to drop the file's cached pages; no root needed), as when exporting a layer nobody
    // has read lately. No warm-up, of course.
    log(`plain, cold cache (layer evicted before every run); ${runs} timed runs per side...`);
    let evictedPercent = null;
    const evict = async () => {
      sh('dd', [`if=${plain}`, 'iflag=nocache', 'count=0', 'status=none']);
      evictedPercent ??= cachedPercent(plain);
    };
    const plainInfoBytes = cases[0].data_bytes;
    const coldReader = (args) => async () => {
      const r = await timeCommand('node', [READER, plain, ...args]);
      if (JSON.parse(r.stdout).bytes !== plainInfoBytes) throw new Error(`clonebox read the wrong amount from the cold layer: ${r.stdout.trim()}`);
      return { ms: r.ms, cpuMs: r.cpuMs };
    };
    const cold = await measure(
      {
        clonebox: coldReader([]),
        'clonebox-api': coldReader(['--mode', 'runs']),
        'qemu-raw': () => timeCommand('qemu-img', ['convert', '-O', 'raw', plain, out]),
        'qemu-null': qemuNull(plain, layout.virtual_size),
      },
      {
        runs,
        warmup: 0,
        before: async () => {
          await rm(out, { force: true });
          await evict();
        },
      },
    );
    await rm(out, { force: true });
    const coldCase = { case: 'plain-cold', data_bytes: plainInfoBytes, page_cache_percent_after_eviction: evictedPercent, sides: cold };

    // Start-up floor: the same sides on a layer holding one cluster, so the fixed cost of starting
    // each process (Node loading clonebox vs qemu-img) can be told apart from the cost of reading.
    log(`start-up floor: a layer holding 64 KiB; ${runs} timed runs per side...`);
    const tiny = path.join(dir, 'tiny.qcow2');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', tiny, '64M']);
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 7 1M 64k', tiny]);
    const floor = await measure(
      {
        clonebox: async () => {
          const r = await timeCommand('node', [READER, tiny]);
          return { ms: r.ms, cpuMs: r.cpuMs, inner_ms: JSON.parse(r.stdout).inner_ms };
        },
        'qemu-raw': () => timeCommand('qemu-img', ['convert', '-O', 'raw', tiny, out]),
        'qemu-null': () =>
          timeCommand('qemu-img', ['convert', '-n', '--target-is-zero', '--target-image-opts', '-f', 'qcow2', tiny, 'driver=null-co,size=67108864']),
      },
      {
        runs,
        before: async (side) => {
          if (side === 'qemu-raw') await rm(out, { force: true });
        },
      },
    );
    await rm(out, { force: true });
    // The same ratio with each process's start-up floor taken off both sides (medians of the floor
    // case): how the reading itself compares, apart from Node's start-up cost.
    const floorOf = (side) => floor[side.startsWith('clonebox') ? 'clonebox' : side].median_ms;
    const netRatio = (c, side, peer) => {
      const a = c.sides[side].median_ms - floorOf(side);
      const b = c.sides[peer].median_ms - floorOf(peer);
      return c.sides === floor || b <= 0 ? null : Math.round((a / b) * 1000) / 1000;
    };
    const row = (c, side, peer, label) => ({
      case: `${c.case}: ${label}`,
      clonebox_ms: c.sides[side].median_ms,
      peer_ms: c.sides[peer].median_ms,
      ratio: ratio(c.sides[side], c.sides[peer]),
      cpu_ratio: cpuRatio(c.sides[side], c.sides[peer]),
      net_ratio: netRatio(c, side, peer),
    });
    return {
      name,
      description,
      date: new Date().toISOString(),
      runs,
      machine: machineInfo(),
      qemu_img: qemuImg,
      layout,
      cases,
      cold_cache: coldCase,
      startup_floor: { data_bytes: 65536, sides: floor },
      summary: [
        ...cases.flatMap((c) => [
          row(c, 'clonebox', 'qemu-raw', 'readData vs convert -O raw'),
          row(c, 'clonebox-reuse', 'qemu-raw', 'readData reuseBuffers vs convert -O raw'),
          row(c, 'clonebox', 'qemu-null', 'readData vs convert to null-co'),
          row(c, 'clonebox-api', 'qemu-raw', 'runs()+readRun() vs convert -O raw'),
        ]),
        row({ case: 'plain, cold cache', sides: cold }, 'clonebox', 'qemu-raw', 'readData vs convert -O raw'),
        row({ case: 'plain, cold cache', sides: cold }, 'clonebox', 'qemu-null', 'readData vs convert to null-co'),
        row({ case: 'plain, cold cache', sides: cold }, 'clonebox-api', 'qemu-raw', 'runs()+readRun() vs convert -O raw'),
        row({ case: 'start-up floor (64 KiB layer)', sides: floor }, 'clonebox', 'qemu-raw', 'readData vs convert -O raw'),
      ],
    };
  });
}
