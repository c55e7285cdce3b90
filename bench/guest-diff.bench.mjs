/**
 * guest-diff: `snapshot diff --files` (issue #15) on a 4 GiB ext4 disk, against virt-diff (libguestfs)
 * on the same pair when it is installed, and against clonebox's own byte-range diff of the same pair
 * (the part of the work that is not guest-aware).
 *
 * Data: ext4 filesystems of 4 GiB made by `mke2fs -d` from a directory of N files (100 per directory,
 * 50 B to 4 KiB each, seeded), loaded as snapshot `a` of a VM; the current state is a copy changed
 * with `debugfs -w` and written into the overlay with `qemu-img convert -B` (only the clusters that
 * differ). Cases:
 *   - 100,000 files, 100 rewritten (debugfs rm + write, as a package upgrade replaces files);
 *   - 100,000 files, 1,000 rewritten (cost follows the change);
 *   - 10,000 files, 100 rewritten (cost does not follow the number of files);
 *   - 100,000 files, 100 rewritten with each parent directory's mtime updated, as the Linux kernel
 *     does on every create and unlink (debugfs leaves directory inodes alone, which forces the
 *     inode-table scan that attributes changed directory blocks; a real guest does not).
 * Every run checks that exactly the rewritten paths are reported. Peak RSS comes from one extra run
 * with a preloaded exit hook (process.resourceUsage().maxRSS).
 */

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { CLEAN_ENV, CLI, MiB, machineInfo, measure, NODE, ratio, requireTool, round, sh, timeCommand, withTempDir } from './lib/harness.mjs';
import { prng } from './lib/layer.mjs';

export const name = 'guest-diff';
export const description = 'snapshot diff --files on a 4 GiB ext4 disk (100k files, 100 changed) vs virt-diff and the byte-range diff';

const REPORT_MAXRSS = 'data:text/javascript,process.on("exit",()=>process.stderr.write("maxrss="+process.resourceUsage().maxRSS+"\\n"))';

/** Enough of a Debian root for libguestfs' inspection (virt-diff refuses a disk without an OS). */
function osSkeleton(dir) {
  for (const d of ['etc', 'bin', 'sbin', 'usr/bin', 'lib', 'var/lib/dpkg']) mkdirSync(path.join(dir, d), { recursive: true });
  writeFileSync(path.join(dir, 'etc/fstab'), '/dev/sda / ext4 defaults 0 1\n');
  writeFileSync(path.join(dir, 'etc/os-release'), 'ID=debian\nVERSION_ID="12"\nNAME="Debian GNU/Linux"\n');
  writeFileSync(path.join(dir, 'etc/debian_version'), '12.0\n');
  writeFileSync(path.join(dir, 'etc/hostname'), 'bench\n');
  writeFileSync(path.join(dir, 'bin/sh'), '');
  writeFileSync(path.join(dir, 'var/lib/dpkg/status'), '');
}

function makeTree(dir, files, seed) {
  const r = prng(seed);
  const paths = [];
  osSkeleton(dir);
  for (let d = 0; d < files / 100; d++) {
    const sub = path.join(dir, `d${String(d).padStart(4, '0')}`);
    mkdirSync(sub, { recursive: true });
    for (let f = 0; f < 100; f++) {
      const name = `f${String(f).padStart(3, '0')}`;
      const size = 50 + Math.floor(r() * 4046);
      writeFileSync(path.join(sub, name), Buffer.alloc(size, `${d}/${f} `));
      paths.push(`/${path.basename(sub)}/${name}`);
    }
  }
  return paths;
}

/** Copy of `base` with `count` files rewritten (every files/count-th one); returns the changed paths. */
function changed(root, base, out, paths, count, kernelLike) {
  sh('cp', ['--sparse=always', base, out]);
  const step = Math.floor(paths.length / count);
  const picked = Array.from({ length: count }, (_, k) => paths[k * step + 7]);
  const content = path.join(root, 'new-content');
  writeFileSync(content, 'rewritten by the bench\n');
  const cmds = [];
  for (const p of picked) {
    cmds.push(`rm ${p}`, `write ${content} ${p}`);
    if (kernelLike) cmds.push(`sif ${path.dirname(p)} mtime 20260101000000`);
  }
  sh('debugfs', ['-w', '-f', '-', out], { input: `${cmds.join('\n')}\n` });
  return picked.sort();
}

