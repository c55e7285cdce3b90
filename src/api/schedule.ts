/**
 * `cb.schedule`: the scheduler of named policies (the work is in src/snapshots/scheduler.ts).
 * runDue() is one pass: `clonebox schedule run` calls it once, a long-running host (`clonebox serve`)
 * calls it every minute in-process; passes never overlap (a home-wide lock) and a pass killed at any
 * point leaves no duplicate and nothing half-written.
 */
import { nowIso } from '../clock.js';
import type { Session } from './session.js';
import type { LongOptions, ScheduleEntry, ScheduleInstallOptions, ScheduleInstallResult, ScheduleRunResult } from './types.js';

const UNIT = 'clonebox-schedule';

/** A systemd ExecStart word: quoted when it holds anything but safe characters. */
function shellWord(w: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `"${w.replace(/(["\\$`])/g, '\\$1')}"`;
}

export class Schedule {
  constructor(private readonly s: Session) {}

  /**
   * One pass: every due policy of every VM takes one snapshot (catch-up after downtime is one, not a
   * burst), then retention runs on every VM. Per-policy failures are in `failed` (and warnings); the
   * pass goes on. `ran` is false when another pass holds the lock.
   */
  runDue(opts: Omit<LongOptions, 'onProgress'> = {}): Promise<ScheduleRunResult> {
    return this.s.run(async () => {
      const [{ SnapshotManager }, { runPass }] = await Promise.all([import('../snapshots/manager.js'), import('../snapshots/scheduler.js')]);
      const r = await runPass(new SnapshotManager(this.s.home, this.s.warner(opts.onWarning, 'NOTICE')), { signal: this.s.signal(opts.signal) });
      const warn = this.s.warner(opts.onWarning);
      r.warnings.forEach(warn);
      for (const f of r.failed) warn(`scheduled snapshot of ${f.vm} (policy ${f.policy}) failed: ${f.error}`);
      const notice = this.s.warner(opts.onWarning, 'NOTICE');
      for (const p of r.pruned) notice(`retention removed ${p.snapshot} of ${p.vm} (${p.reason})`);
      return { at: r.at, ran: r.ran, taken: r.taken, pruned: r.pruned, failed: r.failed };
    });
  }

  /** Every named policy of every VM, with its last and next run. */
  list(): Promise<ScheduleEntry[]> {
    return this.s.run(async () => {
      const { scheduleStatus } = await import('../snapshots/scheduler.js');
      return (await scheduleStatus(this.s.home)).map((st) => ({
        vm: st.vm,
        ...(st.group !== null ? { group: st.group } : {}),
        policy: st.policy,
        when: st.named.when,
        timezone: st.named.timezone,
        last_run: st.last_run,
        next_run: st.next_run,
        due: st.due,
      }));
    });
  }

  /**
   * A systemd user service and timer that run `schedule run` every minute (Persistent: a run missed
   * while the machine was off happens at boot). With `write`, also writes them (atomically).
   */
  install(opts: ScheduleInstallOptions = {}): Promise<ScheduleInstallResult> {
    return this.s.run(async () => {
      const command = [...(opts.command ?? ['clonebox']), '--home', this.s.home.root, 'schedule', 'run'];
      const service = [
        '[Unit]',
        'Description=clonebox: scheduled VM snapshots and retention',
        '',
        '[Service]',
        'Type=oneshot',
        `ExecStart=${command.map(shellWord).join(' ')}`,
        '',
      ].join('\n');
      const timer = [
        '[Unit]',
        'Description=clonebox: run due snapshot policies every minute',
        '',
        '[Timer]',
        'OnCalendar=*-*-* *:*:00',
        'Persistent=true',
        `Unit=${UNIT}.service`,
        '',
        '[Install]',
        'WantedBy=timers.target',
        '',
      ].join('\n');
      let written: string[] | null = null;
      if (opts.write) {
        const [{ default: os }, { default: path }, { ensureDir, writeFileAtomic }] = await Promise.all([
          import('node:os'),
          import('node:path'),
          import('../fsutil.js'),
        ]);
        const dir = path.resolve(opts.dir ?? path.join(os.homedir(), '.config', 'systemd', 'user'));
        await ensureDir(dir);
        written = [path.join(dir, `${UNIT}.service`), path.join(dir, `${UNIT}.timer`)];
        await writeFileAtomic(written[0]!, service);
        await writeFileAtomic(written[1]!, timer);
      }
      return { service: { name: `${UNIT}.service`, text: service }, timer: { name: `${UNIT}.timer`, text: timer }, written };
    });
  }

  /** The time the library lives at: CLONEBOX_NOW when set, else the system clock (ISO-8601). */
  now(): string {
    return nowIso();
  }
}
