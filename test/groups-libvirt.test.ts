/**
 * A group of two RUNNING libvirt domains (the real test guest, cbguest-a and cbguest-b, TCG) through the
 * CLI (issue #14):
 *   - `snapshot create --group`: both domains are paused from before the first snapshot to after the
 *     last; the window is measured and reported (`pause_ms`, and in the human output), both run again;
 *   - both guests write, `snapshot restore --group`: both are back, each current image identical under
 *     `qemu-img compare` to its member snapshot's state as it was right after the group snapshot;
 *   - `--quiesce`: every member frozen by its guest agent instead (`consistency: frozen`), thawed after.
 * The guests are booted once for the file and always removed. The pause window is logged, not asserted
 * beyond a generous sanity bound (the machine is shared).
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GroupSnapshotView, SnapshotView } from '../src/index.js';
import { parseJsonOutput, runCli } from './helpers/cli.js';
import { libvirtSuite, sh, URI, useTestDaemon } from './helpers/libvirt.js';
import { makeTempDir } from './helpers/temp.js';
import { guestImageGate, removeAllGuests, TestGuest } from './helpers/test-guest.js';

const BASE = 'a group of two running libvirt guests (real daemon)';
const { suite } = await libvirtSuite(BASE);
const image = await guestImageGate(BASE, suite.skip);

describe.skipIf(suite.skip || !image.ok)(`${suite.title} (group)`, () => {
  const virsh = useTestDaemon();
  const guests: Record<'a' | 'b', TestGuest> = {} as Record<'a' | 'b', TestGuest>;
  let home: string;
  let work: string;
  const cli = (args: string[]) => runCli(args, { home, timeoutMs: 900_000 });
  const ok = async (args: string[]) => {
    const r = await cli(args);
    expect(r.code, `clonebox ${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r;
  };

  beforeAll(async () => {
    work = await makeTempDir('clonebox-group-lv-');
    home = path.join(work, 'home');
    guests.a = await TestGuest.define(virsh, 'ga');
    guests.b = await TestGuest.define(virsh, 'gb', { second: true });
    const [ma, mb] = await Promise.all([guests.a.boot(), guests.b.boot()]);
    console.log(`guests booted to a working agent in ${(ma / 1000).toFixed(1)} s and ${(mb / 1000).toFixed(1)} s`);
    for (const k of ['a', 'b'] as const) await ok(['vm', 'add', k, '--libvirt', '--domain', guests[k].name, '--connect', URI]);
    await ok(['group', 'create', 'pair', '--vm', 'b', '--vm', 'a']);
  }, 1_800_000);
  afterAll(async () => {
    await removeAllGuests();
  }, 300_000);

  /** Each member snapshot of `snap`, as the VM's own list shows it. */
  const member = async (vm: 'a' | 'b', snap: string) => parseJsonOutput<SnapshotView>(await ok(['snapshot', 'show', vm, '--name', snap, '--json']));

  it('a group snapshot pauses both running domains once, for a measured window; a group restore brings both back', async () => {
    await Promise.all([guests.a.counterPast(2), guests.b.counterPast(2)]);
    const r = await ok(['snapshot', 'create', '--group', 'pair', '--name', 'g1', '--json']);
    const g = parseJsonOutput<GroupSnapshotView>(r);
    expect(g.consistency).toBe('paused');
    expect(g.members).toEqual([
      { vm: 'a', snapshot: 'g1' },
      { vm: 'b', snapshot: 'g1' },
    ]);
    expect(typeof g.pause_ms).toBe('number');
    console.log(`group snapshot of two running TCG guests: paused for ${g.pause_ms} ms`);
    expect(g.pause_ms!).toBeGreaterThan(0);
    expect(g.pause_ms!).toBeLessThan(60_000); // a sanity bound only: the figure goes in the report
    expect(await virsh.state(guests.a.name)).toBe('running');
    expect(await virsh.state(guests.b.name)).toBe('running');
    // Each member snapshot is in its VM's own list, tagged with the group.
    const refs: Record<string, string> = {};
    for (const vm of ['a', 'b'] as const) {
      const s = await member(vm, 'g1');
      expect(s.group).toEqual({ name: 'pair', snapshot: 'g1' });
      // The state at the group snapshot: its sealed layer (never written again), copied out now.
      refs[vm] = path.join(work, `${vm}-g1.raw`);
      await sh('qemu-img', ['convert', '-U', '-O', 'raw', s.disks[0]!.path, refs[vm]!], 300_000);
    }
    // Both guests go on and write.
    for (const vm of ['a', 'b'] as const) await guests[vm].sh(`dd if=/dev/urandom of=/root/after-g1 bs=64k count=16 2>/dev/null && sync`);
    const human = await ok(['snapshot', 'list', '--group', 'pair']);
    expect(human.stdout).toMatch(/g1\s+disk .* paused \d+ ms/);

    const res = parseJsonOutput<{ restored: string; members: { vm: string }[] }>(
      await ok(['snapshot', 'restore', '--group', 'pair', '--name', 'g1', '--yes', '--json']),
    );
    expect(res.restored).toBe('g1');
    for (const vm of ['a', 'b'] as const) {
      expect(await virsh.state(guests[vm].name)).toBe('shut off');
      const current = parseJsonOutput<{ disks: { path: string }[] }>(await ok(['vm', 'show', vm, '--json'])).disks[0]!.path;
      const cmp = await sh('qemu-img', ['compare', '-U', current, refs[vm]!], 300_000);
      expect(cmp).toContain('Images are identical');
    }
  }, 1_800_000);

  it('--quiesce: both guests frozen by their agents instead of paused, thawed after', async () => {
    await Promise.all([guests.a.boot(), guests.b.boot()]);
    const r = await ok(['snapshot', 'create', '--group', 'pair', '--name', 'g2', '--quiesce', '--json']);
    const g = parseJsonOutput<GroupSnapshotView>(r);
    console.log(`quiesced group snapshot of two running TCG guests: frozen for ${g.pause_ms} ms`);
    expect(g.consistency).toBe('frozen');
    expect(g.quiesced).toBe(true);
    for (const vm of ['a', 'b'] as const) {
      expect(await guests[vm].freezeStatus()).toBe('thawed');
      expect((await member(vm, 'g2')).quiesced).toBe(true);
    }
    const del = await ok(['snapshot', 'delete', '--group', 'pair', '--name', 'g2', '--json']);
    expect(parseJsonOutput<{ deleted: string }>(del).deleted).toBe('g2');
    expect(parseJsonOutput<GroupSnapshotView[]>(await ok(['snapshot', 'list', '--group', 'pair', '--json'])).map((s) => s.name)).toEqual(['g1']);
  }, 1_800_000);
});