export default async function run({ runs, log }) {
  requireTool('qemu-img');
  let hasVirtDiff = true;
  try {
    requireTool('virt-diff');
  } catch {
    hasVirtDiff = false;
  }
  return withTempDir('guest-diff', async (root) => {
    const home = path.join(root, 'home');
    const cli = (...args) => sh(NODE, [CLI, '--home', home, ...args], { env: CLEAN_ENV });
    const images = {};
    for (const files of [100_000, 10_000]) {
      log(`building a 4 GiB ext4 with ${files} files (mke2fs -d)`);
      // The source tree is 100,000 small files: on a tmpfs when there is one (writing and removing
      // them on a shared disk takes minutes), removed as soon as mke2fs has read it.
      const src = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : root, 'clonebox-bench-guest-src-'));
      const paths = makeTree(src, files, 15);
      const raw = path.join(root, `a-${files}.raw`);
      sh('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', src, raw, '4G']);
      sh('rm', ['-rf', src]);
      const vm = `v${files}`;
      const disk = path.join(root, `${vm}.qcow2`);
      sh('qemu-img', ['convert', '-O', 'qcow2', raw, disk]);
      cli('vm', 'add', vm, '--disk', disk);
      cli('snapshot', 'create', vm, '--name', 'a');
      images[files] = { raw, paths, vm, disk, layer: path.join(root, `${vm}@a.qcow2`) };
    }
    const cases = [
      { label: '100k files, 100 changed', files: 100_000, count: 100, kernelLike: false },
      { label: '100k files, 1000 changed', files: 100_000, count: 1000, kernelLike: false },
      { label: '10k files, 100 changed', files: 10_000, count: 100, kernelLike: false },
      { label: '100k files, 100 changed, dir mtimes updated', files: 100_000, count: 100, kernelLike: true },
    ];
    const summary = [];
    const details = [];
    for (const c of cases) {
      const img = images[c.files];
      const after = path.join(root, 'after.raw');
      const expected = changed(root, img.raw, after, img.paths, c.count, c.kernelLike);
      const tmp = `${img.disk}.new`;
      sh('qemu-img', ['convert', '-O', 'qcow2', '-B', img.layer, '-F', 'qcow2', after, tmp]);
      await rename(tmp, img.disk);
      const args = [CLI, '--home', home, 'snapshot', 'diff', img.vm, '--from', 'a', '--to', 'current', '--json'];
      const check = (stdout) => {
        const p = JSON.parse(stdout).disks[0].guest.partitions[0];
        const got = p.files.map((f) => `${f.change} ${f.path}`).sort();
        const want = expected.map((x) => `modified ${x}`);
        if (JSON.stringify(got) !== JSON.stringify(want))
          throw new Error(`${c.label}: reported ${got.length} changes, expected ${want.length}: ${got.slice(0, 5).join(', ')}`);
        return p.stats;
      };
      let stats = null;
      const m = await measure(
        {
          files: async () => {
            const r = await timeCommand(NODE, [...args, '--files'], { env: CLEAN_ENV });
            stats = check(r.stdout);
            return r;
          },
          bytes: () => timeCommand(NODE, args, { env: CLEAN_ENV }),
        },
        { runs },
      );
      const rss = spawnSync(NODE, ['--import', REPORT_MAXRSS, ...args, '--files'], { env: CLEAN_ENV, encoding: 'utf8', maxBuffer: 256 * MiB });
      const maxRssMiB = round(Number(/maxrss=(\d+)/.exec(rss.stderr)?.[1]) / 1024);
      let virtDiffMs = null;
      if (hasVirtDiff && !c.kernelLike && c.count === 100 && c.files === 100_000) {
        // One run, bounded: it boots an appliance (under TCG without /dev/kvm) and walks both trees.
        log('virt-diff (one run, at most 8 minutes)');
        const v = await timeCommand('timeout', ['480', 'virt-diff', '--format=qcow2', '-a', img.layer, '-A', img.disk], {
          env: { ...process.env, LIBGUESTFS_BACKEND: 'direct' },
          okCodes: [0, 124],
        });
        if (v.code === 124) virtDiffMs = '> 480000 (stopped)';
        else if (!v.stdout.includes(expected[0])) throw new Error(`virt-diff did not report ${expected[0]}: ${v.stdout.slice(0, 500)}`);
        else virtDiffMs = round(v.ms);
      }
      log(`${c.label}: --files ${m.files.median_ms} ms (byte diff ${m.bytes.median_ms} ms), peak RSS ${maxRssMiB} MiB, virt-diff ${virtDiffMs ?? 'n/a'} ms`);
      summary.push({
        case: `${c.label}: --files vs byte-range diff`,
        clonebox_ms: m.files.median_ms,
        peer_ms: m.bytes.median_ms,
        ratio: ratio(m.files, m.bytes),
        peak_rss_mib: maxRssMiB,
      });
      if (typeof virtDiffMs === 'number')
        summary.push({
          case: `${c.label}: --files vs virt-diff`,
          clonebox_ms: m.files.median_ms,
          peer_ms: virtDiffMs,
          ratio: round(m.files.median_ms / virtDiffMs, 3),
        });
      details.push({ ...c, files_ms: m.files, bytes_ms: m.bytes, peak_rss_mib: maxRssMiB, stats, virt_diff_ms: virtDiffMs });
    }
    return {
      summary,
      details,
      virt_diff: hasVirtDiff ? 'installed' : 'not installed (apt-get install libguestfs-tools did not succeed here)',
      machine: machineInfo(),
    };
  });
}
