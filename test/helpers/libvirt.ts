/**
 * Shared by the test/libvirt-*.test.ts files: finds out whether a real libvirtd is reachable, and makes
 * throw-away test domains (64 MiB, no OS, virtio qcow2 disks in a temp dir) that are always removed.
 *
 * When libvirtd is not reachable the suites skip, with the reason in the suite name and on stderr; with
 * CLONEBOX_REQUIRE_LIBVIRT=1 (CI) they fail instead.
 */

import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Virsh } from '../../src/drivers/libvirt/virsh.js';
import { pidAlive } from '../../src/fsutil.js';
import { qemuCompare, qemuCreate, qemuImg } from './qemu.js';

const run = promisify(execFile);

export const URI = process.env.CLONEBOX_TEST_LIBVIRT_URI ?? 'qemu:///system';
const REQUIRED = process.env.CLONEBOX_REQUIRE_LIBVIRT === '1';

export interface Availability {
  ok: boolean;
  reason: string;
}

/** Is a daemon answering at URI, with the QEMU driver and qemu-img at hand? */
async function libvirtAvailability(): Promise<Availability> {
  try {
    await run('qemu-img', ['--version'], { timeout: 10_000 });
  } catch {
    return { ok: false, reason: 'qemu-img is not installed (scripts/install-system-deps.sh)' };
  }
  const v = new Virsh({ uri: URI });
  try {
    await v.ping(10_000);
    const ver = await v.version();
    return { ok: true, reason: `libvirt ${ver.library ?? '?'}, ${ver.hypervisor ?? '?'}` };
  } catch (err) {
    return { ok: false, reason: `${(err as Error).message} (run scripts/setup-libvirt.sh as root)` };
  }
}

/**
 * The suite title, and a loud line on stderr when skipping. With CLONEBOX_REQUIRE_LIBVIRT=1 and no
 * daemon, `mustFail` is true: the caller registers a failing test instead of skipping.
 */
export function suiteTitle(base: string, a: Availability): { title: string; skip: boolean; mustFail: boolean } {
  if (a.ok) return { title: `${base} [${a.reason}]`, skip: false, mustFail: false };
  if (REQUIRED) return { title: base, skip: true, mustFail: true };
  process.stderr.write(`\n*** SKIPPING ${base}: ${a.reason}\n*** (set CLONEBOX_REQUIRE_LIBVIRT=1 to make this a failure)\n\n`);
  return { title: `${base} — SKIPPED: ${a.reason}`, skip: true, mustFail: false };
}

export async function sh(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

/** `qemu-img compare -U`: true when the two images (with their chains) hold the same data. */
export async function sameContent(a: string, b: string): Promise<boolean> {
  return (await qemuCompare(a, b, { shareLocks: true, timeoutMs: 120_000 })).code === 0;
}

/** A qcow2 image of `sizeMiB`, or an overlay (of its backing file's size) on `backing`. */
export async function qcow2(file: string, sizeMiB: number, backing?: string): Promise<void> {
  if (backing === undefined) await qemuCreate(file, `${sizeMiB}M`);
  else await qemuCreate(file, undefined, { backing: path.relative(path.dirname(file), backing) });
}

/** A raw, flattened copy of an image as it reads now (works while qemu has it open). */
export async function snapshotRaw(image: string, out: string): Promise<void> {
  await qemuImg(['convert', '-U', '-O', 'raw', image, out]);
}

const PREFIX = 'clonebox-test-';
let seq = 0;

/** Removes a domain whatever its state; never throws. */
async function removeDomain(v: Virsh, name: string): Promise<void> {
  try {
    if (!(await v.exists(name))) return;
    await v.ensureStopped(name).catch(() => undefined);
    await v.undefine(name, { managedSave: true, snapshotsMetadata: true }).catch(() => undefined);
  } catch {
    // best effort
  }
}

/**
 * Removes test domains left behind by earlier runs that were killed before their afterAll: names carry
 * the pid of the test process that made them, and only dead pids' domains are touched (parallel test
 * files of this run keep theirs).
 */
async function sweepStaleDomains(v: Virsh): Promise<void> {
  const out = await v.run(['list', '--all', '--name'], { what: 'cannot list domains' });
  for (const name of out
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith(PREFIX))) {
    const pid = Number(/^clonebox-test-(\d+)-/.exec(name)?.[1]);
    if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) await removeDomain(v, name);
  }
}

