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

  /** Writes snapshots root..name (or those after `since`) of a VM as one bundle. */
  export(vm: string, opts: ExportOptions): Promise<ExportResult> {
    return this.s.run(async () => {
      if (opts.encrypt && !hasKey(opts)) throw usageError('--encrypt needs --passphrase-file FILE or --key-file FILE');
      if (!opts.encrypt && hasKey(opts)) throw usageError('a key was given without --encrypt', 'add --encrypt to encrypt the bundle');
      const { exportBundle } = await import('../bundle/export.js');
      const r = await withKey(opts.encrypt ? opts : {}, (key) => {
        if (key?.kind === 'passphrase' && passphraseChars(key.passphrase) < SHORT_PASSPHRASE) {
          this.s.warn(
            { code: 'WARNING', message: `the passphrase has fewer than ${SHORT_PASSPHRASE} characters: anyone holding the bundle can guess it` },
            opts.onWarning,
          );
        }
        return exportBundle(this.s.home, vm, {
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
  import(vm: string, input: BundleInput, opts: ImportOptions = {}): Promise<ImportResult> {
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
