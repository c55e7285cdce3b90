/**
 * Append-only repositories (`archive init --append-only`): push and import work as always (they only
 * add files); forget and gc, the only operations that delete, need the repository's delete key, a
 * 32-byte key file (`clonebox key generate`) that is kept away from the workstations that push.
 *
 * `DIR/append-only` (written once, at init, mode 0444) holds what checks that key:
 *
 *   {"format":"clonebox-archive-append-only","version":1,"delete_key_check":"<64 hex>"}
 *   delete_key_check = SHA-256("clonebox-archive/v1/delete-key\0" || repository id || config checksum || key)
 *
 * A repository whose config says append-only and that has no such file (or a damaged one) refuses
 * forget and gc like one given no key: removing the file unlocks nothing.
 *
 * What this enforces, and what not (docs/archive.md, "Append-only repositories"): clonebox itself never
 * deletes or rewrites a file of an append-only repository without the key. A process running as the
 * directory's owner can still delete files by other means; against a compromised workstation the
 * directory must also be protected by the operating system (another owner, `chattr +a`, or a remote
 * file server that refuses deletes), which the repository's write-once layout makes possible.
 */
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { type KeySource, sha256 } from '../bundle/crypto.js';
import { CloneboxError, ioError } from '../errors.js';
import { createFileExclusive } from '../fsutil.js';
import { archiveCorrupt } from './container.js';
import type { Repo } from './repo.js';

const APPEND_ONLY_FILE = 'append-only';

function keyCheck(repo: Repo, key: Buffer): Buffer {
  return sha256(Buffer.from('clonebox-archive/v1/delete-key\0', 'latin1'), repo.id, repo.checksum, key);
}

function deleteKeyOf(src: KeySource): Buffer {
  if (src.kind !== 'keyfile') {
    throw CloneboxError.USAGE(`the delete key must be a key file (\`clonebox key generate -o FILE\`), not a passphrase, ${src.file}`);
  }
  return src.key;
}

/** Writes the delete-key check of a repository just made with the append-only flag. */
export async function writeAppendOnly(repo: Repo, deleteKey: KeySource): Promise<void> {
  if (!repo.appendOnly) throw new CloneboxError('INTERNAL', 'writeAppendOnly on a repository without the append-only flag');
  const file = path.join(repo.dir, APPEND_ONLY_FILE);
  const doc = { format: 'clonebox-archive-append-only', version: 1, delete_key_check: keyCheck(repo, deleteKeyOf(deleteKey)).toString('hex') };
  if (!(await createFileExclusive(file, `${JSON.stringify(doc)}\n`, 0o444))) {
    throw new CloneboxError('ARCHIVE_EXISTS', `the repository has a delete key already, ${file}`);
  }
}

/**
 * Lets `what` (forget, gc) go on: always in a repository without the append-only flag; in one with it,
 * only with the right delete key (ARCHIVE_APPEND_ONLY without one, WRONG_KEY with another).
 */
export async function requireDeleteKey(repo: Repo, deleteKey: KeySource | null, what: string): Promise<void> {
  if (!repo.appendOnly) return;
  if (!deleteKey) {
    throw new CloneboxError('ARCHIVE_APPEND_ONLY', `the archive repository is append-only: ${what} needs its delete key, ${repo.dir}`, {
      hint: 'give it with --delete-key-file FILE (the key made at `archive init --append-only`)',
    });
  }
  const key = deleteKeyOf(deleteKey);
  const file = path.join(repo.dir, APPEND_ONLY_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw archiveCorrupt('the append-only repository has no delete-key check', file);
    throw ioError(err, 'cannot read the delete-key check', file);
  }
  let want: Buffer | null = null;
  try {
    const doc = JSON.parse(text) as { format?: unknown; version?: unknown; delete_key_check?: unknown };
    if (
      doc.format === 'clonebox-archive-append-only' &&
      doc.version === 1 &&
      typeof doc.delete_key_check === 'string' &&
      /^[0-9a-f]{64}$/.test(doc.delete_key_check)
    ) {
      want = Buffer.from(doc.delete_key_check, 'hex');
    }
  } catch {
    want = null;
  }
  if (!want) throw archiveCorrupt('the delete-key check is not readable', file);
  if (!timingSafeEqual(want, keyCheck(repo, key))) {
    throw new CloneboxError('WRONG_KEY', `wrong delete key for the append-only archive repository ${repo.dir} (${deleteKey.file})`, {
      hint: 'nothing was deleted; give the key made at `archive init --append-only`',
    });
  }
}
