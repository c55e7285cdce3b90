/**
 * The workstation's identity: one Ed25519 key pair and a workstation name per home.
 *
 *   <home>/identity/               mode 0700
 *   <home>/identity/identity.json  mode 0600: {"format": 1, "public_key", "secret_key", "name", "created_at"}
 *
 * The key pair is the Noise static key of every connection this workstation makes, so a peer's public
 * key is authenticated by the handshake itself. `secret_key` is in libsodium's 64-byte layout (seed then
 * public key), which is what Hyperswarm takes. The name defaults to the host name and is set by
 * `team create/join --name`; the key pair never changes once made.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmod, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { createFileExclusive, ensureDir, writeFileAtomic } from '../fsutil.js';
import { checkName, NAME_RE } from '../names.js';
import { ensureHome, type Home } from '../store/home.js';

export interface KeyPair {
  publicKey: Buffer;
  secretKey: Buffer;
}

export interface Identity extends KeyPair {
  name: string;
  createdAt: string;
}

interface IdentityFile {
  format: 1;
  public_key: string;
  secret_key: string;
  name: string;
  created_at: string;
}

function identityDir(home: Home): string {
  return path.join(home.root, 'identity');
}

export function identityFile(home: Home): string {
  return path.join(identityDir(home), 'identity.json');
}

/** The host name made into a valid workstation name ("workstation" when nothing usable is left). */
export function defaultWorkstationName(hostname = os.hostname()): string {
  const cleaned = hostname
    .split('.')[0]!
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 128);
  return NAME_RE.test(cleaned) ? cleaned : 'workstation';
}

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/** Node's private key object for a 32-byte Ed25519 seed (libsodium keeps the seed as the first half). */
export function ed25519PrivateKey(seed: Buffer): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

/** The Ed25519 public key of a 32-byte seed. */
export function publicKeyOfSeed(seed: Buffer): Buffer {
  return Buffer.from(createPublicKey(ed25519PrivateKey(seed)).export({ format: 'jwk' }).x!, 'base64url');
}

/** A fresh Ed25519 key pair in libsodium's layout (secret key = seed || public key). */
function generateKeyPair(): KeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const seed = Buffer.from(jwk.d!, 'base64url');
  const publicKey = Buffer.from(jwk.x!, 'base64url');
  return { publicKey, secretKey: Buffer.concat([seed, publicKey]) };
}

function parse(text: string, file: string): Identity {
  try {
    const rec = JSON.parse(text) as IdentityFile;
    if (rec.format !== 1) throw new Error(`unknown format ${String(rec.format)}`);
    const publicKey = Buffer.from(rec.public_key, 'hex');
    const secretKey = Buffer.from(rec.secret_key, 'hex');
    if (publicKey.length !== 32 || secretKey.length !== 64) throw new Error('bad key length');
    // The secret key must hold the seed of exactly this public key: a mismatch would make every
    // handshake fail in confusing ways later.
    if (!secretKey.subarray(32).equals(publicKey) || !publicKeyOfSeed(secretKey.subarray(0, 32)).equals(publicKey)) {
      throw new Error('public key does not match the secret key');
    }
    if (typeof rec.name !== 'string' || !NAME_RE.test(rec.name)) throw new Error('bad workstation name');
    return { publicKey, secretKey, name: rec.name, createdAt: String(rec.created_at) };
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `identity file is damaged (${(err as Error).message}), ${file}`, {
      hint: 'restore it from a backup; deleting it gives this workstation a new identity that teammates see as a new member',
    });
  }
}

function serialize(id: Identity): string {
  const rec: IdentityFile = {
    format: 1,
    public_key: id.publicKey.toString('hex'),
    secret_key: id.secretKey.toString('hex'),
    name: id.name,
    created_at: id.createdAt,
  };
  return `${JSON.stringify(rec, null, 2)}\n`;
}

export async function loadIdentity(home: Home): Promise<Identity | null> {
  const file = identityFile(home);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(err, 'cannot read identity', file);
  }
  return parse(text, file);
}

/**
 * The home's identity, created on first use. With `name`, the workstation name is set to it (validated);
 * without, a new identity is named after the host.
 */
export async function ensureIdentity(home: Home, name?: string): Promise<Identity> {
  if (name !== undefined) checkName('workstation', name);
  let id = await loadIdentity(home);
  if (!id) {
    const dir = identityDir(home);
    await ensureHome(home);
    await ensureDir(dir, 0o700);
    await chmod(dir, 0o700).catch(() => undefined);
    const fresh: Identity = { ...generateKeyPair(), name: name ?? defaultWorkstationName(), createdAt: new Date().toISOString() };
    if (await createFileExclusive(identityFile(home), serialize(fresh), 0o600)) return fresh;
    id = await loadIdentity(home); // another process won the race: use its key pair
    if (!id) throw new CloneboxError('IO', `identity vanished while being created, ${identityFile(home)}`);
  }
  if (name !== undefined && name !== id.name) {
    id = { ...id, name };
    await writeFileAtomic(identityFile(home), serialize(id), 0o600);
  }
  return id;
}

export function publicKeyHex(id: { publicKey: Buffer }): string {
  return id.publicKey.toString('hex');
}
