/**
 * Talking to libvirt through `virsh -c URI` (no native binding): one execFile per call, each bounded by a
 * timeout, each failure mapped to a CloneboxError with a stable code and a one-line message that names
 * the domain.
 *
 * Codes:
 *   LIBVIRT_UNAVAILABLE      virsh is not installed, or the daemon at URI does not answer / refuses us
 *   DOMAIN_NOT_FOUND         no domain of that name on that connection
 *   DOMAIN_NOT_RUNNING       the operation needs a running domain
 *   DOMAIN_RUNNING           the operation needs a stopped domain
 *   GUEST_AGENT_UNAVAILABLE  no guest agent channel, or no agent answering on it
 *   LIBVIRT_TIMEOUT          virsh did not finish in time (it is killed; block jobs are aborted)
 *   LIBVIRT_ERROR            anything else, with libvirt's own reason
 *
 * virsh always runs with LC_ALL=C so that its messages (which the mapping reads) are in English.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CloneboxError } from '../../errors.js';
import { buildSnapshotXml, parseDomainXml, type SnapshotDiskSpec } from './domain-xml.js';

export const DEFAULT_URI = 'qemu:///system';

/** Default bounds, in milliseconds. Memory state and block jobs scale with RAM and disk data. */
const TIMEOUTS = {
  default: 30_000,
  start: 90_000,
  shutdown: 60_000,
  memory: 600_000,
  blockjob: 3_600_000,
} as const;

export type DomainState = 'running' | 'idle' | 'paused' | 'in shutdown' | 'shut off' | 'crashed' | 'pmsuspended' | 'unknown';

export interface VirshOptions {
  uri?: string;
  /** The virsh binary (default: `virsh` on PATH, then /usr/bin/virsh). */
  binary?: string;
  /** Default timeout per call (ms). */
  timeoutMs?: number;
}

export interface RunOptions {
  /** The domain the call is about: named in error messages. */
  domain?: string;
  timeoutMs?: number;
  /** What the call does, for the error message ("cannot start domain"). */
  what?: string;
  /** virsh -q (default true): no informational messages, no table headers. */
  quiet?: boolean;
}

export interface BlockListEntry {
  type: string;
  device: string;
  target: string;
  /** Null for an empty drive (`-` in virsh's table). */
  source: string | null;
}

export interface SnapshotCreateOptions {
  /** Snapshot name (libvirt-side; with noMetadata it is only used in messages). */
  name: string;
  description?: string;
  disks: SnapshotDiskSpec[];
  /** Save the memory state to this file (a libvirt save image); the domain must be running. */
  memoryFile?: string;
  /** Keep running while memory is saved (`--live`); default pauses the guest for a consistent image. */
  live?: boolean;
  /** Freeze guest filesystems through the guest agent. See createSnapshot for the fallback. */
  quiesce?: boolean;
  /** Overlay files already exist (made by clonebox with relative backing names); default true. */
  reuseExternal?: boolean;
  /** Default true: libvirt keeps no snapshot metadata (see docs/libvirt.md, "Metadata"). */
  noMetadata?: boolean;
  timeoutMs?: number;
}

export interface SnapshotCreateResult {
  quiesced: boolean;
  warnings: string[];
  seconds: number;
}

export type AgentStatus = 'none' | 'disconnected' | 'connected';

/** The error lines virsh printed ("error: " stripped), in order. */
function errorLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .map((l) => l.replace(/^error:\s*/, ''));
}

/**
 * The line that says why. virsh prints a generic line first ("Failed to start domain 'x'", "failed to get
 * domain 'x'") and libvirt's reason after it; we report the reason, or the first line when there is only one.
 */
export function reasonOf(stderr: string): string {
  const lines = errorLines(stderr);
  if (lines.length === 0) return 'virsh failed without a message';
  const generic = /^(failed to|could not|unable to) /i;
  const specific = lines.find((l, i) => i > 0 && !generic.test(l));
  const first = lines[0]!;
  return (generic.test(first) && specific ? specific : first).replace(/\s+/g, ' ');
}

const UNAVAILABLE = [
  /failed to connect to the hypervisor/i,
  /failed to connect socket/i,
  /no connection driver available/i,
  /cannot recv data/i,
  /authentication (failed|unavailable)/i,
  /End of file while reading data/i,
  /Cannot write data: Broken pipe/i,
];

