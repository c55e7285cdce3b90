/**
 * A repository directory: its config (header + sealed settings), its keys, the paths of its files and
 * the shared side of its lock.
 *
 * Keys (encrypted repositories; docs/archive-format.md §2):
 *   K       master key: a key file's 32 bytes, or Argon2id13(passphrase, salt, opslimit, memlimit)
 *   check   BLAKE2b-256(K, config bytes 0..71): a wrong key is named as such
 *   K_enc   BLAKE2b-256(K, "clonebox-archive/v1/enc" || repository id): seals every entry
 *   K_id    BLAKE2b-256(K, "clonebox-bundle/v1/block-id"), as bundles: block id = BLAKE2b-256(K_id, SHA-256(block))
 *   K_name  BLAKE2b-256(K, "clonebox-archive/v1/layer-name"): layer file name = BLAKE2b-256(K_name, layer digest)
 * A plain repository seals with SHA-256 tags (damage, not forgery), block ids are SHA-256 and layer
 * file names the layer digests.
 */
import { randomBytes as cryptoRandom } from 'node:crypto';
import { readdir, readFile, rmdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { deriveMaster, idKey, type KeySource, keyCheck, Sealer, sha256, subKey } from '../bundle/crypto.js';
import { KDF_MEMLIMIT, KDF_OPSLIMIT, KeyKind, MAX_KDF_MEMLIMIT, MAX_KDF_OPSLIMIT } from '../bundle/format.js';
import { nowIso } from '../clock.js';
import { CloneboxError, ioError, usageError } from '../errors.js';
import { createFileExclusive, ensureDir, fsyncDir, sweepStaleTempsIn } from '../fsutil.js';
import { archiveCorrupt, fileContext } from './container.js';
import {
  ARCHIVE_VERSION,
  CONFIG_FILE,
  CONFIG_HEADER_SIZE,
  CONFIG_MAGIC,
  DIR_INDEX,
  DIR_LAYERS,
  DIR_LOCKS,
  DIR_PACKS,
  DIR_SNAPSHOTS,
  type FileType,
  FLAG_APPEND_ONLY,
  FLAG_ENCRYPTED,
  MAX_SETTINGS,
  type Settings,
} from './format.js';

export interface InitOptions {
  key: KeySource | null;
  /** zstd level of the repository's frames, 1..19 (default 3). */
  level?: number | undefined;
  /** Sets the append-only flag (what it enforces is the business of forget and gc). */
  appendOnly?: boolean | undefined;
}

interface ConfigHeader {
  encrypted: boolean;
  appendOnly: boolean;
  repoId: Buffer;
  keyKind: number;
  opslimit: number;
  memlimit: number;
  salt: Buffer;
  keyCheck: Buffer;
  checksum: Buffer;
}

function headerPrefix(h: Omit<ConfigHeader, 'keyCheck' | 'checksum'>): Buffer {
  const b = Buffer.alloc(72);
  CONFIG_MAGIC.copy(b, 0);
  b.writeUInt32BE(ARCHIVE_VERSION, 16);
  b.writeUInt32BE((h.encrypted ? FLAG_ENCRYPTED : 0) | (h.appendOnly ? FLAG_APPEND_ONLY : 0), 20);
  h.repoId.copy(b, 24);
  b.writeUInt8(h.keyKind, 40);
  b.writeUInt32BE(h.opslimit, 44);
  b.writeBigUInt64BE(BigInt(h.memlimit), 48);
  h.salt.copy(b, 56);
  return b;
}

function decodeHeader(b: Buffer, file: string): ConfigHeader {
  if (b.length < 16 || !b.subarray(0, 16).equals(CONFIG_MAGIC)) {
    throw new CloneboxError('ARCHIVE_NOT_FOUND', `not a clonebox archive repository (its config has no archive header), ${file}`);
  }
  if (b.length < CONFIG_HEADER_SIZE + 4) throw archiveCorrupt(`config is ${b.length} bytes, too short`, file);
  if (!sha256(b.subarray(0, 104)).equals(b.subarray(104, 136))) throw archiveCorrupt('config header checksum does not match', file);
  const version = b.readUInt32BE(16);
  if (version !== ARCHIVE_VERSION) {
    throw new CloneboxError('ARCHIVE_UNSUPPORTED', `archive format version ${version} is not supported (this clonebox reads ${ARCHIVE_VERSION}), ${file}`, {
      hint: 'use the clonebox version that made the repository, or a newer one',
    });
  }
  const flags = b.readUInt32BE(20);
  if ((flags & ~(FLAG_ENCRYPTED | FLAG_APPEND_ONLY)) !== 0) throw archiveCorrupt(`unknown config flags 0x${flags.toString(16)}`, file);
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
  const keyKind = b.readUInt8(40);
  if (b.readUIntBE(41, 3) !== 0) throw archiveCorrupt('reserved config bytes are not zero', file);
  const opslimit = b.readUInt32BE(44);
  const mem = b.readBigUInt64BE(48);
  const salt = Buffer.from(b.subarray(56, 72));
  const check = Buffer.from(b.subarray(72, 104));
  if (!encrypted) {
    if (keyKind !== KeyKind.None || opslimit !== 0 || mem !== 0n || salt.some((x) => x) || check.some((x) => x)) {
      throw archiveCorrupt('a plain repository config carries key parameters', file);
    }
  } else if (keyKind === KeyKind.Passphrase) {
    // A hostile config could ask for unbounded memory or time before the key can be judged.
    if (opslimit < 1 || opslimit > MAX_KDF_OPSLIMIT) throw archiveCorrupt(`Argon2id opslimit ${opslimit} is outside 1..${MAX_KDF_OPSLIMIT}`, file);
    if (mem < 8192n || mem > BigInt(MAX_KDF_MEMLIMIT)) throw archiveCorrupt(`Argon2id memlimit ${mem} is outside 8 KiB..${MAX_KDF_MEMLIMIT}`, file);
  } else if (keyKind === KeyKind.KeyFile) {
    if (opslimit !== 0 || mem !== 0n) throw archiveCorrupt('a key-file repository config carries passphrase parameters', file);
  } else {
    throw archiveCorrupt(`unknown key kind ${keyKind}`, file);
  }
  return {
    encrypted,
    appendOnly: (flags & FLAG_APPEND_ONLY) !== 0,
    repoId: Buffer.from(b.subarray(24, 40)),
    keyKind,
    opslimit,
    memlimit: Number(mem),
    salt,
    keyCheck: check,
    checksum: Buffer.from(b.subarray(104, 136)),
  };
}

function settingsSealer(checksum: Buffer, kEnc: Buffer | null): Sealer {
  return new Sealer(sha256(Buffer.from('clonebox-archive/v1/config\0', 'latin1'), checksum), kEnc);
}

function decodeSettings(bytes: Buffer, file: string): Settings {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw archiveCorrupt('settings are not JSON', file);
  }
  const s = v as Partial<Settings> | null;
  const lvl = s?.compression?.level;
  if (
    !s ||
    typeof s !== 'object' ||
    s.format !== 'clonebox-archive' ||
    s.version !== 1 ||
    s.block_size !== 65536 ||
    (s.block_hash !== 'sha256' && s.block_hash !== 'blake2b256-keyed-sha256') ||
    s.compression?.codec !== 'zstd' ||
    typeof lvl !== 'number' ||
    !Number.isInteger(lvl) ||
    lvl < 1 ||
    lvl > 19 ||
    typeof s.append_only !== 'boolean' ||
    typeof s.created_at !== 'string'
  ) {
    throw archiveCorrupt('settings do not have the expected fields', file);
  }
  return s as Settings;
}

