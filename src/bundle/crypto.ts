/**
 * Keys and sealing for bundles (libsodium through sodium-native).
 *
 *   master key K    32 bytes: a key file's content, or Argon2id13(passphrase, salt, opslimit, memlimit)
 *                   with the parameters and salt stored in the header
 *   key check       BLAKE2b-256(key = K, header bytes 0..71): tells a wrong key from a damaged bundle
 *   K_enc           BLAKE2b-256(key = K, "clonebox-bundle/v1/enc" || bundle id): one key per bundle
 *   K_id            BLAKE2b-256(key = K, "clonebox-bundle/v1/block-id"): block ids are
 *                   BLAKE2b-256(key = K_id, SHA-256(block)), so equal blocks under different keys (or
 *                   a guessed plaintext) cannot be recognised without the key
 *
 * Every entry after the header is sealed with associated data = header checksum || kind || index, so an
 * entry cannot move to another position or another bundle. Plain bundles use the same framing with a
 * SHA-256 tag: that catches damage, truncation and mix-ups (not forgery: anyone may re-hash). A plain
 * pack's tag skips its frames' compressed bytes: each block in them is checked against its SHA-256 id
 * after decompression anyway, and hashing them twice was a visible share of the export's time
 * (bench/README.md, "Figures behind the code").
 */
import { createHash, randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type Sodium from 'sodium-native';
import { CloneboxError, ioError } from '../errors.js';
import { EntryKind, NONCE_BYTES, TAG_AEAD_BYTES, TAG_PLAIN_BYTES } from './format.js';
import { packDigest } from './packs.js';

const KEY_BYTES = 32;

/**
 * libsodium, loaded on first use: only encrypted bundles need it, and loading the addon would add to
 * the start of every plain export and import (bench/README.md).
 */
let sodiumLib: typeof Sodium | null = null;
function na(): typeof Sodium {
  sodiumLib ??= createRequire(import.meta.url)('sodium-native') as typeof Sodium;
  return sodiumLib;
}

export type KeySource = { kind: 'passphrase'; passphrase: Buffer; file: string } | { kind: 'keyfile'; key: Buffer; file: string };

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

function blake2b256(key: Uint8Array | null, ...parts: Uint8Array[]): Buffer {
  const out = Buffer.alloc(32);
  const input = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  na().crypto_generichash(out, input, key ?? undefined);
  return out;
}

export function randomBytes(n: number): Buffer {
  // The OS CSPRNG, as libsodium's randombytes uses (without loading libsodium for it).
  return randomFillSync(Buffer.alloc(n));
}

/** Passphrase and key files are small; anything larger is not one (and is not read whole). */
const MAX_SECRET_FILE = 64 * 1024;

/**
 * Reads a secret file through one descriptor (what is checked is what is read): its mode (regular
 * files only; pipes such as `<(cmd)` have no meaningful one) and at most MAX_SECRET_FILE bytes.
 */
async function readSecretFile(file: string, what: string): Promise<{ bytes: Buffer; mode: number | null }> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    throw ioError(err, `cannot read ${what}`, file);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new CloneboxError('USAGE', `${what} is a directory, ${file}`);
    const buf = Buffer.alloc(MAX_SECRET_FILE + 1);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
      if (bytesRead === 0) break;
      got += bytesRead;
      if (got > MAX_SECRET_FILE) {
        buf.fill(0);
        throw new CloneboxError('USAGE', `${what} is larger than ${MAX_SECRET_FILE} bytes, ${file}`);
      }
    }
    const bytes = Buffer.from(buf.subarray(0, got));
    buf.fill(0);
    return { bytes, mode: st.isFile() ? st.mode & 0o777 : null };
  } catch (err) {
    throw ioError(err, `cannot read ${what}`, file);
  } finally {
    await fh.close();
  }
}

/** The bytes of a passphrase as given in a file, on stdin or by a command: one trailing newline (CRLF too) goes, as restic does. */
function trimPassphrase(text: Buffer): Buffer {
  let end = text.length;
  if (end > 0 && text[end - 1] === 0x0a) end--;
  if (end > 0 && text[end - 1] === 0x0d) end--;
  return text.subarray(0, end);
}

/** Whether every byte is a printable ASCII character: text someone typed, not 32 random bytes. */
function isPrintable(b: Buffer): boolean {
  for (const x of b) if (x < 0x20 || x > 0x7e) return false;
  return true;
}

/**
 * A key file's key: exactly 32 raw bytes (what `key generate` writes) or 64 hex digits (and a newline).
 * 32 printable characters are a passphrase someone saved, not a key: taking them as the key would skip
 * the memory-hard KDF a passphrase needs, so they are refused. A random key is all printable with a
 * chance of (95/256)^32, about 2e-14, and `key generate` never writes one.
 */
