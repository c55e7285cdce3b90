/**
 * Files a pull writes before it takes the VM lock: its new layers under hidden temporary names and,
 * for a new VM, its disk directory. They are listed in <home>/sync/pull-temps.list (one absolute path
 * per line, a directory with a trailing slash), each line fsynced before the file is created, so that
 * the next sync (which holds the home's sync lock, so no other pull is running) removes what a killed
 * one left. Under the VM lock the pull hands its temporaries to the VM's journal (willCreate) and only
 * then drops them from this list: at every moment one of the two owns them, and never is a file that
 * a committed journal will still rename deleted from here.
 */
import { open, readFile, rmdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../fsutil.js';
import type { Home } from '../store/home.js';

/** A list longer than this was not written by us: it is ignored (and reported), never acted on. */
const MAX_LIST_BYTES = 1024 * 1024;

export class PullTemps {
  private readonly entries = new Set<string>();

  private constructor(private readonly file: string) {}

  static listPath(home: Home): string {
    return path.join(home.root, 'sync', 'pull-temps.list');
  }

  /**
   * Removes what an earlier, killed pull left; the caller holds the sync lock. `salvage` is given the
   * listed files first (only those this would remove), to copy the blocks placed in them (placed.ts).
   */
  static async open(home: Home, log: (line: string) => void, salvage?: (files: string[]) => Promise<void>): Promise<PullTemps> {
    const t = new PullTemps(PullTemps.listPath(home));
    const text = await readFile(t.file, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return '';
      throw e;
    });
    if (text.length > MAX_LIST_BYTES) {
      log(`ignoring ${t.file}: ${text.length} bytes is not a list a pull wrote; remove it`);
      return t;
    }
    const root = path.resolve(home.root);
    let removed = 0;
    // Files first, then directories (deepest first): a directory goes only once it is empty.
    const lines = text.split('\n').filter((l) => l.length > 0 && path.isAbsolute(l));
    // Only hidden temporaries inside this home's disk area or a VM's own directory: a damaged line
    // must never point us at a user's file.
    const files = lines.filter((x) => !x.endsWith('/') && path.basename(x).startsWith('.') && x.includes('.sync-'));
    if (salvage) await salvage(files);
    for (const l of files) {
      if (
        await unlink(l).then(
          () => true,
          () => false,
        )
      )
        removed++;
    }
    for (const l of lines.filter((x) => x.endsWith('/')).sort((a, b) => b.length - a.length)) {
      if (!path.resolve(l).startsWith(root + path.sep)) continue;
      if (
        await rmdir(l).then(
          () => true,
          () => false,
        )
      )
        removed++;
    }
    if (removed) log(`removed ${removed} temporary file(s) of an interrupted pull`);
    if (text.length) await writeFileAtomic(t.file, '');
    return t;
  }

  /**
   * Lists `files` (a directory: `dir/`) durably before they are created: one write and one datasync
   * for all of them (a pull of 1,002 layers listed them one datasync each).
   */
  async add(...files: string[]): Promise<void> {
    if (!files.length) return;
    for (const f of files) this.entries.add(f);
    const fh = await open(this.file, 'a', 0o600);
    try {
      await fh.write(files.map((f) => `${f}\n`).join(''));
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  /** Forgets `files` (now owned by a journal, renamed or removed). */
  async drop(files: string[]): Promise<void> {
    let changed = false;
    for (const f of files) changed = this.entries.delete(f) || changed;
    if (!changed) return;
    await writeFileAtomic(this.file, [...this.entries].map((e) => `${e}\n`).join(''));
  }
}