/** Where the repository is: `--repo`, else CLONEBOX_ARCHIVE. */
export function resolveRepoDir(explicit?: string | undefined): string {
  const dir = explicit ?? process.env.CLONEBOX_ARCHIVE;
  if (dir === undefined || dir === '') {
    throw new CloneboxError('ARCHIVE_NOT_FOUND', 'no archive repository given', { hint: 'pass --repo DIR, or set CLONEBOX_ARCHIVE' });
  }
  return path.resolve(dir);
}

/** An open repository: paths, sealers and keys. */
export class Repo {
  private constructor(
    readonly dir: string,
    readonly id: Buffer,
    readonly checksum: Buffer,
    readonly settings: Settings,
    readonly encrypted: boolean,
    readonly appendOnly: boolean,
    private readonly kEnc: Buffer | null,
    /** Block-id key (null: plain SHA-256 ids). */
    readonly idk: Buffer | null,
    private readonly kName: Buffer | null,
  ) {}

  /** Creates a repository in `dir` (missing or empty). */
  static async init(dir: string, opts: InitOptions): Promise<Repo> {
    const level = opts.level ?? 3;
    if (!Number.isInteger(level) || level < 1 || level > 19) throw usageError(`--level must be a whole number from 1 to 19, got ${level}`);
    const abs = path.resolve(dir);
    let entries: string[] = [];
    try {
      entries = await readdir(abs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR') throw new CloneboxError('ARCHIVE_EXISTS', `not a directory, ${abs}`, { hint: 'give a new or empty directory' });
      if (code !== 'ENOENT') throw ioError(err, 'cannot read directory', abs);
    }
    if (entries.length > 0) {
      throw new CloneboxError('ARCHIVE_EXISTS', `directory is not empty, ${abs}`, {
        hint: entries.includes(CONFIG_FILE) ? 'it is a repository already; push to it with --repo' : 'give a new or empty directory',
      });
    }
    const madeDir = entries.length === 0;
    await ensureDir(abs, 0o700);
    const repoId = cryptoRandom(16);
    const key = opts.key;
    const passphrase = key?.kind === 'passphrase';
    const kdf = passphrase ? { salt: cryptoRandom(16), opslimit: KDF_OPSLIMIT, memlimit: KDF_MEMLIMIT } : { salt: Buffer.alloc(16), opslimit: 0, memlimit: 0 };
    const prefix = headerPrefix({
      encrypted: key !== null,
      appendOnly: Boolean(opts.appendOnly),
      repoId,
      keyKind: key === null ? KeyKind.None : passphrase ? KeyKind.Passphrase : KeyKind.KeyFile,
      ...kdf,
    });
    const header = Buffer.alloc(CONFIG_HEADER_SIZE);
    prefix.copy(header, 0);
    let master: Buffer | null = null;
    if (key) {
      master = await deriveMaster(key, kdf);
      keyCheck(master, prefix).copy(header, 72);
    }
    const checksum = sha256(header.subarray(0, 104));
    checksum.copy(header, 104);
    const settings: Settings = {
      format: 'clonebox-archive',
      version: 1,
      created_at: nowIso(),
      block_size: 65536,
      block_hash: key ? 'blake2b256-keyed-sha256' : 'sha256',
      compression: { codec: 'zstd', level },
      append_only: Boolean(opts.appendOnly),
    };
    const keys = master ? deriveKeys(master, repoId) : { kEnc: null, idk: null, kName: null };
    master?.fill(0);
    const sealed = settingsSealer(checksum, keys.kEnc).seal(1, 0, Buffer.from(JSON.stringify(settings)));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(sealed.length);
    try {
      for (const d of [DIR_PACKS, DIR_INDEX, DIR_LAYERS, DIR_SNAPSHOTS, DIR_LOCKS]) await ensureDir(path.join(abs, d), 0o700);
      await fsyncDir(abs);
      // The config goes last: a directory is a repository exactly when it has one.
      if (!(await createFileExclusive(path.join(abs, CONFIG_FILE), Buffer.concat([header, len, sealed]), 0o600))) {
        throw new CloneboxError('ARCHIVE_EXISTS', `a repository was made at ${abs} at the same time`);
      }
    } catch (err) {
      if (madeDir) {
        for (const d of [DIR_PACKS, DIR_INDEX, DIR_LAYERS, DIR_SNAPSHOTS, DIR_LOCKS]) await rmdir(path.join(abs, d)).catch(() => undefined);
      }
      throw err;
    }
    return new Repo(abs, repoId, checksum, settings, key !== null, Boolean(opts.appendOnly), keys.kEnc, keys.idk, keys.kName);
  }

  /**
   * Opens the repository in `dir`. An encrypted one needs its key (KEY_REQUIRED without, WRONG_KEY
   * with another); a key given for a plain one is refused unless `allowPlain`.
   */
  static async open(
    dir: string,
    key: KeySource | null,
    opts: { allowPlain?: boolean | undefined; askPassphrase?: ((what: string) => Promise<Uint8Array | null>) | undefined } = {},
  ): Promise<Repo> {
    const abs = path.resolve(dir);
    const file = path.join(abs, CONFIG_FILE);
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        throw new CloneboxError('ARCHIVE_NOT_FOUND', `no archive repository at ${abs}`, { hint: `create one with \`clonebox archive init ${abs}\`` });
      }
      throw ioError(err, 'cannot read archive config', file);
    }
    const h = decodeHeader(bytes, file);
    let master: Buffer | null = null;
    if (h.encrypted) {
      let src = key;
      if (!src && h.keyKind === KeyKind.Passphrase && opts.askPassphrase) {
        const p = await opts.askPassphrase(abs);
        if (p) src = { kind: 'passphrase', passphrase: Buffer.from(p), file: '(prompt)' };
      }
      if (!src) {
        throw new CloneboxError('KEY_REQUIRED', `the archive repository is encrypted, ${abs}`, {
          hint: h.keyKind === KeyKind.Passphrase ? 'give its passphrase with --passphrase-file FILE' : 'give its key with --key-file FILE',
        });
      }
      const kind = src.kind === 'passphrase' ? KeyKind.Passphrase : KeyKind.KeyFile;
      if (kind !== h.keyKind) {
        throw new CloneboxError(
          'WRONG_KEY',
          `the archive repository is encrypted with a ${h.keyKind === KeyKind.Passphrase ? 'passphrase' : 'key file'}, not a ${kind === KeyKind.Passphrase ? 'passphrase' : 'key file'}, ${abs}`,
          {
            hint: h.keyKind === KeyKind.Passphrase ? 'use --passphrase-file' : 'use --key-file',
          },
        );
      }
      master = await deriveMaster(src, { salt: h.salt, opslimit: h.opslimit, memlimit: h.memlimit });
      if (!keyCheck(master, bytes.subarray(0, 72)).equals(h.keyCheck)) {
        master.fill(0);
        throw new CloneboxError('WRONG_KEY', `wrong ${kind === KeyKind.Passphrase ? 'passphrase' : 'key'} for the archive repository ${abs} (${src.file})`, {
          hint: 'nothing was read or written; give the key the repository was made with',
        });
      }
    } else if (key && !opts.allowPlain) {
      throw new CloneboxError('BUNDLE_NOT_ENCRYPTED', `a key was given but the archive repository is not encrypted, ${abs}`, {
        hint: 'leave out --key-file/--passphrase-file',
      });
    }
    const keys = master ? deriveKeys(master, h.repoId) : { kEnc: null, idk: null, kName: null };
    master?.fill(0);
    const len = bytes.readUInt32BE(CONFIG_HEADER_SIZE);
    if (len > MAX_SETTINGS || CONFIG_HEADER_SIZE + 4 + len !== bytes.length) throw archiveCorrupt('settings length does not match the config size', file);
    const payload = settingsSealer(h.checksum, keys.kEnc).open(1, 0, bytes.subarray(CONFIG_HEADER_SIZE + 4));
    if (!payload) throw archiveCorrupt('settings do not authenticate', file);
    const settings = decodeSettings(payload, file);
    if (settings.append_only !== h.appendOnly || (settings.block_hash === 'sha256') === h.encrypted) {
      throw archiveCorrupt('settings contradict the header', file);
    }
    return new Repo(abs, h.repoId, h.checksum, settings, h.encrypted, h.appendOnly, keys.kEnc, keys.idk, keys.kName);
  }

  get level(): number {
    return this.settings.compression.level;
  }

  /** The sealer of one file (its context binds the repository, the file type and the name). */
  sealer(type: FileType, name: string): Sealer {
    return new Sealer(fileContext(this.checksum, type, name), this.kEnc);
  }

  /** The file name of a layer map: the layer digest, keyed in encrypted repositories. */
  layerName(digest: Buffer): string {
    return (this.kName ? subKey(this.kName, '', digest) : digest).toString('hex');
  }

  packDir(id: string): string {
    return path.join(this.dir, DIR_PACKS, id.slice(0, 2));
  }
  packPath(id: string): string {
    return path.join(this.packDir(id), id);
  }
  get indexDir(): string {
    return path.join(this.dir, DIR_INDEX);
  }
  layerDir(name: string): string {
    return path.join(this.dir, DIR_LAYERS, name.slice(0, 2));
  }
  layerPath(name: string): string {
    return path.join(this.layerDir(name), name);
  }
  get snapshotsDir(): string {
    return path.join(this.dir, DIR_SNAPSHOTS);
  }
  get locksDir(): string {
    return path.join(this.dir, DIR_LOCKS);
  }

  /**
   * Deletes the temporaries of writers that died on this host (a push killed with SIGKILL): they are
   * under hidden names no reader opens, so only their space is at stake. Returns how many went.
   */
  async sweepTemps(): Promise<number> {
    let n = 0;
    for (const d of [this.indexDir, path.join(this.dir, DIR_LAYERS), this.snapshotsDir]) n += await sweepStaleTempsIn(d);
    const packs = path.join(this.dir, DIR_PACKS);
    for (const sub of await readdir(packs).catch(() => [] as string[])) if (/^[0-9a-f]{2}$/.test(sub)) n += await sweepStaleTempsIn(path.join(packs, sub));
    return n;
  }
}

function deriveKeys(master: Buffer, repoId: Buffer): { kEnc: Buffer; idk: Buffer; kName: Buffer } {
  return {
    kEnc: subKey(master, 'clonebox-archive/v1/enc', repoId),
    idk: idKey(master),
    kName: subKey(master, 'clonebox-archive/v1/layer-name'),
  };
}

/** A new file id: 16 random bytes as 32 hex digits. */
export function newFileId(): string {
  return cryptoRandom(16).toString('hex');
}

/** This host's name, as records carry it. */
export function hostName(): string {
  return os.hostname();
}