function parseKeyFile(raw: Buffer, file: string): Buffer {
  const bad = (why: string) =>
    new CloneboxError('BAD_KEY_FILE', `${why}, ${file}`, {
      hint: 'create a key with `clonebox key generate -o FILE`; a passphrase goes in --passphrase-file',
    });
  if (raw.length === KEY_BYTES) {
    if (isPrintable(raw)) throw bad('key file holds 32 printable characters, a passphrase rather than a key');
    return Buffer.from(raw);
  }
  const t = trimPassphrase(raw);
  if (t.length === 64 && /^[0-9a-fA-F]{64}$/.test(t.toString('latin1'))) return Buffer.from(t.toString('latin1'), 'hex');
  throw bad('key file must hold exactly 32 bytes (or 64 hex digits)');
}

/**
 * Reads --passphrase-file or --key-file. A key file others can read (any group or other permission
 * bit, as ssh judges private keys) is refused unless `allowInsecureKeyFile`. The caller owns the
 * returned buffers and zeroes them after use.
 */
export async function loadKeySource(opts: {
  passphraseFile?: string | undefined;
  keyFile?: string | undefined;
  allowInsecureKeyFile?: boolean | undefined;
}): Promise<KeySource | null> {
  if (opts.passphraseFile !== undefined && opts.keyFile !== undefined) {
    throw new CloneboxError('USAGE', 'give either --passphrase-file or --key-file, not both');
  }
  if (opts.passphraseFile !== undefined) {
    const file = opts.passphraseFile;
    const { bytes } = await readSecretFile(file, 'passphrase file');
    const passphrase = Buffer.from(trimPassphrase(bytes));
    bytes.fill(0);
    if (passphrase.length === 0) throw new CloneboxError('USAGE', `passphrase file is empty, ${file}`);
    return { kind: 'passphrase', passphrase, file };
  }
  if (opts.keyFile !== undefined) {
    const file = opts.keyFile;
    const { bytes, mode } = await readSecretFile(file, 'key file');
    try {
      if (mode !== null && (mode & 0o077) !== 0 && !opts.allowInsecureKeyFile) {
        throw new CloneboxError('BAD_KEY_FILE', `key file can be read by others (mode ${mode.toString(8).padStart(4, '0')}), ${file}`, {
          hint: `restrict it with \`chmod 600 ${file}\`, or pass --allow-insecure-key-file`,
        });
      }
      return { kind: 'keyfile', key: parseKeyFile(bytes, file), file };
    } finally {
      bytes.fill(0);
    }
  }
  return null;
}

/** Derives the master key. Argon2id runs in libsodium's thread, off the event loop. */
export async function deriveMaster(src: KeySource, kdf: { salt: Buffer; opslimit: number; memlimit: number }): Promise<Buffer> {
  if (src.kind === 'keyfile') return Buffer.from(src.key);
  const out = Buffer.alloc(KEY_BYTES);
  await na().crypto_pwhash_async(out, src.passphrase, kdf.salt, kdf.opslimit, kdf.memlimit, na().crypto_pwhash_ALG_ARGON2ID13);
  return out;
}

export function keyCheck(master: Buffer, headerPrefix: Buffer): Buffer {
  return blake2b256(master, headerPrefix);
}

export function encKey(master: Buffer, bundleId: Buffer): Buffer {
  return blake2b256(master, Buffer.from('clonebox-bundle/v1/enc', 'latin1'), bundleId);
}

export function idKey(master: Buffer): Buffer {
  return blake2b256(master, Buffer.from('clonebox-bundle/v1/block-id', 'latin1'));
}

/**
 * A key derived from the master key for a purpose named by `label` (and bound to `parts`, such as a
 * repository id): BLAKE2b-256(key = K, label || parts). The archive repository derives its keys so.
 */
export function subKey(master: Buffer, label: string, ...parts: Uint8Array[]): Buffer {
  return blake2b256(master, Buffer.from(label, 'latin1'), ...parts);
}

/** A block's id as stored: its SHA-256, or the keyed BLAKE2b of that SHA-256 in encrypted bundles. */
export function blockId(sha: Uint8Array, idk: Buffer | null): Buffer {
  if (!idk) return Buffer.from(sha.buffer, sha.byteOffset, sha.byteLength);
  return blake2b256(idk, sha);
}

function associatedData(headerChecksum: Buffer, kind: EntryKind, index: number): Buffer {
  const ad = Buffer.alloc(32 + 1 + 4);
  headerChecksum.copy(ad, 0);
  ad.writeUInt8(kind, 32);
  ad.writeUInt32BE(index, 33);
  return ad;
}

/** Seals and opens the entries of one bundle. `key` null: plain bundle (SHA-256 tags). */
export class Sealer {
  constructor(
    private readonly headerChecksum: Buffer,
    private readonly key: Buffer | null,
  ) {}

  get encrypted(): boolean {
    return this.key !== null;
  }

  /** Bytes `seal()` adds to a payload. */
  get overhead(): number {
    return this.key ? NONCE_BYTES + TAG_AEAD_BYTES : TAG_PLAIN_BYTES;
  }

