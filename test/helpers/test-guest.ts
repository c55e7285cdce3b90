/**
 * A real guest for the libvirt tests: the small Debian that scripts/make-test-guest.sh builds (cached by
 * the content of its inputs), booted by libvirt from the host's kernel and initramfs (<kernel>, <initrd>,
 * <cmdline>), with qemu-ga on the org.qemu.guest_agent.0 channel and a counter the guest appends to
 * /var/log/clonebox-counter.log (one number a line, `sync` after each).
 *
 * TCG guests are slow and the test machine is shared: every wait is bounded, boot failures say why (the
 * guest's serial console is logged to a file, and its last lines go into the error), and every domain a
 * test defines is destroyed and undefined afterwards, also on failure (names carry the test process's
 * pid, so useTestDaemon() sweeps those of killed runs).
 *
 * The image cannot be built (no root, no mmdebstrap, no Debian kernel, no mirror): the suite skips
 * loudly, or fails under CLONEBOX_REQUIRE_LIBVIRT=1 (CI), with the builder's own error.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'vitest';
import type { Virsh } from '../../src/drivers/libvirt/virsh.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const BUILDER = path.join(ROOT, 'scripts', 'make-test-guest.sh');
/** The builder takes ~1 min on an idle machine; on a loaded one, much longer. */
const BUILD_TIMEOUT_MS = Number(process.env.CLONEBOX_GUEST_BUILD_TIMEOUT_MS ?? 20 * 60_000);
/** From `virsh start` to the first answer to guest-ping: ~20 s under TCG on an idle machine. */
const BOOT_TIMEOUT_MS = Number(process.env.CLONEBOX_GUEST_BOOT_TIMEOUT_MS ?? 300_000);

interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  /** Hostname cbguest-a. */
  image: string;
  /** Hostname cbguest-b: a second guest for group tests. */
  imageB: string;
  cmdline: string;
}

/**
 * Builds (or finds) the image before a test file's tests are collected, so that a machine that cannot
 * build it skips loudly, and CI (CLONEBOX_REQUIRE_LIBVIRT=1) fails with the builder's error instead.
 * `skip`: the libvirt suite already skips (no daemon), so the image is not even tried.
 */
export async function guestImageGate(base: string, skip: boolean): Promise<{ ok: boolean; reason: string }> {
  if (skip) return { ok: false, reason: 'no libvirtd' };
  const image = await guestImage().then(
    () => ({ ok: true, reason: '' }),
    (e: Error) => ({ ok: false, reason: e.message }),
  );
  if (image.ok) return image;
  if (process.env.CLONEBOX_REQUIRE_LIBVIRT === '1') {
    describe(base, () => {
      it('needs the test guest image (CLONEBOX_REQUIRE_LIBVIRT=1)', () => {
        throw new Error(image.reason);
      });
    });
  } else process.stderr.write(`\n*** SKIPPING ${base}: ${image.reason}\n\n`);
  return image;
}

let building: Promise<GuestImage> | null = null;

/** Builds (or finds in the cache) the guest image; one build per test process. */
function guestImage(): Promise<GuestImage> {
  building ??= new Promise<GuestImage>((resolve, reject) => {
    execFile('bash', [BUILDER], { timeout: BUILD_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const why = (
          stderr
            .trim()
            .split('\n')
            .filter((l) => l.includes('error'))
            .at(-1) ??
          stderr.trim().split('\n').at(-1) ??
          err.message
        ).trim();
        reject(new Error(`cannot build the test guest (scripts/make-test-guest.sh): ${why}`));
        return;
      }
      const dir = stdout.trim().split('\n').at(-1) ?? '';
      readFile(path.join(dir, 'cmdline'), 'utf8').then(
        (cmdline) =>
          resolve({
            dir,
            kernel: path.join(dir, 'vmlinuz'),
            initrd: path.join(dir, 'initrd.img'),
            image: path.join(dir, 'guest.qcow2'),
            imageB: path.join(dir, 'guest-b.qcow2'),
            cmdline: cmdline.trim(),
          }),
        (e: Error) => reject(new Error(`the test guest builder printed no usable directory (${dir}): ${e.message}`)),
      );
    });
  });
  return building;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

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