/** Maps a virsh failure to a coded error. Exported for unit tests. */
export function mapVirshError(stderr: string, ctx: { uri: string; domain?: string; what: string }): CloneboxError {
  const all = errorLines(stderr).join('\n');
  const reason = reasonOf(stderr);
  const dom = ctx.domain === undefined ? `connection ${ctx.uri}` : `domain ${ctx.domain}`;
  const opts = { cause: new Error(stderr.trim()) };
  if (UNAVAILABLE.some((re) => re.test(all))) {
    return new CloneboxError('LIBVIRT_UNAVAILABLE', `libvirt is not reachable at ${ctx.uri} (${reason}), ${dom}`, {
      ...opts,
      hint: 'start the daemon (scripts/setup-libvirt.sh sets it up without systemd), or pick another --connect URI',
    });
  }
  if (/Domain not found|no domain with matching (name|uuid)|^failed to get domain /im.test(all)) {
    return new CloneboxError('DOMAIN_NOT_FOUND', `no such libvirt domain at ${ctx.uri}, ${ctx.domain ?? '?'}`, {
      ...opts,
      hint: `see \`virsh -c ${ctx.uri} list --all\``,
    });
  }
  if (/guest agent is not (configured|connected|responding|available)|Guest agent is not responding|QEMU guest agent is not/i.test(all)) {
    return new CloneboxError('GUEST_AGENT_UNAVAILABLE', `${ctx.what}: no guest agent answers (${reason}), ${dom}`, opts);
  }
  if (/domain is not running|domain is not active/i.test(all)) {
    return new CloneboxError('DOMAIN_NOT_RUNNING', `${ctx.what}: the domain is not running, ${dom}`, opts);
  }
  if (/domain is already (running|active)|domain '.*' is already active/i.test(all)) {
    return new CloneboxError('DOMAIN_RUNNING', `${ctx.what}: the domain is running, ${dom}`, opts);
  }
  return new CloneboxError('LIBVIRT_ERROR', `${ctx.what}: ${reason}, ${dom}`, opts);
}

export class Virsh {
  readonly uri: string;
  private readonly binary: string;
  private readonly timeoutMs: number;

  constructor(opts: VirshOptions = {}) {
    this.uri = opts.uri ?? DEFAULT_URI;
    this.binary = opts.binary ?? 'virsh';
    this.timeoutMs = opts.timeoutMs ?? TIMEOUTS.default;
  }

  /** Runs `virsh -q -c URI ARGS...` and returns stdout; failures become coded errors (see the top). */
  run(args: string[], opts: RunOptions = {}): Promise<string> {
    const what = opts.what ?? `virsh ${args[0] ?? ''} failed`;
    const timeout = opts.timeoutMs ?? this.timeoutMs;
    const ctx = { uri: this.uri, what, ...(opts.domain === undefined ? {} : { domain: opts.domain }) };
    return new Promise((resolve, reject) => {
      execFile(
        this.binary,
        [...(opts.quiet === false ? [] : ['-q']), '-c', this.uri, ...args],
        {
          timeout,
          killSignal: 'SIGKILL',
          maxBuffer: 64 * 1024 * 1024,
          encoding: 'utf8',
          env: { ...process.env, LC_ALL: 'C', LANG: 'C', PATH: `${process.env.PATH ?? ''}:/usr/bin:/usr/sbin:/bin:/sbin` },
        },
        (err, stdout, stderr) => {
          if (!err) return resolve(stdout);
          const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
          const dom = opts.domain === undefined ? `connection ${this.uri}` : `domain ${opts.domain}`;
          if (e.code === 'ENOENT') {
            return reject(
              new CloneboxError('LIBVIRT_UNAVAILABLE', `virsh is not installed (${this.binary} not found), ${dom}`, {
                cause: err,
                hint: 'install libvirt-clients, or run scripts/setup-libvirt.sh',
              }),
            );
          }
          if (e.killed || e.signal === 'SIGKILL') {
            return reject(
              new CloneboxError('LIBVIRT_TIMEOUT', `${what}: virsh ${args[0] ?? ''} did not finish within ${Math.round(timeout / 1000)}s, ${dom}`, {
                cause: err,
              }),
            );
          }
          reject(mapVirshError(stderr || e.message, ctx));
        },
      );
    });
  }

