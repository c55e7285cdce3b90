/**
 * `cb.bundles` and `cb.keys`: deduplicated, compressed (optionally encrypted) bundles of snapshot
 * chains (the work is in src/bundle/). Export, import and verify are long operations: aborting one
 * leaves no temporary or output file (export), no VM, layer, record or journal (import).
 */
import type { KeySource } from '../bundle/crypto.js';
import { CloneboxError, usageError } from '../errors.js';
import type { Session } from './session.js';
import type {
  BundleInput,
  ExportOptions,
  ExportResult,
  GroupImportOptions,
  GroupImportResult,
  ImportOptions,
  ImportResult,
  InspectResult,
  KeyFileResult,
  KeyOptions,
  VerifyOptions,
  VerifyResult,
} from './types.js';

/**
 * The key a call gives (a key file, a passphrase file, key bytes or the passphrase), or null. Always
 * fresh buffers: the call wipes them when it ends (`wipeKeySource`), whatever the caller keeps.
 */
async function keySource(o: KeyOptions): Promise<KeySource | null> {
  const given = [o.keyFile, o.key, o.passphraseFile, o.passphrase].filter((x) => x !== undefined).length;
  if (given > 1) throw usageError('give one of --passphrase-file or --key-file (a passphrase or a key), not both');
  if (o.passphrase !== undefined) {
    const passphrase = typeof o.passphrase === 'string' ? Buffer.from(o.passphrase, 'utf8') : Buffer.from(o.passphrase);
    if (passphrase.length === 0) throw usageError('the passphrase is empty');
    return { kind: 'passphrase', passphrase, file: '(passphrase)' };
  }
  if (o.key !== undefined) {
    if (o.key.length !== 32) throw CloneboxError.BAD_KEY_FILE(`a key must be exactly 32 bytes, got ${o.key.length}`);
    return { kind: 'keyfile', key: Buffer.from(o.key), file: '(key)' };
  }
  const { loadKeySource } = await import('../bundle/crypto.js');
  return loadKeySource({ passphraseFile: o.passphraseFile, keyFile: o.keyFile, allowInsecureKeyFile: o.allowInsecureKeyFile });
}

export function hasKey(o: KeyOptions): boolean {
  return o.keyFile !== undefined || o.key !== undefined || o.passphraseFile !== undefined || o.passphrase !== undefined;
}

/** Characters (UTF-8 code points) in a passphrase, counted without making a string of it. */
function passphraseChars(p: Buffer): number {
  let n = 0;
  for (const b of p) if ((b & 0xc0) !== 0x80) n++;
  return n;
}

/** Below this many characters a passphrase is guessable whatever the KDF costs. */
const SHORT_PASSPHRASE = 8;

/** Runs `fn` with the call's key and wipes the key's bytes when it settles. */
export async function withKey<T>(o: KeyOptions, fn: (key: KeySource | null) => Promise<T>): Promise<T> {
  const key = await keySource(o);
  try {
    return await fn(key);
  } finally {
    if (key) (key.kind === 'passphrase' ? key.passphrase : key.key).fill(0);
  }
}

export class Bundles {
  constructor(private readonly s: Session) {}

  /**
   * Writes snapshots root..name (or those after `since`) of a VM as one bundle; with `group` (and a
   * null VM), every member's chain up to a group snapshot (a group bundle, deduplicated across the VMs).
   */
  export(vm: string | null, opts: ExportOptions): Promise<ExportResult> {
    return this.s.run(async () => {
      if ((vm === null) === (opts.group === undefined)) throw usageError('name either a VM or a group (--group), not both or neither');
      if (opts.group !== undefined && opts.since !== undefined) throw usageError('--since is not supported with --group', 'a group bundle holds whole chains');
      if (opts.encrypt && !hasKey(opts)) throw usageError('--encrypt needs --passphrase-file FILE or --key-file FILE');
      if (!opts.encrypt && hasKey(opts)) throw usageError('a key was given without --encrypt', 'add --encrypt to encrypt the bundle');
      const { exportBundle } = await import('../bundle/export.js');
      const { exportGroupBundle } = await import('../bundle/group.js');
      const r = await withKey(opts.encrypt ? opts : {}, (key) => {
        if (key?.kind === 'passphrase' && passphraseChars(key.passphrase) < SHORT_PASSPHRASE) {
          this.s.warn(
            { code: 'WARNING', message: `the passphrase has fewer than ${SHORT_PASSPHRASE} characters: anyone holding the bundle can guess it` },
            opts.onWarning,
          );
        }
        const run = (o: Parameters<typeof exportBundle>[2]) =>
          vm === null ? exportGroupBundle(this.s.home, opts.group!, o) : exportBundle(this.s.home, vm, o);
        return run({
          name: opts.name,
          since: opts.since,
          output: opts.output,
          key,
          ...(opts.level !== undefined ? { level: opts.level } : {}),
          force: Boolean(opts.force),
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        });
      });
      return {
        file: r.file,
        snapshots: r.snapshots,
        chains: r.chains,
        group: r.group,
        logical_bytes: r.logical_bytes,
        unique_bytes: r.unique_bytes,
        stored_bytes: r.stored_bytes,
        blocks: r.blocks,
        unique_blocks: r.unique_blocks,
        encrypted: r.encrypted,
        seconds: r.seconds,
        bundle_bytes: r.bundle_bytes,
        since: r.since,
      };
    });
  }

