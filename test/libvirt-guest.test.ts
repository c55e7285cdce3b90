/**
 * clonebox on a REAL guest: the small Debian of scripts/make-test-guest.sh, booted under libvirt (TCG)
 * with qemu-ga, writing a counter log with `sync` after each line. Through the CLI as a user types it:
 *   - --quiesce with a working agent: frozen for the snapshot (the guest's freeze hook ran), thawed after,
 *     recorded as `quiesced: true`, and the layer's ext4 needs no journal recovery;
 *   - a freeze that fails (the guest's fsfreeze hook exits 1): a crash-consistent snapshot with one warning
 *     naming the cause, and no journal left for later commands to trip over (the bug that wedged a VM);
 *   - a snapshot taken while the guest writes, restored: `e2fsck -n` passes (before and after journal
 *     replay) and the counter log is a prefix of what the guest wrote;
 *   - --memory, then restore --start: the guest resumes, its agent answers and the counter continues
 *     from the snapshot's value instead of starting again at 1;
 *   - an agent that was stopped: crash-consistent with one warning;
 *   - the guest-aware diff: `snapshot diff --packages` across a `dpkg -i` of a local .deb in the guest.
 * One guest is booted for the whole file (TCG boots are slow on a shared machine) and always removed.
 * Also: a snapshot step libvirt refuses during a journal roll-forward is undone instead of retried by
 * every later command (on a domain without an OS, no boot needed).
 */
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { libvirtSuite, sh, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import type { RunResult } from './helpers/process.js';
import { makeTempDir } from './helpers/temp.js';
import { COUNTER_LOG, guestImageGate, parseCounter, removeAllGuests, TestGuest } from './helpers/test-guest.js';

const BASE = 'a real Debian guest under libvirt (real daemon)';
const { suite } = await libvirtSuite(BASE);
const image = await guestImageGate(BASE, suite.skip);

interface SnapJson {
  name: string;
  type: string;
  quiesced: boolean;
  disks: { target: string; path: string }[];
}

const warningLines = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('clonebox: warning:'));

/** The image (with its chain) as a raw file, read with qemu-img while qemu may hold it open. */
async function toRaw(image: string, out: string): Promise<string> {
  await sh('qemu-img', ['convert', '-U', '-O', 'raw', image, out], 300_000);
  return out;
}

/** `e2fsck -n -f`: exit code and output (0: clean). Never changes the file. */
async function fsckReadOnly(raw: string): Promise<{ code: number; out: string }> {
  const { run } = await import('./helpers/process.js');
  const r = await run('e2fsck', ['-n', '-f', raw], { timeoutMs: 300_000 });
  return { code: r.code ?? -1, out: `${r.stdout}${r.stderr}` };
}

async function ext4Features(raw: string): Promise<string> {
  return (await sh('dumpe2fs', ['-h', raw])).split('\n').find((l) => l.startsWith('Filesystem features:')) ?? '';
}

async function debugfsCat(raw: string, file: string): Promise<string> {
  return sh('debugfs', ['-R', `cat ${file}`, raw]);
}

