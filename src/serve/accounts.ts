/**
 * The service's accounts: <home>/serve/accounts.json, mode 0600, replaced atomically. Each account has a
 * name, a role and an Argon2id hash of its password (libsodium's crypto_pwhash_str: the salt and the
 * cost parameters are inside the string). Passwords never reach the file, argv or a log.
 *
 * Roles (Redfish's predefined ones): ReadOnly reads; Operator also creates, reverts and deletes
 * snapshots; Administrator also manages accounts and system limits.
 */
import { mkdir, open, readFile, rename, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import type Sodium from 'sodium-native';
import { CloneboxError, NAME_RE } from '../index.js';

export const ROLES = ['Administrator', 'Operator', 'ReadOnly'] as const;
export type Role = (typeof ROLES)[number];

export interface Account {
  name: string;
  role: Role;
  /** `$argon2id$v=19$m=...,t=...,p=1$salt$hash` */
  hash: string;
  created_at: string;
}

/** What `user list` shows: never the hash. */
export interface AccountView {
  name: string;
  role: Role;
  created_at: string;
}

interface AccountsFile {
  version: 1;
  accounts: Account[];
}

/** A password longer than this is refused rather than hashed (libsodium takes any length; a body cap is ours). */
const MAX_PASSWORD = 1024;
/** Bounded file: a hand-edited or hostile file cannot make the service read gigabytes. */
const MAX_FILE = 1024 * 1024;

let sodium: typeof Sodium | null = null;
function na(): typeof Sodium {
  sodium ??= createRequire(import.meta.url)('sodium-native') as typeof Sodium;
  return sodium;
}

export function accountsPath(home: string): string {
  return path.join(home, 'serve', 'accounts.json');
}

function isRole(v: unknown): v is Role {
  return typeof v === 'string' && (ROLES as readonly string[]).includes(v);
}

function checkPassword(password: string): Buffer {
  const buf = Buffer.from(password, 'utf8');
  if (buf.length < 8) throw CloneboxError.USAGE('the password is shorter than 8 bytes', { hint: 'choose a longer password' });
  if (buf.length > MAX_PASSWORD) throw CloneboxError.USAGE(`the password is longer than ${MAX_PASSWORD} bytes`);
  return buf;
}

async function hashPassword(password: string): Promise<string> {
  const s = na();
  const out = Buffer.alloc(s.crypto_pwhash_STRBYTES);
  await s.crypto_pwhash_str_async(out, checkPassword(password), s.crypto_pwhash_OPSLIMIT_INTERACTIVE, s.crypto_pwhash_MEMLIMIT_INTERACTIVE);
  const end = out.indexOf(0);
  return out.subarray(0, end < 0 ? out.length : end).toString('ascii');
}

export async function verifyPassword(hash: string, password: string): Promise<boolean> {
  const s = na();
  const pw = Buffer.from(password, 'utf8');
  if (pw.length === 0 || pw.length > MAX_PASSWORD || !hash.startsWith('$argon2id$')) return false;
  const str = Buffer.alloc(s.crypto_pwhash_STRBYTES);
  if (Buffer.byteLength(hash) >= str.length) return false;
  str.write(hash, 'ascii');
  return s.crypto_pwhash_str_verify_async(str, pw);
}

function parse(text: string, file: string): AccountsFile {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw CloneboxError.STORE_CORRUPT(`accounts file is damaged (${(err as Error).message}), ${file}`);
  }
  const d = doc as Partial<AccountsFile>;
  if (d?.version !== 1 || !Array.isArray(d.accounts)) throw CloneboxError.STORE_CORRUPT(`accounts file has no version 1 account list, ${file}`);
  for (const a of d.accounts) {
    if (typeof a?.name !== 'string' || !isRole(a.role) || typeof a.hash !== 'string' || typeof a.created_at !== 'string') {
      throw CloneboxError.STORE_CORRUPT(`accounts file holds a malformed account, ${file}`);
    }
  }
  return d as AccountsFile;
}

/** Reads the accounts (none when the file does not exist). */
export async function loadAccounts(home: string): Promise<Account[]> {
  const file = accountsPath(home);
  let text: string;
  try {
    const st = await stat(file);
    if (st.size > MAX_FILE) throw CloneboxError.STORE_CORRUPT(`accounts file is larger than ${MAX_FILE} bytes, ${file}`);
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err instanceof CloneboxError ? err : CloneboxError.IO(`cannot read ${file}: ${(err as Error).message}`);
  }
  return parse(text, file).accounts;
}

async function save(home: string, accounts: Account[]): Promise<void> {
  const file = accountsPath(home);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  // 0600 from the first byte (mode on create, and chmod in case the temp name existed), synced, then
  // renamed over the old file: a crash leaves the old accounts or the new ones, never a mix.
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.chmod(0o600);
    await fh.writeFile(`${JSON.stringify({ version: 1, accounts } satisfies AccountsFile, null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  const dir = await open(path.dirname(file), 'r');
  await dir.sync().finally(() => dir.close());
}

function view(a: Account): AccountView {
  return { name: a.name, role: a.role, created_at: a.created_at };
}

export async function listAccounts(home: string): Promise<AccountView[]> {
  return (await loadAccounts(home)).map(view);
}

export async function addAccount(home: string, name: string, role: Role, password: string): Promise<AccountView> {
  if (!NAME_RE.test(name))
    throw CloneboxError.BAD_NAME(`invalid user name ${JSON.stringify(name)}`, {
      hint: 'names start with a letter or digit and use only letters, digits, ".", "_" and "-" (at most 128)',
    });
  if (!isRole(role)) throw CloneboxError.USAGE(`unknown role ${JSON.stringify(role)}`, { hint: `use one of ${ROLES.join(', ')}` });
  const accounts = await loadAccounts(home);
  if (accounts.some((a) => a.name === name))
    throw CloneboxError.USER_EXISTS(`user ${name} already exists`, { hint: 'use `clonebox user passwd` to change the password' });
  const a: Account = { name, role, hash: await hashPassword(password), created_at: new Date().toISOString() };
  await save(home, [...accounts, a]);
  return view(a);
}

export async function removeAccount(home: string, name: string): Promise<AccountView> {
  const accounts = await loadAccounts(home);
  const a = accounts.find((x) => x.name === name);
  if (!a) throw CloneboxError.USER_NOT_FOUND(`no such user ${name}`, { hint: 'see `clonebox user list`' });
  await save(
    home,
    accounts.filter((x) => x !== a),
  );
  return view(a);
}

export async function changePassword(home: string, name: string, password: string): Promise<AccountView> {
  const accounts = await loadAccounts(home);
  const a = accounts.find((x) => x.name === name);
  if (!a) throw CloneboxError.USER_NOT_FOUND(`no such user ${name}`, { hint: 'see `clonebox user list`' });
  const hash = await hashPassword(password);
  await save(
    home,
    accounts.map((x) => (x === a ? { ...a, hash } : x)),
  );
  return view(a);
}