  /** A plain entry's tag: SHA-256 of AD and payload (for packs, the payload less its frames' data). */
  private plainTag(kind: EntryKind, index: number, payload: Buffer): Buffer {
    const ad = associatedData(this.headerChecksum, kind, index);
    return kind === EntryKind.Pack ? packDigest(ad, payload, `pack ${index}`, 'bundle') : sha256(ad, payload);
  }

  /** `alloc(n)` gives the sealed entry's memory (exactly n bytes; e.g. reused buffers). */
  seal(kind: EntryKind, index: number, payload: Buffer, alloc: (size: number) => Buffer = (n) => Buffer.allocUnsafe(n)): Buffer {
    const ad = associatedData(this.headerChecksum, kind, index);
    if (!this.key) {
      const out = alloc(payload.length + TAG_PLAIN_BYTES);
      payload.copy(out, 0);
      this.plainTag(kind, index, payload).copy(out, payload.length);
      return out;
    }
    const out = alloc(NONCE_BYTES + payload.length + TAG_AEAD_BYTES);
    const nonce = out.subarray(0, NONCE_BYTES);
    na().randombytes_buf(nonce);
    na().crypto_aead_xchacha20poly1305_ietf_encrypt(out.subarray(NONCE_BYTES), payload, ad, null, nonce, this.key);
    return out;
  }

  /**
   * The sealed entry as parts to write one after the other (a plain entry's payload is not copied;
   * `alloc` as for seal(), used only when encrypting).
   */
  sealParts(kind: EntryKind, index: number, payload: Buffer, alloc?: (size: number) => Buffer): Buffer[] {
    if (this.key) return [this.seal(kind, index, payload, alloc)];
    return [payload, this.plainTag(kind, index, payload)];
  }

  /**
   * Where payload byte `p` of a sealed entry lies within the entry's data, and how to turn the bytes
   * found there back into payload bytes. Only for entries that already authenticated in full: this
   * reads a part again later (a frame of an earlier pack), and the caller checks the result by block id.
   */
  rangeOf(p: number, length: number): { at: number; length: number; skip: number; block: number } {
    if (!this.key) return { at: p, length, skip: 0, block: 0 };
    const block = Math.floor(p / 64);
    return { at: NONCE_BYTES + block * 64, length: p - block * 64 + length, skip: p - block * 64, block };
  }

  /** Decrypts bytes read at `rangeOf(...)` of an encrypted entry whose nonce is `nonce`. */
  decryptRange(nonce: Buffer, bytes: Buffer, range: { skip: number; block: number }): Buffer {
    if (!this.key) return bytes;
    const out = Buffer.allocUnsafe(bytes.length);
    // The AEAD encrypts the message with the XChaCha20 keystream from block 1 on.
    na().crypto_stream_xchacha20_xor_ic(out, bytes, nonce, 1 + range.block, this.key);
    return out.subarray(range.skip);
  }

  /** Returns the payload, or null when the entry does not authenticate at this position. */
  open(kind: EntryKind, index: number, sealed: Buffer, alloc: (size: number) => Buffer = (n) => Buffer.allocUnsafe(n)): Buffer | null {
    const ad = associatedData(this.headerChecksum, kind, index);
    if (!this.key) {
      if (sealed.length < TAG_PLAIN_BYTES) return null;
      const payload = sealed.subarray(0, sealed.length - TAG_PLAIN_BYTES);
      const tag = sealed.subarray(sealed.length - TAG_PLAIN_BYTES);
      let want: Buffer;
      try {
        want = this.plainTag(kind, index, payload);
      } catch {
        return null; // a pack that does not even parse
      }
      return want.equals(tag) ? payload : null;
    }
    if (sealed.length < NONCE_BYTES + TAG_AEAD_BYTES) return null;
    const nonce = sealed.subarray(0, NONCE_BYTES);
    const out = alloc(sealed.length - NONCE_BYTES - TAG_AEAD_BYTES);
    try {
      na().crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, sealed.subarray(NONCE_BYTES), ad, nonce, this.key);
    } catch {
      return null;
    }
    return out;
  }
}

/** `clonebox key generate`: 32 random bytes in a new file only its owner can read. */
export async function generateKeyFile(file: string): Promise<void> {
  let key = randomBytes(KEY_BYTES);
  // Never a key that loadKeySource would take for a saved passphrase (a chance of about 2e-14).
  while (isPrintable(key)) key = randomBytes(KEY_BYTES);
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(file, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new CloneboxError('FILE_EXISTS', `file already exists, ${file}`, { hint: 'a key file is never overwritten; pick another name' });
    }
    throw ioError(err, 'cannot create key file', file);
  }
  try {
    await fh.writeFile(key);
    await fh.sync();
  } finally {
    await fh.close();
    na().sodium_memzero(key);
  }
}