  /**
   * Runs several commands in ONE virsh process, one connection (`virsh "cmd1 ; cmd2 ; ..."`): no
   * process start or connection between them, which on a loaded machine costs more than libvirt's
   * own work. virsh goes on after a command that fails, so the later ones (a resume after a failed
   * snapshot) always run; the caller checks what took effect. `xmls`: documents written to private
   * temporary files first, named in the commands as `@xml0`, `@xml1`... A command `['mark', NAME]`
   * is virsh's `echo NAME`: virsh writes each command's output as it finishes it, so the time the
   * line arrives says when the commands before it were done (`marks`, performance.now() values).
   * Returns virsh's stderr (the failures' messages). Rejects only when virsh could not run or timed out.
   */
  async batch(commands: string[][], o: { xmls?: string[]; timeoutMs?: number } = {}): Promise<{ stderr: string; marks: Map<string, number> }> {
    const dir = await mkdtemp(path.join(tmpdir(), 'clonebox-virsh-'));
    try {
      const files: string[] = [];
      for (const [i, xml] of (o.xmls ?? []).entries()) {
        const f = path.join(dir, `doc${i}.xml`);
        await writeFile(f, xml, { mode: 0o600 });
        files.push(f);
      }
      const names = new Set(commands.filter((c) => c[0] === 'mark').map((c) => `clonebox-mark-${c[1]}`));
      // virsh's own parser: double quotes with backslash escapes keep a word whole.
      const word = (w: string) => `"${w.replace(/(["\\])/g, '\\$1')}"`;
      const line = commands
        .map((c) => (c[0] === 'mark' ? ['echo', `clonebox-mark-${c[1]}`] : c))
        .map((c) =>
          c
            .map((w) => (/^@xml\d+$/.test(w) ? files[Number(w.slice(4))]! : w))
            .map(word)
            .join(' '),
        )
        .join(' ; ');
      const timeout = o.timeoutMs ?? this.timeoutMs;
      return await new Promise((resolve, reject) => {
        // Not -q: in quiet mode virsh's echo prints nothing.
        const child = spawn(this.binary, ['-c', this.uri, line], {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, LC_ALL: 'C', LANG: 'C', PATH: `${process.env.PATH ?? ''}:/usr/bin:/usr/sbin:/bin:/sbin` },
        });
        const marks = new Map<string, number>();
        let out = '';
        let stderr = '';
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, timeout);
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          const at = performance.now();
          out += chunk;
          const lines = out.split('\n');
          out = lines.pop() ?? '';
          for (const l of lines) if (names.has(l.trim())) marks.set(l.trim().slice('clonebox-mark-'.length), at);
        });
        child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
          if (stderr.length < 1 << 20) stderr += chunk;
        });
        child.on('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          reject(
            err.code === 'ENOENT'
              ? new CloneboxError('LIBVIRT_UNAVAILABLE', `virsh is not installed (${this.binary} not found), connection ${this.uri}`, { cause: err })
              : err,
          );
        });
        child.on('close', () => {
          clearTimeout(timer);
          if (timedOut) {
            reject(
              new CloneboxError(
                'LIBVIRT_TIMEOUT',
                `virsh did not finish ${commands.map((c) => c[0]).join(', ')} within ${Math.round(timeout / 1000)}s, connection ${this.uri}`,
              ),
            );
            return;
          }
          resolve({ stderr, marks });
        });
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Runs virsh with an XML document passed as a private temporary file (virsh reads XML from files). */
  private async withXmlFile<T>(xml: string, fn: (file: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(path.join(tmpdir(), 'clonebox-virsh-'));
    const file = path.join(dir, 'doc.xml');
    try {
      await writeFile(file, xml, { mode: 0o600 });
      return await fn(file);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  // --- connection ----------------------------------------------------------------------------------

  /** Resolves when the daemon answers; throws LIBVIRT_UNAVAILABLE otherwise. */
  async ping(timeoutMs = 10_000): Promise<void> {
    await this.run(['uri'], { timeoutMs, what: 'cannot reach libvirt' });
  }

  /** `{library, hypervisor}` versions as virsh prints them ("9.0.0", "QEMU 7.2.22"). */
  async version(): Promise<{ library: string | null; hypervisor: string | null }> {
    const out = await this.run(['version'], { what: 'cannot read libvirt version' });
    return {
      library: /Using library: libvirt (\S+)/.exec(out)?.[1] ?? null,
      hypervisor: /Running hypervisor: (.+)/.exec(out)?.[1]?.trim() ?? null,
    };
  }

  // --- domains -------------------------------------------------------------------------------------

  async exists(domain: string): Promise<boolean> {
    try {
      await this.run(['domuuid', domain], { domain, what: 'cannot look up domain' });
      return true;
    } catch (err) {
      if (err instanceof CloneboxError && err.code === 'DOMAIN_NOT_FOUND') return false;
      throw err;
    }
  }

  async state(domain: string): Promise<DomainState> {
    const out = (await this.run(['domstate', domain], { domain, what: 'cannot read domain state' })).trim();
    const known: DomainState[] = ['running', 'idle', 'paused', 'in shutdown', 'shut off', 'crashed', 'pmsuspended'];
    return (known as string[]).includes(out) ? (out as DomainState) : 'unknown';
  }

  /** True when a qemu process exists for the domain (running, paused, ...). */
  async isActive(domain: string): Promise<boolean> {
    const s = await this.state(domain);
    return s !== 'shut off' && s !== 'crashed';
  }

  /** `dominfo` as a key → value map ("Persistent" → "yes", "Managed save" → "no", ...). */
  async info(domain: string): Promise<Record<string, string>> {
    const out = await this.run(['dominfo', domain], { domain, what: 'cannot read domain info' });
    const info: Record<string, string> = {};
    for (const line of out.split('\n')) {
      const m = /^([^:]+):\s*(.*)$/.exec(line);
      if (m) info[m[1]!.trim()] = m[2]!.trim();
    }
    return info;
  }

  /**
   * The domain's current memory in bytes (dominfo's "Used memory", in KiB): what a full snapshot
   * saves at most. Null when libvirt does not say.
   */
  async memoryBytes(domain: string): Promise<number | null> {
    const m = /^(\d{1,15})\s*KiB$/i.exec((await this.info(domain))['Used memory'] ?? '');
    return m ? Number(m[1]) * 1024 : null;
  }

  async hasManagedSave(domain: string): Promise<boolean> {
    return (await this.info(domain))['Managed save'] === 'yes';
  }

  async isPersistent(domain: string): Promise<boolean> {
    return (await this.info(domain)).Persistent === 'yes';
  }

  /** Domain XML: the live definition, or with `inactive` the persistent one (what the next start uses). */
  async dumpXml(domain: string, opts: { inactive?: boolean; secure?: boolean } = {}): Promise<string> {
    const args = ['dumpxml', domain];
    if (opts.inactive) args.push('--inactive');
    if (opts.secure) args.push('--security-info');
    return this.run(args, { domain, what: 'cannot read domain XML' });
  }

  /** Defines (or redefines) a persistent domain from XML; returns the domain name libvirt reports. */
  async define(xml: string): Promise<string> {
    const name = parseDomainXml(xml).name;
    await this.withXmlFile(xml, (file) => this.run(['define', '--validate', file], { ...(name ? { domain: name } : {}), what: 'cannot define domain' }));
    return name ?? '';
  }

  async undefine(domain: string, opts: { managedSave?: boolean; snapshotsMetadata?: boolean; nvram?: boolean } = {}): Promise<void> {
    const args = ['undefine', domain];
    if (opts.managedSave) args.push('--managed-save');
    if (opts.snapshotsMetadata) args.push('--snapshots-metadata');
    if (opts.nvram) args.push('--nvram');
    await this.run(args, { domain, what: 'cannot undefine domain' });
  }

  async start(domain: string, opts: { paused?: boolean; forceBoot?: boolean } = {}): Promise<void> {
    const args = ['start', domain];
    if (opts.paused) args.push('--paused');
    if (opts.forceBoot) args.push('--force-boot');
    await this.run(args, { domain, timeoutMs: TIMEOUTS.start, what: 'cannot start domain' });
  }

  /** Hard power-off. `graceful` asks libvirt to flush qemu's caches first (SIGTERM, not SIGKILL). */
  async destroy(domain: string, opts: { graceful?: boolean } = {}): Promise<void> {
    const args = ['destroy', domain];
    if (opts.graceful) args.push('--graceful');
    await this.run(args, { domain, what: 'cannot stop domain' });
  }

  /**
   * Asks the guest to shut down (ACPI) and waits until the domain is off, at most `timeoutMs`.
   * A guest that ignores ACPI (or has no OS) raises LIBVIRT_TIMEOUT unless `force`, which then destroys it.
   */
  async shutdown(domain: string, opts: { timeoutMs?: number; force?: boolean } = {}): Promise<'shutdown' | 'destroyed'> {
    const timeout = opts.timeoutMs ?? TIMEOUTS.shutdown;
    try {
      await this.run(['shutdown', domain], { domain, what: 'cannot shut down domain' });
    } catch (err) {
      if (!(err instanceof CloneboxError && err.code === 'DOMAIN_NOT_RUNNING')) throw err;
      return 'shutdown';
    }
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
      if (!(await this.isActive(domain))) return 'shutdown';
      await sleep(250);
    }
    if (opts.force) {
      await this.destroy(domain);
      return 'destroyed';
    }
    throw new CloneboxError('LIBVIRT_TIMEOUT', `the guest did not shut down within ${Math.round(timeout / 1000)}s, domain ${domain}`, {
      hint: 'stop it with `virsh destroy`, or retry when the guest is idle',
    });
  }

  /** Pauses the domain's vCPUs (`virsh suspend`): the guest stops where it is, its disks stay open. */
  async suspend(domain: string): Promise<void> {
    await this.run(['suspend', domain], { domain, what: 'cannot pause domain' });
  }

  /** Lets a paused domain run again (`virsh resume`). */
  async resume(domain: string): Promise<void> {
    await this.run(['resume', domain], { domain, what: 'cannot resume domain' });
  }

  /** Stops the domain whatever it is doing; no-op when already off. */
  async ensureStopped(domain: string): Promise<boolean> {
    if (!(await this.isActive(domain))) return false;
    try {
      await this.destroy(domain);
    } catch (err) {
      if (!(err instanceof CloneboxError && err.code === 'DOMAIN_NOT_RUNNING')) throw err;
    }
    return true;
  }

  /**
   * `virsh domblklist --details`, parsed by the header's column positions, so that a source path with
   * spaces is read whole (Source is the last column). `inactive`: the persistent definition.
   */
  async domblklist(domain: string, opts: { inactive?: boolean } = {}): Promise<BlockListEntry[]> {
    const args = ['domblklist', domain, '--details'];
    if (opts.inactive) args.push('--inactive');
    // -q would drop the header that gives the column positions.
    const out = await this.run(args, { domain, what: 'cannot list domain disks', quiet: false });
    return parseDomblklist(out);
  }

  // --- snapshots -----------------------------------------------------------------------------------

  /**
   * External snapshot of the listed disks (all at once with --atomic), with the memory state when
   * `memoryFile` is set. By default with --no-metadata and --reuse-external: clonebox creates the overlays
   * itself (relative backing names, so layers can move together) and owns all snapshot metadata.
   *
   * Quiesce is attempted, never required: if the domain has no guest-agent channel, or the agent is not
   * connected, or the quiesced attempt fails for any reason (no answer, a freeze hook that exits non-zero,
   * a filesystem that cannot freeze), the snapshot is taken without --quiesce and one warning names the
   * cause (crash-consistent instead of filesystem-consistent). --atomic guarantees that the failed attempt
   * changed no disk, and the guest is told to thaw in case the failure came after a freeze. Only when the
   * plain attempt fails too is the snapshot refused, with that attempt's error.
   */
  async createSnapshot(domain: string, o: SnapshotCreateOptions): Promise<SnapshotCreateResult> {
    const t0 = Date.now();
    const warnings: string[] = [];
    const xml = buildSnapshotXml({
      name: o.name,
      ...(o.description === undefined ? {} : { description: o.description }),
      disks: o.disks,
      ...(o.memoryFile === undefined ? {} : { memoryFile: o.memoryFile }),
    });
    const flags = ['--atomic'];
    if (o.memoryFile === undefined) flags.push('--disk-only');
    else if (o.live) flags.push('--live');
    if (o.noMetadata !== false) flags.push('--no-metadata');
    if (o.reuseExternal !== false) flags.push('--reuse-external');
    const timeoutMs = o.timeoutMs ?? (o.memoryFile === undefined ? TIMEOUTS.default : TIMEOUTS.memory);
    const what = o.memoryFile === undefined ? 'cannot create disk snapshot' : 'cannot create memory snapshot';
    const attempt = (quiesce: boolean) =>
      this.withXmlFile(xml, (file) =>
        this.run(['snapshot-create', domain, '--xmlfile', file, ...flags, ...(quiesce ? ['--quiesce'] : [])], { domain, timeoutMs, what }),
      );

    let quiesced = false;
    if (o.quiesce) {
      const agent = await this.agentStatus(domain);
      if (agent !== 'connected') {
        warnings.push(
          agent === 'none'
            ? `domain ${domain} has no guest agent channel; snapshot ${o.name} is crash-consistent (not quiesced)`
            : `the guest agent of domain ${domain} is not connected; snapshot ${o.name} is crash-consistent (not quiesced)`,
        );
      } else {
        try {
          await attempt(true);
          quiesced = true;
        } catch (err) {
          // A timeout may leave libvirt still working on the attempt: a second one would race it.
          if (!(err instanceof CloneboxError) || err.code === 'LIBVIRT_TIMEOUT' || err.code === 'LIBVIRT_UNAVAILABLE') throw err;
          await this.fsThaw(domain).catch(() => undefined);
          const why = err.code === 'GUEST_AGENT_UNAVAILABLE' ? 'the guest agent did not answer' : 'the guest could not be quiesced';
          warnings.push(
            `${why} (${reasonOf(err.cause instanceof Error ? err.cause.message : err.message)}); snapshot ${o.name} of domain ${domain} is crash-consistent, not quiesced`,
          );
        }
      }
    }
    if (!quiesced) await attempt(false);
    return { quiesced, warnings, seconds: (Date.now() - t0) / 1000 };
  }

  /** Names of the snapshots libvirt has metadata for. */
  async snapshotList(domain: string): Promise<string[]> {
    const out = await this.run(['snapshot-list', domain, '--name'], { domain, what: 'cannot list libvirt snapshots' });
    return out
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.length > 0);
  }

  /** Drops libvirt's metadata for a snapshot without touching any file (for stale entries). */
  async snapshotDeleteMetadata(domain: string, name: string): Promise<void> {
    await this.run(['snapshot-delete', domain, '--snapshotname', name, '--metadata'], { domain, what: `cannot delete libvirt snapshot metadata ${name}` });
  }

  // --- block jobs ----------------------------------------------------------------------------------

  /**
   * Merges layers of a running domain's disk. With `active` (top = the current image) the data goes down
   * into `base` and the domain pivots to it (--active --pivot); otherwise `top` (and everything between it
   * and `base`) is merged into `base` and the image above `top` is re-pointed at `base`. Waits at most
   * `timeoutMs`: on timeout virsh aborts the job (nothing changes) and LIBVIRT_TIMEOUT is raised.
   * `keepRelative` keeps relative backing names in rewritten headers.
   */
  async blockCommit(
    domain: string,
    target: string,
    o: { top?: string; base?: string; active?: boolean; keepRelative?: boolean; timeoutMs?: number; bandwidthMiB?: number } = {},
  ): Promise<{ seconds: number }> {
    const t0 = Date.now();
    const timeoutMs = o.timeoutMs ?? TIMEOUTS.blockjob;
    const args = ['blockcommit', domain, target, '--wait', '--timeout', String(Math.max(1, Math.floor(timeoutMs / 1000)))];
    if (o.active) args.push('--active', '--pivot');
    if (o.top !== undefined) args.push('--top', o.top);
    if (o.base !== undefined) args.push('--base', o.base);
    else if (!o.active && o.top === undefined) args.push('--shallow');
    if (o.keepRelative) args.push('--keep-relative');
    if (o.bandwidthMiB !== undefined) args.push('--bandwidth', String(o.bandwidthMiB));
    try {
      const out = await this.run(args, { domain, timeoutMs: timeoutMs + 30_000, what: `cannot merge layers of disk ${target}` });
      if (/timed out|aborted/i.test(out)) {
        throw new CloneboxError(
          'LIBVIRT_TIMEOUT',
          `merging layers of disk ${target} did not finish within ${Math.round(timeoutMs / 1000)}s and was aborted, domain ${domain}`,
        );
      }
    } catch (err) {
      // Never leave a job behind: a pending commit blocks every later block operation on the disk.
      await this.blockJobAbort(domain, target).catch(() => undefined);
      throw err;
    }
    return { seconds: (Date.now() - t0) / 1000 };
  }

  /**
   * Block pull (stream) on a running domain's disk: copies into the current image the data of every layer
   * between it and `base` (all layers when `base` is omitted), then re-points the current image at `base`
   * (or makes it self-contained). The current image keeps its path and content; the layers above `base`
   * drop out of the chain and can be deleted. Bounded like blockCommit.
   */
  async blockPull(
    domain: string,
    target: string,
    o: { base?: string; keepRelative?: boolean; timeoutMs?: number; bandwidthMiB?: number } = {},
  ): Promise<{ seconds: number }> {
    const t0 = Date.now();
    const timeoutMs = o.timeoutMs ?? TIMEOUTS.blockjob;
    const args = ['blockpull', domain, target, '--wait', '--timeout', String(Math.max(1, Math.floor(timeoutMs / 1000)))];
    if (o.base !== undefined) args.push('--base', o.base);
    // libvirt: "flag VIR_DOMAIN_BLOCK_REBASE_RELATIVE is valid only with non-null base"
    if (o.keepRelative && o.base !== undefined) args.push('--keep-relative');
    if (o.bandwidthMiB !== undefined) args.push('--bandwidth', String(o.bandwidthMiB));
    try {
      const out = await this.run(args, { domain, timeoutMs: timeoutMs + 30_000, what: `cannot pull layers into disk ${target}` });
      if (/timed out|aborted/i.test(out)) {
        throw new CloneboxError(
          'LIBVIRT_TIMEOUT',
          `pulling layers into disk ${target} did not finish within ${Math.round(timeoutMs / 1000)}s and was aborted, domain ${domain}`,
        );
      }
    } catch (err) {
      await this.blockJobAbort(domain, target).catch(() => undefined);
      throw err;
    }
    return { seconds: (Date.now() - t0) / 1000 };
  }

  /** The disk's current block job, or null. */
  async blockJobInfo(domain: string, target: string): Promise<{ type: string; percent: number } | null> {
    const out = await this.run(['blockjob', domain, target, '--info'], { domain, what: `cannot read block job of disk ${target}` });
    if (out.trim() === '' || /No current block job/i.test(out)) return null; // -q prints nothing
    const m = /^(.*?):\s*\[\s*([\d.]+)\s*%\]/m.exec(out.trim());
    return { type: m?.[1]?.trim() ?? out.trim(), percent: m ? Number(m[2]) : 0 };
  }

  async blockJobAbort(domain: string, target: string): Promise<void> {
    if ((await this.blockJobInfo(domain, target)) === null) return;
    await this.run(['blockjob', domain, target, '--abort', '--async'], { domain, what: `cannot abort block job of disk ${target}` });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && (await this.blockJobInfo(domain, target)) !== null) await sleep(200);
  }

  // --- memory state --------------------------------------------------------------------------------

  /** Saves memory to `file` and stops the domain (a libvirt save image, like a memory snapshot's). */
  async save(domain: string, file: string, o: { xml?: string; running?: boolean; paused?: boolean } = {}): Promise<void> {
    const flags = [...(o.running ? ['--running'] : []), ...(o.paused ? ['--paused'] : [])];
    const go = (xmlFile?: string) =>
      this.run(['save', domain, file, ...(xmlFile ? ['--xml', xmlFile] : []), ...flags], {
        domain,
        timeoutMs: TIMEOUTS.memory,
        what: 'cannot save memory state',
      });
    if (o.xml === undefined) await go();
    else await this.withXmlFile(o.xml, go);
  }

  /**
   * Starts a domain from a save image (a `virsh save` file or an external memory snapshot's memory
   * file). `xml` replaces the definition stored in the image; it must describe the same machine, but may
   * point the disks elsewhere (how clonebox restores a full snapshot onto new overlays). The image file is
   * only read, so one memory snapshot can be restored many times.
   */
  async restore(file: string, o: { xml?: string; running?: boolean; paused?: boolean; domain?: string } = {}): Promise<void> {
    const flags = [...(o.running ? ['--running'] : []), ...(o.paused ? ['--paused'] : [])];
    const what = 'cannot restore memory state';
    const ctx = { timeoutMs: TIMEOUTS.memory, what, ...(o.domain === undefined ? {} : { domain: o.domain }) };
    if (o.xml === undefined) await this.run(['restore', file, ...flags], ctx);
    else await this.withXmlFile(o.xml, (x) => this.run(['restore', file, '--xml', x, ...flags], ctx));
  }

  /** The domain XML stored in a save image / memory snapshot file. */
  async saveImageXml(file: string, domain?: string): Promise<string> {
    return this.run(['save-image-dumpxml', file, '--security-info'], {
      what: `cannot read the save image ${file}`,
      ...(domain === undefined ? {} : { domain }),
    });
  }

  /** Replaces the domain XML stored in a save image (same machine; disks may move). */
  async saveImageDefine(file: string, xml: string, o: { running?: boolean; paused?: boolean; domain?: string } = {}): Promise<void> {
    const flags = [...(o.running ? ['--running'] : []), ...(o.paused ? ['--paused'] : [])];
    await this.withXmlFile(xml, (x) =>
      this.run(['save-image-define', file, x, ...flags], {
        what: `cannot update the save image ${file}`,
        ...(o.domain === undefined ? {} : { domain: o.domain }),
      }),
    );
  }

  /** libvirt's managed save: memory to libvirt's own file; the next `start` resumes from it. */
  async managedSave(domain: string, o: { running?: boolean; paused?: boolean } = {}): Promise<void> {
    const flags = [...(o.running ? ['--running'] : []), ...(o.paused ? ['--paused'] : [])];
    await this.run(['managedsave', domain, ...flags], { domain, timeoutMs: TIMEOUTS.memory, what: 'cannot save memory state (managed save)' });
  }

  async managedSaveRemove(domain: string): Promise<void> {
    await this.run(['managedsave-remove', domain], { domain, what: 'cannot remove the managed save image' });
  }

  async managedSaveXml(domain: string): Promise<string> {
    return this.run(['managedsave-dumpxml', domain, '--security-info'], { domain, what: 'cannot read the managed save image' });
  }

  /**
   * Replaces the XML inside the domain's managed save image. Needed after any offline disk change of a
   * domain that has one: libvirt 9.0 lets an offline snapshot proceed without touching it, and the next
   * start would resume on the old (now sealed) image.
   */
  async managedSaveDefine(domain: string, xml: string, o: { running?: boolean; paused?: boolean } = {}): Promise<void> {
    const flags = [...(o.running ? ['--running'] : []), ...(o.paused ? ['--paused'] : [])];
    await this.withXmlFile(xml, (x) => this.run(['managedsave-define', domain, x, ...flags], { domain, what: 'cannot update the managed save image' }));
  }

  // --- guest agent ---------------------------------------------------------------------------------

  /**
   * Whether a guest agent can be used: `none` when the domain has no org.qemu.guest_agent.0 channel,
   * `disconnected` when it has one but no agent is listening (libvirt tracks this on running domains),
   * `connected` otherwise. A stopped domain reports `none` or `disconnected`.
   */
  async agentStatus(domain: string): Promise<AgentStatus> {
    const active = await this.isActive(domain);
    const ch = parseDomainXml(await this.dumpXml(domain, active ? {} : { inactive: true })).guestAgentChannel();
    if (!ch) return 'none';
    if (!active) return 'disconnected';
    return ch.state === 'connected' ? 'connected' : 'disconnected';
  }

  /** Has the guest agent freeze the guest's filesystems (flushed, no more writes until fsThaw). */
  async fsFreeze(domain: string): Promise<void> {
    await this.run(['domfsfreeze', domain], { domain, what: 'cannot freeze guest filesystems' });
  }

  /**
   * Tells the guest agent to thaw the guest's filesystems (after a freeze that may have half happened);
   * returns how many it thawed. Fails when no agent answers.
   */
  async fsThaw(domain: string): Promise<number> {
    const out = await this.run(['domfsthaw', domain], { domain, what: 'cannot thaw guest filesystems', quiet: false });
    return Number(/(\d+)/.exec(out)?.[1] ?? 0);
  }

  /** Sends one command to the guest agent and returns its `return` value (JSON-decoded). */
  async agentCommand(domain: string, command: Record<string, unknown>, timeoutSec = 10): Promise<unknown> {
    const out = await this.run(['qemu-agent-command', domain, JSON.stringify(command), '--timeout', String(timeoutSec)], {
      domain,
      timeoutMs: (timeoutSec + 10) * 1000,
      what: `guest agent command ${String(command.execute)} failed`,
    });
    return (JSON.parse(out) as { return?: unknown }).return;
  }

  /** Round trip to the guest agent; false when it does not answer within `timeoutSec`. */
  async agentPing(domain: string, timeoutSec = 5): Promise<boolean> {
    try {
      await this.run(['qemu-agent-command', domain, '{"execute":"guest-ping"}', '--timeout', String(timeoutSec)], {
        domain,
        timeoutMs: (timeoutSec + 10) * 1000,
        what: 'guest agent ping failed',
      });
      return true;
    } catch (err) {
      if (err instanceof CloneboxError && (err.code === 'GUEST_AGENT_UNAVAILABLE' || err.code === 'DOMAIN_NOT_RUNNING' || err.code === 'LIBVIRT_ERROR'))
        return false;
      throw err;
    }
  }

  // --- monitor (tests, diagnostics) ----------------------------------------------------------------

  /**
   * A human-monitor command in the domain's qemu. HMP reports its own errors as output, so output that
   * looks like an error is raised as LIBVIRT_ERROR.
   */
  async hmp(domain: string, command: string): Promise<string> {
    const out = await this.run(['qemu-monitor-command', domain, '--hmp', command], { domain, what: 'monitor command failed' });
    const first = out.trim().split('\n')[0] ?? '';
    if (/^(Error|error|Permission conflict|Device .* not found|Could not|Cannot|Unknown command)/.test(first) || /Pattern verification failed/.test(out)) {
      throw new CloneboxError('LIBVIRT_ERROR', `monitor command failed (${first.trim()}), domain ${domain}`);
    }
    return out;
  }

  /**
   * Writes into a running domain's disk as the guest would (through the device, into the active
   * overlay): qemu's built-in qemu-io on the device `alias` (from the live XML, e.g. virtio-disk0).
   */
  async guestWrite(domain: string, alias: string, io: string): Promise<void> {
    const dev = `/machine/peripheral/${alias}/virtio-backend`;
    await this.hmp(domain, `qemu-io -d ${dev} "${io.replace(/"/g, '')}"`);
    // qemu caches qcow2 metadata (L2 tables, refcounts): until it flushes, another reader of the file
    // (qemu-img -U, clonebox's own reader) may not see the write.
    await this.hmp(domain, `qemu-io -d ${dev} "flush"`);
  }

  /** Makes qemu write back its caches for a disk, so the image files read as the guest sees them. */
  async flushDisk(domain: string, alias: string): Promise<void> {
    await this.hmp(domain, `qemu-io -d /machine/peripheral/${alias}/virtio-backend "flush"`);
  }
}

