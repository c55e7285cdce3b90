/**
 * Reading a bundle, for import, verify and inspect: the entries in their only valid order, the key,
 * every seal, and every record checked against the meta before a sink sees it.
 *
 *   BundleReader   header → key → meta → packs → seal → end of archive (tar.ts does the tar part)
 *   decodeBundle   (decode.ts) applies the packs' records in order: map checks (map-check.ts), frames
 *                  and their blocks (frame-store.ts), and finally the seal check (seal-check.ts) —
 *                  then, and only then, returns.
 */
import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CloneboxError } from '../errors.js';
import { deriveMaster, encKey, idKey, type KeySource, keyCheck, Sealer } from './crypto.js';
import {
  ENTRY_HEADER,
  ENTRY_META,
  ENTRY_SEAL,
  EntryKind,
  HEADER_SIZE,
  KeyKind,
  MAX_META_BYTES,
  MAX_PACK_BYTES,
  MAX_PACKS,
  MAX_SEAL_BYTES,
  type Meta,
  packEntryName,
  type Seal,
} from './format.js';
import { type BundleHeader, decodeHeader, decodeMeta, decodeSeal, headerPrefix } from './manifest.js';
import { TarReader } from './tar.js';

export function corrupt(what: string, file: string): CloneboxError {
  return new CloneboxError('BUNDLE_CORRUPT', `bundle is damaged or was modified: ${what}, ${file}`, {
    hint: 'the file changed after export (or was cut short); nothing was written; get an intact copy',
  });
}

/** How a reader treats keys beyond the one given. */
export interface ReaderKeyOptions {
  /** An encrypted bundle without a key stops after the header (`locked`) instead of KEY_REQUIRED (inspect). */
  lockedOk?: boolean;
  /** A key given for a plain bundle is accepted (else BUNDLE_NOT_ENCRYPTED). */
  allowPlain?: boolean;
  /** Asked for the passphrase when the bundle needs one and none was given (the CLI's prompt); null: none. */
  askPassphrase?: ((file: string) => Promise<Uint8Array | null>) | undefined;
}

export class BundleReader {
  header!: BundleHeader;
  meta!: Meta;
  sealer!: Sealer;
  /** Key for block ids (encrypted bundles). */
  idk: Buffer | null = null;
  seal: Seal | null = null;
  packsSeen = 0;
  /** The payload nextPack() returned last (frames' stored bytes are views into it). */
  lastPayload: Buffer | null = null;
  private readonly tar: TarReader;
  private pending: Promise<{ name: string; data: Buffer; offset: number } | null> | null = null;
  /** Where each pack's data starts in the file, and its nonce (encrypted bundles). */
  private readonly packAt: { offset: number; nonce: Buffer | null }[] = [];
  /** Set when the bundle is a file that can be read again (import re-reads frames instead of spooling). */
  private seekable: string | null = null;
  private rereadFh: Promise<import('node:fs/promises').FileHandle> | null = null;

  private constructor(
    input: Readable | AsyncIterable<Buffer>,
    readonly file: string,
  ) {
    this.tar = new TarReader(input, file, ENTRY_HEADER);
  }

  /** Declares the input a regular file at `path` (not a pipe): earlier frames can be read again from it. */
  setSeekable(path: string): void {
    this.seekable = path;
  }

  get canReread(): boolean {
    return this.seekable !== null;
  }

