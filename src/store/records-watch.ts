/**
 * Change notification for a VM's records without a system call per question: an inotify watch
 * (fs.watch) on <vm>/ and <vm>/snapshots/, the two directories every record write renames into (see
 * recordsStamp). The stamp of a watched VM is a number that is replaced on the first event of either
 * directory; the watch is then dropped and made again by the next question, so a change between the
 * event and the new watch is inside the reading the new stamp asks for.
 *
 * Why this is as prompt as the stat per question it replaces (recordsStamp): the kernel queues the
 * event when the other process renames, before that process can tell anyone it is done, so the
 * notification is ready before any request that follows the change, and the event loop reads ready
 * descriptors in the order they became ready. A change made by this process is not seen this way until
 * the loop turns: the caller counts those itself (Session.changes).
 *
 * Falls back to recordsStamp when a watch cannot be made (inotify limits, a filesystem without it) or
 * when WATCHED_VMS are watched already.
 */
import { type FSWatcher, statSync, watch } from 'node:fs';
import { CloneboxError } from '../errors.js';
import { type Home, vmDir } from './home.js';
import { recordsStamp, snapshotsDir } from './snapshots.js';

/** Two inotify watches each: far below the usual per-user limit (8192 and up). */
const WATCHED_VMS = 1024;

interface Watched {
  stamp: string;
  watchers: FSWatcher[];
}

export class RecordsWatch {
  private readonly vms = new Map<string, Watched>();
  private counter = 0;
  private closed = false;

  constructor(private readonly home: Home) {}

  /** The stamp of a watched VM without any system call; undefined when the VM is not watched now. */
  peek(vm: string): string | undefined {
    return this.vms.get(vm)?.stamp;
  }

  /** A string that differs after any change of the VM's records; null: just changed, read them. */
  stamp(vm: string): string | null {
    const known = this.vms.get(vm);
    if (known) return known.stamp;
    if (this.closed || this.vms.size >= WATCHED_VMS) return recordsStamp(this.home, vm);
    const dir = vmDir(this.home, vm);
    const entry: Watched = { stamp: `w${++this.counter}`, watchers: [] };
    const drop = () => {
      if (this.vms.get(vm) === entry) this.vms.delete(vm);
      for (const w of entry.watchers) w.close();
    };
    try {
      // The VM directory first: snapshots/ made after this shows as an event on it.
      entry.watchers.push(watch(dir, { persistent: false }, drop));
      const snaps = snapshotsDir(this.home, vm);
      if (statSync(snaps, { throwIfNoEntry: false })) entry.watchers.push(watch(snaps, { persistent: false }, drop));
    } catch (err) {
      drop();
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !statSync(dir, { throwIfNoEntry: false })) {
        throw new CloneboxError('VM_NOT_FOUND', `no such VM ${vm}`, { hint: 'see `clonebox vm list`' });
      }
      return recordsStamp(this.home, vm);
    }
    for (const w of entry.watchers) w.on('error', drop);
    this.vms.set(vm, entry);
    return entry.stamp;
  }

  close(): void {
    this.closed = true;
    for (const e of this.vms.values()) for (const w of e.watchers) w.close();
    this.vms.clear();
  }
}