export interface TestDisk {
  target: string;
  path: string;
  alias: string;
}

export interface DomainSpec {
  disks?: { target: string; sizeMiB: number }[];
  agentChannel?: boolean;
}

/** A test domain: 64 MiB of RAM, TCG, no OS, virtio qcow2 disks in its own temp dir. */
export class TestDomain {
  readonly name: string;
  readonly dir: string;
  readonly disks: TestDisk[];
  readonly virsh: Virsh;

  private constructor(virsh: Virsh, name: string, dir: string, disks: TestDisk[]) {
    this.virsh = virsh;
    this.name = name;
    this.dir = dir;
    this.disks = disks;
  }

  static async define(virsh: Virsh, label: string, spec: DomainSpec = {}): Promise<TestDomain> {
    const name = `${PREFIX}${process.pid}-${++seq}-${label}`;
    const dir = await mkdtemp(path.join(tmpdir(), `${name}-`));
    const disks: TestDisk[] = [];
    for (const [i, d] of (spec.disks ?? [{ target: 'vda', sizeMiB: 64 }]).entries()) {
      const p = path.join(dir, `${d.target}.qcow2`);
      await qcow2(p, d.sizeMiB);
      disks.push({ target: d.target, path: p, alias: `virtio-disk${i}` });
    }
    const t = new TestDomain(virsh, name, dir, disks);
    registry.add(t);
    await virsh.define(t.xml(spec));
    return t;
  }

  xml(spec: DomainSpec): string {
    const disks = this.disks
      .map(
        (d) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${d.path}'/>
      <target dev='${d.target}' bus='virtio'/>
      <alias name='ua-${d.alias}'/>
    </disk>`,
      )
      .join('\n');
    const agent = spec.agentChannel ? `    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n` : '';
    // type='qemu': TCG, so the tests do not depend on /dev/kvm. No OS: SeaBIOS finds nothing to boot
    // and idles, while qemu keeps the disks open, which is all live snapshots and block jobs need.
    return `<domain type='qemu'>
  <name>${this.name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_reboot>destroy</on_reboot>
  <devices>
${disks}
${agent}    <memballoon model='none'/>
  </devices>
</domain>
`;
  }

  /** The qdev id under which qemu knows a disk (user aliases keep it stable: ua-virtio-disk0). */
  deviceOf(target: string): string {
    const d = this.disks.find((x) => x.target === target);
    if (!d) throw new Error(`no disk ${target}`);
    return `ua-${d.alias}`;
  }

  /** Writes through the running guest's disk device, as the guest would. */
  async guestWrite(target: string, io: string): Promise<void> {
    await this.virsh.guestWrite(this.name, this.deviceOf(target), io);
  }

  async remove(): Promise<void> {
    await removeDomain(this.virsh, this.name);
    await rm(this.dir, { recursive: true, force: true });
    registry.delete(this);
  }
}

const registry = new Set<TestDomain>();

/** Removes every test domain this process made (for afterAll; also safe after failures). */
async function removeAllTestDomains(): Promise<void> {
  for (const t of [...registry]) await t.remove();
}

/**
 * Availability and title for a libvirt suite. When CI requires the daemon (CLONEBOX_REQUIRE_LIBVIRT=1)
 * and it is missing, registers a failing test instead, so the suite can never pass by skipping.
 */
export async function libvirtSuite(base: string): Promise<{ avail: Availability; suite: ReturnType<typeof suiteTitle> }> {
  const avail = await libvirtAvailability();
  const suite = suiteTitle(base, avail);
  if (suite.mustFail) {
    describe(base, () => {
      it('needs a reachable libvirtd (CLONEBOX_REQUIRE_LIBVIRT=1)', () => {
        throw new Error(avail.reason);
      });
    });
  }
  return { avail, suite };
}

/**
 * Inside a libvirt describe block: a Virsh on the test daemon; test domains a killed earlier run left
 * are swept before the block, and the block's own are removed after it.
 */
export function useTestDaemon(): Virsh {
  const virsh = new Virsh({ uri: URI });
  beforeAll(async () => {
    await sweepStaleDomains(virsh);
  });
  afterAll(async () => {
    await removeAllTestDomains();
  });
  return virsh;
}