  /** Rebuilds a bundle's snapshots as qcow2 layers of VM `vm` (a new VM, or one that holds the bundle's base). */
  import(vm: string, input: BundleInput, opts?: ImportOptions): Promise<ImportResult>;
  /** Rebuilds a group bundle: every member as a new VM under its own name, and the group as `opts.group`; all or nothing. */
  import(vm: null, input: BundleInput, opts: GroupImportOptions): Promise<GroupImportResult>;
  import(vm: string | null, input: BundleInput, opts: ImportOptions | GroupImportOptions = {}): Promise<ImportResult | GroupImportResult> {
    if (vm === null) return this.importGroup(input, opts as GroupImportOptions);
    return this.s.run(async () => {
      const { importBundle } = await import('../bundle/import.js');
      const r = await withKey(opts, (key) =>
        importBundle(this.s.home, vm, {
          input,
          key,
          dir: opts.dir,
          allowPlain: opts.allowPlain,
          askPassphrase: opts.askPassphrase,
          maxWrite: opts.maxWrite,
          maxVirtualSize: opts.maxVirtualSize,
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        }),
      );
      return { vm: r.vm, snapshots: r.snapshots, bytes_written: r.bytes_written, seconds: r.seconds, current: r.current, base: r.base };
    });
  }

  private importGroup(input: BundleInput, opts: GroupImportOptions): Promise<GroupImportResult> {
    return this.s.run(async () => {
      if (typeof opts.group !== 'string') throw usageError('name the group to import (--group NAME), or a VM');
      const { importGroupBundle } = await import('../bundle/group.js');
      const r = await withKey(opts, (key) =>
        importGroupBundle(this.s.home, opts.group, {
          input,
          key,
          dir: opts.dir,
          allowPlain: opts.allowPlain,
          askPassphrase: opts.askPassphrase,
          maxWrite: opts.maxWrite,
          maxVirtualSize: opts.maxVirtualSize,
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        }),
      );
      return {
        group: r.group,
        members: r.members.map((m) => ({
          vm: m.vm,
          snapshots: m.snapshots,
          bytes_written: m.bytes_written,
          seconds: m.seconds,
          current: m.current,
          base: m.base,
        })),
        bytes_written: r.bytes_written,
        seconds: r.seconds,
      };
    });
  }

  /** Reads a whole bundle and checks every block, map and seal; writes nothing. */
  verify(input: BundleInput, opts: VerifyOptions = {}): Promise<VerifyResult> {
    return this.s.run(async () => {
      const { verifyBundle } = await import('../bundle/verify.js');
      return withKey(opts, (key) =>
        verifyBundle(input, key, {
          allowPlain: opts.allowPlain,
          askPassphrase: opts.askPassphrase,
          signal: this.s.signal(opts.signal),
          onProgress: opts.onProgress,
        }),
      );
    });
  }

  /** What a bundle holds, from its meta and seal (without a key, an encrypted one shows its header only). */
  inspect(input: BundleInput, opts: KeyOptions = {}): Promise<InspectResult> {
    return this.s.run(async () => {
      const { inspectBundle } = await import('../bundle/inspect.js');
      return withKey(opts, (key) => inspectBundle(input, key, { allowPlain: Boolean(opts.allowPlain), askPassphrase: opts.askPassphrase }));
    });
  }
}

export class Keys {
  constructor(private readonly s: Session) {}

  /** Writes a new random 32-byte key file (mode 0600); never overwrites. */
  generate(file: string): Promise<KeyFileResult> {
    return this.s.run(async () => {
      const path = await import('node:path');
      const { generateKeyFile } = await import('../bundle/crypto.js');
      const abs = path.resolve(file);
      await generateKeyFile(abs);
      return { file: abs };
    });
  }
}
