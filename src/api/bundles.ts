/**
 * `cb.bundles` and `cb.keys`: deduplicated, compressed (optionally encrypted) bundles of snapshot
 * chains (the work is in src/bundle/). Export, import and verify are long operations: aborting one
 * leaves no temporary or output file (export), no VM, layer, record or journal (import).
 */
import { usageError } from '../errors.js';
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

/** The key a call gives (a file, a passphrase file, or the passphrase), or null. */
async function keySource(o: KeyOptions) {
  const given = [o.keyFile, o.passphraseFile, o.passphrase].filter((x) => x !== undefined).length;
  if (given > 1) throw usageError('give either --passphrase-file or --key-file, not both');
  if (o.passphrase !== undefined) {
    if (o.passphrase.length === 0) throw usageError('the passphrase is empty');
    return { kind: 'passphrase' as const, passphrase: Buffer.from(o.passphrase, 'utf8'), file: '(passphrase)' };
  }
  const { loadKeySource } = await import('../bundle/crypto.js');
  return loadKeySource({ passphraseFile: o.passphraseFile, keyFile: o.keyFile });
}

function hasKey(o: KeyOptions): boolean {
  return o.keyFile !== undefined || o.passphraseFile !== undefined || o.passphrase !== undefined;
}

export class Bundles {
  constructor(private readonly s: Session) {}

  /** Writes snapshots root..name (or those after `since`) of a VM as one bundle. */
  export(vm: string, opts: ExportOptions): Promise<ExportResult> {
    return this.s.run(async () => {
      if (opts.encrypt && !hasKey(opts)) throw usageError('--encrypt needs --passphrase-file FILE or --key-file FILE');
      if (!opts.encrypt && hasKey(opts)) throw usageError('a key was given without --encrypt', 'add --encrypt to encrypt the bundle');
      const key = opts.encrypt ? await keySource(opts) : null;
      const { exportBundle } = await import('../bundle/export.js');
      const r = await exportBundle(this.s.home, vm, {
        name: opts.name,
        since: opts.since,
        output: opts.output,
        key,
        ...(opts.level !== undefined ? { level: opts.level } : {}),
        signal: this.s.signal(opts.signal),
        onProgress: opts.onProgress,
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
      const key = await keySource(opts);
      const { importBundle } = await import('../bundle/import.js');
      const r = await importBundle(this.s.home, vm, { input, key, dir: opts.dir, signal: this.s.signal(opts.signal), onProgress: opts.onProgress });
      return { vm: r.vm, snapshots: r.snapshots, bytes_written: r.bytes_written, seconds: r.seconds, current: r.current, base: r.base };
    });
  }

  /** Reads a whole bundle and checks every block, map and seal; writes nothing. */
  verify(input: BundleInput, opts: VerifyOptions = {}): Promise<VerifyResult> {
    return this.s.run(async () => {
      const key = await keySource(opts);
      const { verifyBundle } = await import('../bundle/verify.js');
      return verifyBundle(input, key, { signal: this.s.signal(opts.signal), onProgress: opts.onProgress });
    });
  }

  /** What a bundle holds, from its meta and seal (without a key, an encrypted one shows its header only). */
  inspect(input: BundleInput, opts: KeyOptions = {}): Promise<InspectResult> {
    return this.s.run(async () => {
      const key = await keySource(opts);
      const { inspectBundle } = await import('../bundle/inspect.js');
      return inspectBundle(input, key);
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