export function parseDomblklist(out: string): BlockListEntry[] {
  const lines = out.split('\n');
  const hi = lines.findIndex((l) => /^\s*Type\s+Device\s+Target\s+Source\s*$/.test(l));
  if (hi < 0) {
    // Without --details or with an unexpected layout: Target and Source only.
    const th = lines.findIndex((l) => /^\s*Target\s+Source\s*$/.test(l));
    if (th < 0) return [];
    const srcCol = lines[th]!.indexOf('Source');
    return lines
      .slice(th + 2)
      .filter((l) => l.trim())
      .map((l) => {
        const src = l.slice(srcCol).trim();
        return { type: '', device: '', target: l.slice(0, srcCol).trim(), source: src === '-' ? null : src };
      });
  }
  const h = lines[hi]!;
  const cols = ['Device', 'Target', 'Source'].map((c) => h.indexOf(c));
  const [cDev, cTgt, cSrc] = cols as [number, number, number];
  const out2: BlockListEntry[] = [];
  for (const l of lines.slice(hi + 2)) {
    if (!l.trim()) continue;
    const src = l.slice(cSrc).trim();
    out2.push({
      type: l.slice(0, cDev).trim(),
      device: l.slice(cDev, cTgt).trim(),
      target: l.slice(cTgt, cSrc).trim(),
      source: src === '-' ? null : src,
    });
  }
  return out2;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
