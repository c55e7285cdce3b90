/**
 * group-bundle: `snapshot export --group` of two VMs cloned from one 1 GiB base of random data, each
 * with 50 MiB of different random writes (issue 14's acceptance case), against the peer way of moving
 * them: tar + zstd -3 of the base and both VMs' layers, and clonebox's two single-VM bundles.
 *
 * Size (deterministic, the acceptance figure): the group bundle must be at most 1.1 x (one VM's bundle
 * + the compressed different data of the other VM); the different data is zstd -3 of the other VM's
 * written bytes (random, so about their size).
 * Timed (whole processes; one warm-up each, then alternated runs): the group export vs
 * `tar -cf - base a b | zstd -3 -T2`. Untimed: the import into a fresh home, checked with qemu-img
 * compare against the source chains.
 */
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { CLEAN_ENV, CLI, cpuRatio, MiB, machineInfo, measure, NODE, ratio, requireTool, round, sh, timeCommand, withTempDir } from './lib/harness.mjs';

export const name = 'group-bundle';
export const description =
  'export --group of two clones of a 1 GiB random base (50 MiB different writes each): size vs one VM bundle + different data; time vs tar|zstd -3 -T2';

const ENV = CLEAN_ENV;
const BASE_MiB = 1024;
const WRITE_MiB = 50;

/** `mib` MiB of fresh random bytes (written in 16 MiB pieces: memory stays small). */
async function randomFile(file, mib) {
  const fh = await open(file, 'w');
  try {
    const buf = Buffer.alloc(16 * MiB);
    for (let done = 0; done < mib; done += 16) {
      randomFillSync(buf);
      await fh.write(buf, 0, Math.min(16, mib - done) * MiB);
    }
  } finally {
    await fh.close();
  }
}

export default async function run({ runs, log }) {
  requireTool('qemu-img');
  requireTool('zstd');
  return withTempDir('clonebox-bench-group-', async (dir) => {
    const home = path.join(dir, 'home');
    const disks = path.join(dir, 'disks');
    await mkdir(disks, { recursive: true });
    const cb = (args) => sh(NODE, [CLI, '--home', home, ...args], { env: ENV });
    log('building the base (1 GiB random) and two clones...');
    const base = path.join(disks, 'base.qcow2');
    const baseBin = path.join(dir, 'base.bin');
    await randomFile(baseBin, BASE_MiB);
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, `${BASE_MiB}M`]);
    sh('qemu-io', ['-f', 'qcow2', '-c', `write -s ${baseBin} 0 ${BASE_MiB}M`, base]);
    await rm(baseBin);
    const diff = {};
    for (const [i, vm] of ['a', 'b'].entries()) {
      const top = path.join(disks, `${vm}.qcow2`);
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
      cb(['vm', 'add', vm, '--disk', top]);
      diff[vm] = path.join(dir, `${vm}.bin`);
      await randomFile(diff[vm], WRITE_MiB);
      // Different places too: 50 MiB at 100 MiB in a, at 600 MiB in b.
      sh('qemu-io', ['-f', 'qcow2', '-c', `write -s ${diff[vm]} ${i ? 600 : 100}M ${WRITE_MiB}M`, top]);
    }
    cb(['group', 'create', 'g', '--vm', 'a', '--vm', 'b']);
    cb(['snapshot', 'create', '--group', 'g', '--name', 's1']);

    const out = path.join(dir, 'out');
    await mkdir(out);
    const groupBundle = path.join(out, 'g.bundle');
    const tarOut = path.join(out, 'g.tar.zst');
    const layers = ['base.qcow2', 'a@s1.qcow2', 'b@s1.qcow2'];
    for (const l of layers) if (!existsSync(path.join(disks, l))) throw new Error(`expected layer ${l}`);
    log(`timing export --group vs tar|zstd (${runs} runs each)...`);
    const exp = await measure(
      {
        clonebox: async () => {
          const r = await timeCommand(NODE, [CLI, '--home', home, 'snapshot', 'export', '--group', 'g', '-o', groupBundle, '--force', '--json'], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs, report: JSON.parse(r.stdout) };
        },
        peer: async () => {
          await rm(tarOut, { force: true });
          const r = await timeCommand('bash', ['-c', `tar -C ${disks} -cf - ${layers.join(' ')} | zstd -q -3 -T2 -o ${tarOut}`], { env: ENV });
          return { ms: r.ms, cpuMs: r.cpuMs };
        },
      },
      { runs },
    );

    log('sizes: single-VM bundles, the different data compressed...');
    const single = {};
    for (const vm of ['a', 'b']) {
      const f = path.join(out, `${vm}.bundle`);
      single[vm] = JSON.parse(sh(NODE, [CLI, '--home', home, 'snapshot', 'export', vm, '-o', f, '--json'], { env: ENV })).bundle_bytes;
    }
    const zb = path.join(out, 'b.bin.zst');
    sh('zstd', ['-q', '-3', '-f', diff.b, '-o', zb]);
    const diffCompressed = (await stat(zb)).size;
    const groupBytes = (await stat(groupBundle)).size;
    const bound = single.a + diffCompressed;

    log('import into a fresh home, compared with qemu-img compare...');
    const home2 = path.join(dir, 'home2');
    sh(NODE, [CLI, '--home', home2, 'snapshot', 'import', '--group', 'g', groupBundle, '--dir', path.join(dir, 'disks2')], { env: ENV });
    let identical = true;
    for (const vm of ['a', 'b']) {
      const r = await timeCommand('qemu-img', ['compare', '-q', path.join(disks, `${vm}@s1.qcow2`), path.join(dir, 'disks2', vm, `${vm}@s1.qcow2`)], {
        okCodes: [0, 1],
      });
      if (r.code !== 0) identical = false;
    }
    const c = exp.clonebox;
    const p = exp.peer;
    return {
      machine: machineInfo(),
      sizes: {
        group_bundle: groupBytes,
        bundle_a: single.a,
        bundle_b: single.b,
        different_data_b_zstd3: diffCompressed,
        tar_zstd3: (await stat(tarOut)).size,
        bound_1x: bound,
        group_over_bound: round(groupBytes / bound, 3),
        group_over_two_bundles: round(groupBytes / (single.a + single.b), 3),
      },
      import_identical: identical,
      export: exp,
      summary: [
        {
          case: `export --group, 2 x (1 GiB base + ${WRITE_MiB} MiB): ${round(groupBytes / MiB)} MiB = ${round(groupBytes / bound, 3)}x bound`,
          clonebox_ms: c.median_ms,
          peer_ms: p.median_ms,
          ratio: ratio(c, p),
          cpu_ratio: cpuRatio(c, p),
        },
      ],
    };
  });
}
