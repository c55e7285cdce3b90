/**
 * Which backing files an image given by a user may pull in. A qcow2 header names its backing file
 * freely: `/home/u/.ssh/id_ed25519`, `../../etc/shadow`, `/dev/nvme0n1`, with or without a format.
 * Whatever the chain reaches becomes part of the disk, and an export or a share then carries that
 * host file's bytes to others. So a chain is accepted only when every backing file
 *
 *   - is named by a relative path that stays inside the top image's directory tree (after symlinks),
 *   - is a regular file (no block or character device, FIFO or socket),
 *   - has its format recorded in the header that names it (no raw sniffing: a raw file is read whole),
 *
 * unless the user names that file (`--allow-backing PATH`, compared by real path). A backing file that
 * does not exist is BACKING_MISSING. Chains clonebox writes itself (layers beside their disk, relative
 * names, format recorded) always pass.
 */
import { constants as fsc } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError } from '../errors.js';
import { Qcow2Image } from './reader.js';

/** Bounds the walk as Chain does (QEMU uses a similar limit). */
const MAX_DEPTH = 1000;

/** One image of a resolved chain, top first: what `vm add` and `image info` show. */
export interface ChainLink {
  /** Absolute real path of this image. */
  path: string;
  format: 'qcow2' | 'raw';
  /** The backing name as this image's header stores it (null: the chain ends here). */
  backing_file: string | null;
  /** The backing format the header records (null: none recorded). */
  backing_format: string | null;
  /** Why this image's backing file was accepted only because the user named it, or null. */
  allowed_because: string | null;
  /** Why this image's backing file is refused (and the chain not followed further), or null. */
  refused: string | null;
}

/** Why a backing file would be refused, or null when it passes the rules. */
function refusal(name: string, real: string, root: string, recordedFormat: string | null, st: { isFile(): boolean }): string | null {
  if (path.isAbsolute(name)) return `its backing file is an absolute path (${name})`;
  const rel = path.relative(root, real);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) return `its backing file ${name} leaves the directory ${root} (it is ${real})`;
  if (!st.isFile()) return `its backing file ${real} is not a regular file (a device, FIFO or socket)`;
  if (recordedFormat === null) return `it names its backing file ${name} without a format (clonebox would have to guess it)`;
  return null;
}

/**
 * Resolves `file`'s backing chain and checks every link against the rules above; `allow` holds paths
 * the user accepts anyway. Returns the chain, top first. Opens each image once, reads no data.
 */
export function checkedBackingChain(file: string, allow: readonly string[] = []): Promise<ChainLink[]> {
  return walk(file, allow, true);
}

/**
 * The chain as far as the rules let it be followed, for showing (`image info`): a refused or missing
 * backing file is reported in its link's `refused` and not opened.
 */
export function describeBackingChain(file: string): Promise<ChainLink[]> {
  return walk(file, [], false);
}

async function walk(file: string, allow: readonly string[], strict: boolean): Promise<ChainLink[]> {
  const top = await realpath(path.resolve(file)).catch(() => path.resolve(file));
  const root = path.dirname(top);
  const allowed = new Set<string>();
  for (const a of allow) allowed.add(await realpath(path.resolve(a)).catch(() => path.resolve(a)));
  const links: ChainLink[] = [];
  const seen = new Set<string>();
  let cur: string = top;
  let fmt: 'qcow2' | 'raw' = 'qcow2';
  for (;;) {
    if (seen.has(cur)) throw CloneboxError.QCOW2_CORRUPT(`backing chain loops back to ${cur}, ${file}`);
    if (links.length >= MAX_DEPTH) throw CloneboxError.QCOW2_TOO_LARGE(`backing chain is deeper than ${MAX_DEPTH}, ${file}`);
    seen.add(cur);
    if (fmt === 'raw') {
      links.push({ path: cur, format: 'raw', backing_file: null, backing_format: null, allowed_because: null, refused: null });
      return links;
    }
    const img = await Qcow2Image.open(cur);
    let name: string | null;
    let recorded: string | null;
    let next: string | null;
    try {
      name = img.backingFile;
      recorded = img.extensions.backingFormat;
      next = img.backingPath();
    } finally {
      await img.close();
    }
    const link: ChainLink = { path: cur, format: 'qcow2', backing_file: name, backing_format: recorded, allowed_because: null, refused: null };
    links.push(link);
    if (name === null || next === null) return links;
    let real: string;
    let st: Awaited<ReturnType<typeof stat>>;
    try {
      real = await realpath(next);
      st = await stat(real);
    } catch {
      if (!strict) {
        link.refused = `backing file ${next} is missing`;
        return links;
      }
      throw CloneboxError.BACKING_MISSING(`backing file ${name} of ${cur} is missing or unreadable (${next})`, {
        hint: 'restore the backing file, or convert the image to a standalone one (`qemu-img convert`)',
      });
    }
    const why = refusal(name, real, root, recorded, st);
    if (why !== null) {
      if (!allowed.has(real)) {
        if (!strict) {
          link.refused = why;
          return links;
        }
        throw CloneboxError.BACKING_REFUSED(`refusing ${cur}: ${why}`, {
          hint: `if that file is meant to be part of the disk, pass --allow-backing ${real}`,
        });
      }
      link.allowed_because = why;
    }
    if (recorded !== null && recorded !== 'qcow2' && recorded !== 'raw') {
      throw CloneboxError.QCOW2_UNSUPPORTED(`unsupported backing format ${recorded}, ${cur}`);
    }
    fmt = recorded === 'raw' ? 'raw' : recorded === 'qcow2' ? 'qcow2' : await sniff(real);
    cur = real;
  }
}

/** For a backing file the user allowed without a recorded format: qcow2 by its magic, else raw (as QEMU guesses). */
async function sniff(file: string): Promise<'qcow2' | 'raw'> {
  const fh = await open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    return bytesRead === 4 && b.readUInt32BE(0) === 0x514649fb ? 'qcow2' : 'raw';
  } finally {
    await fh.close();
  }
}