export interface GuestOptions {
  /** The second image (hostname cbguest-b). */
  second?: boolean;
  /** MiB of RAM (default 256: the initramfs unpacks ~100 MiB). */
  memoryMiB?: number;
  /** No org.qemu.guest_agent.0 channel: a guest without an agent. */
  noAgentChannel?: boolean;
}

let seq = 0;

/** A defined (not yet started) domain running the test guest on its own copy of the image. */
export class TestGuest {
  readonly name: string;
  readonly dir: string;
  /** The domain's disk (vda) as first defined: a copy of the cached image. */
  readonly disk: string;
  readonly console: string;
  readonly virsh: Virsh;

  private constructor(virsh: Virsh, name: string, dir: string) {
    this.virsh = virsh;
    this.name = name;
    this.dir = dir;
    this.disk = path.join(dir, 'vda.qcow2');
    this.console = path.join(dir, 'console.log');
  }

  static async define(virsh: Virsh, label: string, o: GuestOptions = {}): Promise<TestGuest> {
    const img = await guestImage();
    // The prefix and pid let useTestDaemon() sweep domains of killed runs (see helpers/libvirt.ts).
    const name = `clonebox-test-${process.pid}-g${++seq}-${label}`;
    const dir = await mkdtemp(path.join(tmpdir(), `${name}-`));
    const g = new TestGuest(virsh, name, dir);
    live.add(g);
    // A private copy: snapshots seal the domain's image as a layer, and the cache must stay pristine.
    await copyFile(o.second ? img.imageB : img.image, g.disk);
    const agent = o.noAgentChannel ? '' : `    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n`;
    // type='qemu': TCG, no /dev/kvm needed. Power-off, reboot and crash all stop the domain, so a guest
    // that panics shows up as 'shut off' at once (panic=-1 on the command line) instead of looping.
    await virsh.define(`<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>${o.memoryMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${img.kernel}</kernel>
    <initrd>${img.initrd}</initrd>
    <cmdline>${img.cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${g.disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
${agent}    <serial type='file'><source path='${g.console}' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`);
    return g;
  }

  /** The last lines of the guest's serial console (kernel and init messages), for error messages. */
  async consoleTail(lines = 15): Promise<string> {
    const text = await readFile(this.console, 'utf8').catch(() => '');
    return text.trim().split('\n').slice(-lines).join('\n');
  }

  /** Waits (at most timeoutMs) until the agent answers guest-ping; the error shows the console. */
  async waitForAgent(timeoutMs = BOOT_TIMEOUT_MS): Promise<number> {
    const t0 = Date.now();
    while (Date.now() - t0 < timeoutMs) {
      if (!(await this.virsh.isActive(this.name))) {
        throw new Error(`guest ${this.name} stopped before its agent answered; console:\n${await this.consoleTail()}`);
      }
      if (await this.virsh.agentPing(this.name, 2)) return Date.now() - t0;
      await sleep(1000);
    }
    throw new Error(`the guest agent of ${this.name} did not answer within ${Math.round(timeoutMs / 1000)} s; console:\n${await this.consoleTail()}`);
  }

  /** Starts the domain and waits for its agent; returns the milliseconds that took. */
  async boot(timeoutMs = BOOT_TIMEOUT_MS): Promise<number> {
    const t0 = Date.now();
    await this.virsh.start(this.name);
    await this.waitForAgent(timeoutMs);
    return Date.now() - t0;
  }

  /** One guest-agent command; its `return` value. */
  agent(command: Record<string, unknown>, timeoutSec = 20): Promise<unknown> {
    return this.virsh.agentCommand(this.name, command, timeoutSec);
  }