  /**
   * Reads bytes [p, p + length) of pack `index`'s payload again from the file. The pack
   * authenticated when it was read; the caller checks what comes back (block ids).
   */
  async reread(index: number, p: number, length: number): Promise<Buffer> {
    const where = this.packAt[index]!;
    const range = this.sealer.rangeOf(p, length);
    const buf = Buffer.allocUnsafe(range.length);
    this.rereadFh ??= open(this.seekable!, 'r');
    const fh = await this.rereadFh;
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, where.offset + range.at + got);
      if (bytesRead === 0) throw new CloneboxError('BUNDLE_CHANGED', `the bundle file was changed or cut while importing, ${this.file}`);
      got += bytesRead;
    }
    return where.nonce ? this.sealer.decryptRange(where.nonce, buf, range) : buf;
  }

  get bytesIn(): number {
    return this.tar.bytesIn;
  }

  /** Reads and checks the header (and key) and the meta. */
  static async open(input: Readable | AsyncIterable<Buffer>, file: string, key: KeySource | null, opts: ReaderKeyOptions = {}): Promise<BundleReader> {
    const r = new BundleReader(input, file);
    try {
      await r.start(key, opts);
    } catch (err) {
      r.destroy();
      throw err;
    }
    return r;
  }

  /** Set when the bundle is encrypted, no key was given and the caller accepted that (inspect). */
  locked = false;

  private async start(given: KeySource | null, opts: ReaderKeyOptions): Promise<void> {
    let key = given;
    const first = await this.tar.next((name) => {
      if (name !== ENTRY_HEADER) throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (first entry is ${JSON.stringify(name)}), ${this.file}`);
      return HEADER_SIZE;
    });
    if (!first) throw new CloneboxError('NOT_A_BUNDLE', `not a clonebox bundle (empty archive), ${this.file}`);
    const h = decodeHeader(first.data, this.file);
    this.header = h;
    if (!h.encrypted) {
      // A key says the user expects authenticated content: a plain bundle (anyone can write one, or
      // swap one in on the way) is not what they asked for.
      if (key && !opts.allowPlain) {
        throw new CloneboxError(
          'BUNDLE_NOT_ENCRYPTED',
          `a ${key.kind === 'passphrase' ? 'passphrase' : 'key'} was given but the bundle is not encrypted, ${this.file}`,
          {
            hint: 'nothing in a plain bundle is authenticated; if you expected it to be plain, pass --allow-plain',
          },
        );
      }
      this.sealer = new Sealer(h.checksum, null);
    } else {
      const kind = h.keyKind === KeyKind.Passphrase ? 'passphrase' : 'keyfile';
      let asked: KeySource | null = null;
      if (!key && kind === 'passphrase' && opts.askPassphrase) {
        const typed = await opts.askPassphrase(this.file);
        if (typed !== null && typed.length > 0) key = asked = { kind: 'passphrase', passphrase: Buffer.from(typed), file: '(typed passphrase)' };
      }
      try {
        await this.unlock(h, key, kind, Boolean(opts.lockedOk));
      } finally {
        // A passphrase typed at the prompt is ours to wipe; given ones are their owner's.
        if (asked?.kind === 'passphrase') asked.passphrase.fill(0);
      }
      if (this.locked) return;
    }
    const m = await this.tar.next((name) => {
      if (name !== ENTRY_META) throw corrupt(`expected the meta entry after the header, found ${JSON.stringify(name)}`, this.file);
      return MAX_META_BYTES;
    });
    if (!m) throw corrupt('the archive ends after the header', this.file);
    const payload = this.sealer.open(EntryKind.Meta, 0, m.data);
    if (!payload) throw corrupt('the meta fails authentication', this.file);
    this.meta = decodeMeta(payload, this.file, this.header.version);
  }

  private async unlock(h: BundleHeader, key: KeySource | null, kind: 'passphrase' | 'keyfile', lockedOk: boolean): Promise<void> {
    if (!key && lockedOk) {
      this.locked = true;
      return;
    }
    if (!key) {
      throw new CloneboxError('KEY_REQUIRED', `bundle is encrypted, ${this.file}`, {
        hint: kind === 'passphrase' ? 'pass its passphrase with --passphrase-file FILE' : 'pass its key with --key-file FILE',
      });
    }
    if (key.kind !== kind) {
      throw new CloneboxError(
        'WRONG_KEY',
        `bundle is encrypted with a ${kind === 'passphrase' ? 'passphrase' : 'key file'}, not a ${key.kind === 'passphrase' ? 'passphrase' : 'key file'}, ${this.file}`,
        {
          hint: kind === 'passphrase' ? 'use --passphrase-file' : 'use --key-file',
        },
      );
    }
    const master = await deriveMaster(key, { salt: h.salt, opslimit: h.opslimit, memlimit: h.memlimit });
    if (!keyCheck(master, headerPrefix(h)).equals(h.keyCheck)) {
      master.fill(0);
      throw new CloneboxError('WRONG_KEY', `wrong ${kind === 'passphrase' ? 'passphrase' : 'key'} for this bundle, ${this.file}`, {
        hint: `the bundle is intact; it was encrypted with another ${kind === 'passphrase' ? 'passphrase' : 'key'} (${key.file})`,
      });
    }
    this.sealer = new Sealer(h.checksum, encKey(master, h.bundleId));
    this.idk = idKey(master);
    master.fill(0);
  }

  /**
   * Two buffers take turns for pack entries (and two for decrypted payloads): pack k is read into
   * buffer k % 2 while the caller still works on pack k - 1 in the other one.
   */
  private readonly entryBufs: (Buffer | null)[] = [null, null];
  private readonly plainBufs: (Buffer | null)[] = [null, null];

  private static turn(bufs: (Buffer | null)[], k: number, size: number): Buffer {
    const b = bufs[k % 2];
    if (b && b.length >= size) return b.subarray(0, size);
    // Room to spare: a pack a little larger than the last must not cost a fresh (page-faulting) buffer.
    // Shared memory: the workers decode frames where they lie, nothing is copied or transferred.
    const fresh = Buffer.from(new SharedArrayBuffer(Math.max(Math.ceil(size * 1.25), 12 * 1024 * 1024)));
    bufs[k % 2] = fresh;
    return fresh.subarray(0, size);
  }

  private fetch(): Promise<{ name: string; data: Buffer; offset: number } | null> {
    const want = packEntryName(this.packsSeen);
    const k = this.packsSeen;
    return this.tar.next(
      (name) => {
        if (name === want) return MAX_PACK_BYTES;
        if (name === ENTRY_SEAL) return MAX_SEAL_BYTES;
        throw corrupt(`expected ${want} or seal, found ${JSON.stringify(name)}`, this.file);
      },
      (size) => BundleReader.turn(this.entryBufs, k, size),
    );
  }

  /**
   * The next pack's payload (authenticated), or null once the seal has been read and checked to be the
   * last entry. The following entry is read ahead while the caller works on this one.
   */
  async nextPack(): Promise<Buffer | null> {
    if (this.seal) return null;
    const e = await (this.pending ?? this.fetch());
    this.pending = null;
    if (!e) throw corrupt(`the archive ends after ${this.packsSeen} pack(s), without its seal (cut short?)`, this.file);
    if (e.name === ENTRY_SEAL) {
      const payload = this.sealer.open(EntryKind.Seal, 0, e.data);
      if (!payload) throw corrupt('the seal fails authentication', this.file);
      this.seal = decodeSeal(payload, this.meta, this.file);
      if (this.seal.packs !== this.packsSeen) throw corrupt(`the seal counts ${this.seal.packs} packs, the archive holds ${this.packsSeen}`, this.file);
      const after = await this.tar.next((name) => {
        throw corrupt(`unexpected entry ${JSON.stringify(name)} after the seal`, this.file);
      });
      if (after) throw corrupt('unexpected entry after the seal', this.file);
      return null;
    }
    const index = this.packsSeen;
    if (index >= MAX_PACKS) throw corrupt('too many packs', this.file);
    const payload = this.sealer.open(EntryKind.Pack, index, e.data, (size) => BundleReader.turn(this.plainBufs, index, size));
    if (!payload) throw corrupt(`${e.name} fails authentication (changed, damaged, or moved from another position or bundle)`, this.file);
    this.packAt[index] = { offset: e.offset, nonce: this.sealer.encrypted ? Buffer.from(e.data.subarray(0, 24)) : null };
    this.lastPayload = payload;
    this.packsSeen++;
    this.pending = this.fetch();
    this.pending.catch(() => undefined); // surfaces on the next call
    return payload;
  }

  destroy(): void {
    this.tar.destroy();
    this.rereadFh?.then((fh) => fh.close()).catch(() => undefined);
    this.rereadFh = null;
  }
}
