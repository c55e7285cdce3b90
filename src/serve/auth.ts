/**
 * Who is asking: HTTP Basic credentials or a Redfish session token (X-Auth-Token), checked against the
 * accounts file, and what their role lets them do. The accounts file is re-read when it changes (so
 * `clonebox user add|remove|passwd` take effect on a running service); sessions live in memory and die
 * with the service, after SESSION_TIMEOUT_S idle, or when their account is removed or its password changes.
 *
 * A Basic credential that verified is remembered (keyed by an HMAC under a per-process key, never the
 * password itself) until the accounts change, because each Argon2id verify costs ~0.1 s and 64 MiB.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { type Account, accountsPath, loadAccounts, type Role, verifyPassword } from './accounts.js';
import { MAX_CONCURRENT_VERIFIES, MAX_SESSIONS, SESSION_TIMEOUT_S } from './limits.js';

export interface Principal {
  user: string;
  role: Role;
  /** Set when authenticated by a session token. */
  sessionId: string | null;
}

export interface Session {
  id: string;
  token: string;
  user: string;
  /** The account's hash when the session began: a password change ends the session. */
  hash: string;
  created: number;
  lastUsed: number;
}

const RANK: Record<Role, number> = { ReadOnly: 0, Operator: 1, Administrator: 2 };

export function allows(role: Role, needed: Role): boolean {
  return RANK[role] >= RANK[needed];
}

/** A counting semaphore: at most n holders. */
class Gate {
  private held = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly n: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.held >= this.n) await new Promise<void>((r) => this.waiting.push(r));
    this.held++;
    try {
      return await fn();
    } finally {
      this.held--;
      this.waiting.shift()?.();
    }
  }
}

export class Authenticator {
  private accounts: Account[] = [];
  private stamp = '';
  private checkedAt = -Infinity;
  private readonly basicOk = new Map<string, string>();
  private readonly key = randomBytes(32);
  private readonly gate = new Gate(MAX_CONCURRENT_VERIFIES);
  readonly sessions = new Map<string, Session>();
  private readonly byToken = new Map<string, Session>();

  constructor(
    private readonly home: string,
    private readonly now: () => number,
  ) {}

  /**
   * Re-reads the accounts file when its size or mtime changed (checked at most once a second). The
   * guard calls it before each request, so that token() can answer without waiting. Null when no
   * check is due (no promise to wait for on the hot path).
   */
  refresh(): Promise<void> | null {
    const t = this.now();
    if (t - this.checkedAt < 1000) return null;
    this.checkedAt = t;
    return this.reload();
  }

  private async reload(): Promise<void> {
    const st = await stat(accountsPath(this.home)).catch(() => null);
    const stamp = st ? `${st.ino}:${st.size}:${st.mtimeMs}` : 'none';
    if (stamp === this.stamp) return;
    this.accounts = await loadAccounts(this.home);
    this.stamp = stamp;
    this.basicOk.clear();
    for (const s of [...this.sessions.values()]) {
      const a = this.accounts.find((x) => x.name === s.user);
      if (!a || a.hash !== s.hash) this.end(s.id);
    }
  }

  private account(name: string): Account | undefined {
    return this.accounts.find((a) => a.name === name);
  }

  /** Checks a user name and password; null when wrong (or the account does not exist). */
  async login(user: string, password: string): Promise<Account | null> {
    await this.refresh();
    const a = this.account(user);
    const mac = createHmac('sha256', this.key).update(user).update('\0').update(password).digest('base64');
    if (a && this.basicOk.get(mac) === a.hash) return a;
    // An unknown user costs a verify too, so that timing does not tell which names exist.
    const ok = await this.gate.run(() => verifyPassword(a?.hash ?? DUMMY_HASH, password));
    if (!a || !ok) return null;
    if (this.basicOk.size > 1000) this.basicOk.clear();
    this.basicOk.set(mac, a.hash);
    return a;
  }

  async basic(header: string): Promise<Principal | null> {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
    if (!m?.[1]) return null;
    const text = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = text.indexOf(':');
    if (colon <= 0) return null;
    const a = await this.login(text.slice(0, colon), text.slice(colon + 1));
    return a ? { user: a.name, role: a.role, sessionId: null } : null;
  }

  /** The session of a token (call refresh() first: accounts removed or changed end their sessions). */
  token(token: string): Principal | null {
    const s = this.byToken.get(token);
    if (!s) return null;
    if (this.now() - s.lastUsed > SESSION_TIMEOUT_S * 1000) {
      this.end(s.id);
      return null;
    }
    const a = this.account(s.user);
    if (!a || a.hash !== s.hash) {
      this.end(s.id);
      return null;
    }
    s.lastUsed = this.now();
    return { user: a.name, role: a.role, sessionId: s.id };
  }

  startSession(a: Account): Session {
    while (this.sessions.size >= MAX_SESSIONS) {
      const lru = [...this.sessions.values()].sort((x, y) => x.lastUsed - y.lastUsed)[0];
      if (!lru) break;
      this.end(lru.id);
    }
    const s: Session = {
      id: randomBytes(12).toString('hex'),
      token: randomBytes(32).toString('base64url'),
      user: a.name,
      hash: a.hash,
      created: this.now(),
      lastUsed: this.now(),
    };
    this.sessions.set(s.id, s);
    this.byToken.set(s.token, s);
    return s;
  }

  end(id: string): boolean {
    const s = this.sessions.get(id);
    if (!s) return false;
    this.sessions.delete(id);
    this.byToken.delete(s.token);
    return true;
  }
}

/** A valid Argon2id string of a random password: what an unknown user's attempt is checked against. */
const DUMMY_HASH = '$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$ZmFrZWhhc2hmYWtlaGFzaGZha2VoYXNoZmFrZWhhcw';
