/**
 * The library's entry: `Clonebox.open()` resolves the home and recovers interrupted operations, and
 * each namespace reaches one area of clonebox. Every method loads its implementation when first
 * called, so that opening (and the CLI's start-up) stays cheap.
 */
import { resolveHome, tightenHome } from '../store/home.js';
import { Bundles, Keys } from './bundles.js';
import { Config } from './config.js';
import { Demo } from './demo.js';
import { Dht } from './dht.js';
import { Events } from './events.js';
import { Groups } from './groups.js';
import { Images } from './images.js';
import { Schedule } from './schedule.js';
import { Session } from './session.js';
import { Snapshots } from './snapshots.js';
import { Sync } from './sync.js';
import { Teams } from './teams.js';
import type { OpenOptions, Warning } from './types.js';
import { Vms } from './vms.js';

export class Clonebox {
  readonly vms: Vms;
  readonly snapshots: Snapshots;
  readonly bundles: Bundles;
  readonly keys: Keys;
  readonly teams: Teams;
  readonly sync: Sync;
  readonly images: Images;
  readonly dht: Dht;
  readonly demo: Demo;
  readonly config: Config;
  readonly schedule: Schedule;
  readonly events: Events;
  readonly groups: Groups;

  private constructor(private readonly session: Session) {
    this.vms = new Vms(session);
    this.snapshots = new Snapshots(session);
    this.bundles = new Bundles(session);
    this.keys = new Keys(session);
    this.teams = new Teams(session);
    this.sync = new Sync(session);
    this.images = new Images(session);
    this.dht = new Dht(session);
    this.demo = new Demo(session);
    this.config = new Config(session);
    this.schedule = new Schedule(session);
    this.events = new Events(session);
    this.groups = new Groups(session);
  }

  /**
   * Opens a home ($CLONEBOX_HOME, else ~/.clonebox, unless `home` is given; it need not exist yet).
   * Imports and pulls of VMs that never came to exist, interrupted by a crash, are rolled back here;
   * each one cleaned up is a RECOVERED warning.
   */
  static async open(opts: OpenOptions = {}): Promise<Clonebox> {
    const session = new Session(resolveHome(opts.home), opts.onWarning);
    const loose = await tightenHome(session.home);
    if (loose) session.warn({ code: 'WARNING', message: loose });
    if (opts.recover !== false) {
      const { sweepInterrupted } = await import('../store/sweep.js');
      for (const message of await sweepInterrupted(session.home)) session.warn({ code: 'RECOVERED', message });
    }
    return new Clonebox(session);
  }

  /** The absolute path of the home. */
  get home(): string {
    return this.session.home.root;
  }

  /** Warnings no callback took (none when open() was given onWarning). */
  get warnings(): readonly Warning[] {
    return this.session.kept;
  }

  /** Aborts the operations still running, waits for them to undo their work, stops what they left running. Idempotent. */
  close(): Promise<void> {
    return this.session.close();
  }
}