  /** `guest-fsfreeze-status`: 'thawed' or 'frozen'. */
  async freezeStatus(): Promise<string> {
    return String(await this.agent({ execute: 'guest-fsfreeze-status' }));
  }

  /** Runs a program in the guest through the agent (guest-exec) and waits (bounded) for it to exit. */
  async exec(argv: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
    const [cmd, ...args] = argv;
    const r = (await this.agent({ execute: 'guest-exec', arguments: { path: cmd, arg: args, 'capture-output': true } })) as { pid: number };
    const t0 = Date.now();
    while (Date.now() - t0 < timeoutMs) {
      const s = (await this.agent({ execute: 'guest-exec-status', arguments: { pid: r.pid } })) as {
        exited: boolean;
        exitcode?: number;
        signal?: number;
        'out-data'?: string;
        'err-data'?: string;
      };
      if (s.exited) {
        return {
          code: s.exitcode ?? 128 + (s.signal ?? 0),
          stdout: Buffer.from(s['out-data'] ?? '', 'base64').toString('utf8'),
          stderr: Buffer.from(s['err-data'] ?? '', 'base64').toString('utf8'),
        };
      }
      await sleep(250);
    }
    throw new Error(`${argv.join(' ')} did not finish in guest ${this.name} within ${Math.round(timeoutMs / 1000)} s`);
  }

  /** Runs a shell command in the guest; throws when it fails. */
  async sh(script: string, timeoutMs?: number): Promise<string> {
    const r = await this.exec(['/bin/sh', '-c', script], timeoutMs);
    if (r.code !== 0) throw new Error(`guest ${this.name}: \`${script}\` exited ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** A file's content, read in the guest through the agent. */
  async readFile(file: string): Promise<string> {
    const h = (await this.agent({ execute: 'guest-file-open', arguments: { path: file, mode: 'r' } })) as number;
    try {
      let out = '';
      for (;;) {
        const c = (await this.agent({ execute: 'guest-file-read', arguments: { handle: h, count: 1 << 20 } })) as { 'buf-b64': string; eof: boolean };
        out += Buffer.from(c['buf-b64'], 'base64').toString('utf8');
        if (c.eof) return out;
      }
    } finally {
      await this.agent({ execute: 'guest-file-close', arguments: { handle: h } }).catch(() => undefined);
    }
  }

  /** The counter log's numbers as the guest sees them now (complete lines only). */
  async counter(): Promise<number[]> {
    return parseCounter(await this.readFile(COUNTER_LOG));
  }

  /** Waits (bounded) until the guest's counter passes `value`. */
  async counterPast(value: number, timeoutMs = 60_000): Promise<number[]> {
    const t0 = Date.now();
    for (;;) {
      const c = await this.counter();
      if ((c.at(-1) ?? 0) > value) return c;
      if (Date.now() - t0 > timeoutMs)
        throw new Error(`the counter of guest ${this.name} stayed at ${c.at(-1) ?? 'nothing'} for ${Math.round(timeoutMs / 1000)} s`);
      await sleep(500);
    }
  }

  async remove(): Promise<void> {
    await removeDomain(this.virsh, this.name);
    await rm(this.dir, { recursive: true, force: true });
    live.delete(this);
  }
}

export const COUNTER_LOG = '/var/log/clonebox-counter.log';

/** Complete lines of a counter log as numbers (a torn last line is left out). */
export function parseCounter(text: string): number[] {
  const lines = text.split('\n');
  lines.pop(); // after the last newline: empty, or a line the snapshot caught half-written
  return lines.map((l) => {
    if (!/^\d+$/.test(l)) throw new Error(`counter log line ${JSON.stringify(l)} is not a number`);
    return Number(l);
  });
}

const live = new Set<TestGuest>();

/** Removes every guest this process defined (afterAll; also after failures). */
export async function removeAllGuests(): Promise<void> {
  for (const g of [...live]) await g.remove();
}