describe.skipIf(suite.skip || !image.ok)(`${suite.title} (guest)`, () => {
  const virsh = useTestDaemon();
  let g: TestGuest;
  let home: string;
  let work: string;
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(args, { home, env, timeoutMs: 900_000 });
  const vmShow = async () => parseJsonOutput<{ disks: { path: string }[] }>(await cli(['vm', 'show', 'g', '--json']));
  const journal = () => path.join(home, 'vms', 'g', 'journal.json');

  beforeAll(async () => {
    work = await makeTempDir('clonebox-guest-');
    home = path.join(work, 'home');
    g = await TestGuest.define(virsh, 'guest');
    const ms = await g.boot();
    console.log(`guest booted to a working agent in ${(ms / 1000).toFixed(1)} s`);
    const add = await cli(['vm', 'add', 'g', '--libvirt', '--domain', g.name, '--connect', URI, '--json']);
    expect(add.code, add.stderr).toBe(0);
  }, 900_000);
  afterAll(async () => {
    await removeAllGuests();
  }, 300_000);

  it('--quiesce with a working agent: frozen for the snapshot, thawed after, recorded as quiesced', async () => {
    await g.counterPast(2);
    const r = await cli(['snapshot', 'create', 'g', '--name', 'q1', '--quiesce', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(warningLines(r)).toEqual([]);
    const s = parseJsonOutput<SnapJson>(r);
    expect(s.quiesced).toBe(true);
    expect(await g.freezeStatus()).toBe('thawed');
    expect(await g.readFile('/run/clonebox-fsfreeze-hook.log')).toBe('freeze\nthaw\n');
    // A frozen ext4 has flushed its journal and cleared needs_recovery: the layer is clean as it is.
    const raw = await toRaw(s.disks[0]!.path, path.join(work, 'q1.raw'));
    expect(await ext4Features(raw)).not.toContain('needs_recovery');
    const fsck = await fsckReadOnly(raw);
    expect(fsck.code, fsck.out).toBe(0);
    expect(fsck.out).not.toContain('skipping journal recovery');
    await rm(raw);
    const shown = parseJsonOutput<SnapJson>(await cli(['snapshot', 'show', 'g', '--name', 'q1', '--json']));
    expect(shown.quiesced).toBe(true);
  }, 600_000);

  it('a freeze that fails: crash-consistent with one warning naming the cause, nothing left for later commands', async () => {
    await g.sh('touch /run/clonebox-freeze-fail');
    try {
      const r = await cli(['snapshot', 'create', 'g', '--name', 'q2', '--quiesce', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const w = warningLines(r);
      expect(w, r.stderr).toHaveLength(1);
      expect(w[0]).toMatch(/fsfreeze hook has failed/);
      expect(w[0]).toMatch(/crash-consistent/);
      expect(w[0]).toContain(g.name);
      expect(parseJsonOutput<SnapJson>(r).quiesced).toBe(false);
      expect(await g.freezeStatus()).toBe('thawed');
      // The wedge: the journal stayed in its commit phase and every later command replayed the failing
      // freeze. Now nothing is left, and later commands work.
      await expect(readFile(journal())).rejects.toMatchObject({ code: 'ENOENT' });
      const show = await cli(['snapshot', 'show', 'g', '--name', 'q2', '--json']);
      expect(show.code, show.stderr).toBe(0);
      expect(parseJsonOutput<SnapJson>(show).quiesced).toBe(false);
      const list = await cli(['snapshot', 'list', 'g', '--json']);
      expect(list.code, list.stderr).toBe(0);
      expect(parseJsonOutput<{ name: string }[]>(list).map((x) => x.name)).toEqual(['q2', 'q1']);
    } finally {
      await g.sh('rm -f /run/clonebox-freeze-fail');
    }
  }, 600_000);

  it('snapshot diff --packages sees a package installed in the guest with dpkg -i (the guest-aware diff)', async () => {
    // Quiesced: a frozen filesystem has nothing pending in its journal.
    const p0 = await cli(['snapshot', 'create', 'g', '--name', 'p0', '--quiesce', '--json']);
    expect(p0.code, p0.stderr).toBe(0);
    await g.sh('dpkg -i /root/clonebox-probe_1.0_all.deb >/dev/null && sync', 300_000);
    const p1 = await cli(['snapshot', 'create', 'g', '--name', 'p1', '--quiesce', '--json']);
    expect(p1.code, p1.stderr).toBe(0);
    expect(parseJsonOutput<SnapJson>(p1).quiesced).toBe(true);
    const d = await cli(['snapshot', 'diff', 'g', '--from', 'p0', '--to', 'p1', '--packages', '--json']);
    expect(d.code, d.stderr).toBe(0);
    const j = parseJsonOutput<{ disks: { guest?: { partitions: { packages?: { manager: string; changes: { name: string; change: string }[] }[] }[] } }[] }>(d);
    const changes = j.disks
      .flatMap((x) => x.guest?.partitions ?? [])
      .flatMap((p) => (p.packages ?? []).filter((m) => m.manager === 'dpkg').flatMap((m) => m.changes));
    expect(changes, d.stdout).toContainEqual(expect.objectContaining({ name: 'clonebox-probe', change: 'installed' }));

    // Not quiesced: the state is taken with the filesystem mounted, whatever `sync` committed to the
    // journal but the kernel has not yet written to its place is replayed by the diff.
    await g.sh('dpkg -r clonebox-probe >/dev/null && sync', 300_000);
    const p2 = await cli(['snapshot', 'create', 'g', '--name', 'p2', '--json']);
    expect(p2.code, p2.stderr).toBe(0);
    const d2 = await cli(['snapshot', 'diff', 'g', '--from', 'p1', '--to', 'p2', '--packages', '--json']);
    expect(d2.code, d2.stderr).toBe(0);
    const parts = parseJsonOutput<typeof j>(d2).disks.flatMap((x) => x.guest?.partitions ?? []);
    const removed = parts.flatMap((p) => (p.packages ?? []).filter((m) => m.manager === 'dpkg').flatMap((m) => m.changes));
    expect(removed, d2.stdout).toContainEqual(expect.objectContaining({ name: 'clonebox-probe', change: 'removed' }));
  }, 900_000);

  let atMemory = 0;
  it('a memory snapshot of the running guest', async () => {
    atMemory = (await g.counterPast(0)).at(-1)!;
    const t0 = Date.now();
    const r = await cli(['snapshot', 'create', 'g', '--name', 'm1', '--memory', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(parseJsonOutput<SnapJson>(r).type).toBe('full');
    console.log(`memory snapshot of the 256 MiB guest: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    expect(await virsh.state(g.name)).toBe('running');
    await g.counterPast(atMemory); // the guest went on after its pause
  }, 900_000);

  it('a disk snapshot taken while the guest writes, restored: e2fsck -n passes and the counter log is a prefix', async () => {
    await g.counterPast(atMemory + 2);
    const r = await cli(['snapshot', 'create', 'g', '--name', 'd1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const d1 = parseJsonOutput<SnapJson>(r);
    // What the guest has written since: the snapshot's log must be a prefix of it.
    const before = (await g.counter()).at(-1)!;
    const later = await g.readFile(COUNTER_LOG);
    expect(parseCounter(later).at(-1)).toBeGreaterThanOrEqual(before);

    const res = await cli(['snapshot', 'restore', 'g', '--name', 'd1', '--yes', '--json']);
    expect(res.code, res.stderr).toBe(0);
    expect(await virsh.state(g.name)).toBe('shut off');
    const current = (await vmShow()).disks[0]!.path;
    expect(path.basename(current)).toMatch(/~d1\.restored/);
    const raw = await toRaw(current, path.join(work, 'd1.raw'));
    // Crash-consistent: e2fsck -n checks it without replaying the journal, then again after replay (what
    // the guest's kernel does when it mounts it).
    const plain = await fsckReadOnly(raw);
    expect(plain.code, plain.out).toBe(0);
    await sh('e2fsck', ['-E', 'journal_only', '-p', raw]);
    const replayed = await fsckReadOnly(raw);
    expect(replayed.code, replayed.out).toBe(0);
    const log = await debugfsCat(raw, COUNTER_LOG);
    expect(parseCounter(log).length).toBeGreaterThan(0);
    expect(later.startsWith(log), `snapshot log (${log.length} bytes) is not a prefix of the guest's (${later.length} bytes)`).toBe(true);
    // The layer the snapshot sealed holds the same log (what an export would carry).
    const layer = await toRaw(d1.disks[0]!.path, path.join(work, 'd1-layer.raw'));
    await sh('e2fsck', ['-E', 'journal_only', '-p', layer]);
    expect(await debugfsCat(layer, COUNTER_LOG)).toBe(log);
    await rm(raw);
    await rm(layer);
  }, 900_000);

  it('restore --start of the memory snapshot: the guest resumes and its counter continues from the snapshot', async () => {
    const r = await cli(['snapshot', 'restore', 'g', '--name', 'm1', '--start', '--yes', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(await virsh.run(['domstate', g.name, '--reason'], { domain: g.name })).toMatch(/running \(restored\)/);
    await g.waitForAgent(120_000);
    const c = await g.counterPast(atMemory + 2);
    // Resumed, not rebooted: one run of numbers from 1 (a boot would start again at 1 after m1's lines).
    const firstGap = c.findIndex((n, i) => n !== i + 1);
    expect(firstGap, `counter log restarts or jumps at line ${firstGap + 1}: ${c.slice(Math.max(0, firstGap - 2), firstGap + 3).join(',')}`).toBe(-1);
    expect(c.at(-1)).toBeGreaterThan(atMemory);
  }, 900_000);

  it('an agent that was stopped: crash-consistent with one warning', async () => {
    // Fire and forget: the agent that runs the command is the one it stops.
    await g.agent({ execute: 'guest-exec', arguments: { path: '/bin/sh', arg: ['-c', 'sleep 1; kill $(cat /run/qemu-ga.pid)'] } });
    const t0 = Date.now();
    while ((await virsh.agentStatus(g.name)) === 'connected') {
      if (Date.now() - t0 > 60_000) throw new Error('the guest agent did not stop within 60 s');
      await new Promise((res) => setTimeout(res, 500));
    }
    const r = await cli(['snapshot', 'create', 'g', '--name', 'q3', '--quiesce', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const w = warningLines(r);
    expect(w, r.stderr).toHaveLength(1);
    expect(w[0]).toMatch(/does not answer.*crash-consistent/);
    expect(parseJsonOutput<SnapJson>(r).quiesced).toBe(false);
    await expect(readFile(journal())).rejects.toMatchObject({ code: 'ENOENT' });
  }, 600_000);
});

describe.skipIf(suite.skip)(`${suite.title} (journal)`, () => {
  const virsh = useTestDaemon();

  it('a snapshot step libvirt refuses during a roll-forward is undone, not replayed by every later command', async () => {
    const d = await TestDomain.define(virsh, 'undo');
    await virsh.start(d.name);
    const home = path.join(d.dir, 'home');
    const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(args, { home, env, timeoutMs: 120_000 });
    const add = await cli(['vm', 'add', 'web', '--libvirt', '--domain', d.name, '--connect', URI]);
    expect(add.code, add.stderr).toBe(0);
    const jfile = path.join(home, 'vms', 'web', 'journal.json');
    // Kill the create at each step in turn until it dies in its commit phase before the libvirt step.
    let step: { disks: { to: string }[] } | null = null;
    for (let n = 1; n <= 12 && step === null; n++) {
      const r = await cli(['snapshot', 'create', 'web', '--name', 's1'], { CLONEBOX_CRASH_AT: String(n) });
      expect(r.code, r.stderr).not.toBe(0);
      const j = JSON.parse(await readFile(jfile, 'utf8')) as { phase: string; done: number; actions: { do: string; step?: { op: string } }[] };
      const at = j.actions.findIndex((a) => a.do === 'driver' && a.step?.op === 'snapshot');
      if (j.phase === 'commit' && at >= j.done) step = j.actions[at]!.step as unknown as { disks: { to: string }[] };
      else {
        const list = await cli(['snapshot', 'list', 'web']); // recovers
        expect(list.code, list.stderr).toBe(0);
        if ((await cli(['snapshot', 'show', 'web', '--name', 's1'])).code === 0) throw new Error(`create completed at crash point ${n}`);
      }
    }
    expect(step, 'no crash point left the create before its libvirt step').not.toBeNull();
    // The overlay libvirt is to switch to vanishes: the step cannot be done, and libvirt refuses it.
    await rm(step!.disks[0]!.to);
    const list = await cli(['snapshot', 'list', 'web', '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect(parseJsonOutput<unknown[]>(list)).toEqual([]);
    await expect(readFile(jfile)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await virsh.domblklist(d.name)).map((b) => b.source)).toEqual([d.disks[0]!.path]);
    // The VM is usable: the same snapshot now succeeds.
    const again = await cli(['snapshot', 'create', 'web', '--name', 's1', '--json']);
    expect(again.code, again.stderr).toBe(0);
  }, 300_000);
});
