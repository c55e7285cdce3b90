/**
 * Team records: <home>/teams/<team>.json (mode 0600, in a 0700 directory: it holds the team secret).
 *
 *   {"format": 1, "team", "secret" (hex), "created_at", "origin": "created"|"joined",
 *    "bootstrap": ["HOST:PORT", ...] (empty: public DHT), "members": [Member, ...]}
 *   Member = {"public_key" (hex), "name", "claimed_name", "first_seen", "last_seen", "catalog_key",
 *             "card": {"name", "sig" (hex)} | null, "via": name | null}
 *
 * Members are recorded the first time they complete the membership proof (trust on first use): a
 * public key keeps the name it was first seen with, and a name keeps the key it was first seen with.
 * A newcomer claiming a name already bound to another key (or to this workstation) is recorded as
 * "<name>-<first 8 hex digits of its key>", so `<vm>.<peer name>` can never be made to point at
 * someone else's chains by picking a name.
 */
import { chmod, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { CloneboxError, ioError } from '../errors.js';
import { createFileExclusive, ensureDir, writeFileAtomic } from '../fsutil.js';
import { checkName } from '../names.js';
import { ensureHome, type Home } from '../store/home.js';
import { acquireLock } from '../store/lock.js';
import { formatHostPort, type HostPort, parseHostPort } from './hostport.js';
import type { Identity } from './identity.js';
import { decodeInvite, encodeInvite } from './invite.js';
import { newTeamSecret, SECRET_BYTES } from './keys.js';
import { MAX_MEMBERS } from './limits.js';

export interface MemberRecord {
  public_key: string;
  /** The name this workstation uses for the member (stable once recorded). */
  name: string;
  /** The name the member last announced itself with. */
  claimed_name: string;
  first_seen: string;
  last_seen: string;
  /** Key of the member's catalog core, as first announced (null until it shares something). */
  catalog_key: string | null;
  /** The member's signed catalog card (cards.ts), kept to hand on: its signed name, signature, countersignature. */
  card?: { name: string; sig: string; csig?: string } | null;
  /** Set while the member is known only from a card a teammate handed on: that teammate's name. */
  via?: string | null;
}

export interface TeamRecord {
  format: 1;
  team: string;
  secret: string;
  created_at: string;
  origin: 'created' | 'joined';
  bootstrap: string[];
  members: MemberRecord[];
}

/** `team show --json` (the contract's shape, plus the bootstrap setting). */
export interface TeamView {
  team: string;
  self: { name: string; public_key: string };
  members: { name: string; public_key: string; first_seen: string; last_seen: string; via?: string }[];
  bootstrap: string[];
}

export function teamsDir(home: Home): string {
  return path.join(home.root, 'teams');
}

export function teamFile(home: Home, team: string): string {
  return path.join(teamsDir(home), `${team}.json`);
}

export function teamSecret(rec: TeamRecord): Buffer {
  return Buffer.from(rec.secret, 'hex');
}

export function teamBootstrap(rec: TeamRecord): HostPort[] {
  return rec.bootstrap.map((b) => parseHostPort(b, 'bootstrap'));
}

/**
 * The bootstrap nodes a command uses for this team: `--bootstrap` flags when given, else the team's
 * setting, else null (the public DHT).
 */
export function resolveBootstrap(rec: TeamRecord, flags?: HostPort[]): HostPort[] | null {
  if (flags?.length) return flags;
  return rec.bootstrap.length ? teamBootstrap(rec) : null;
}

export function teamInvite(rec: TeamRecord): string {
  return encodeInvite(teamSecret(rec), teamBootstrap(rec));
}

function serialize(rec: TeamRecord): string {
  return `${JSON.stringify(rec, null, 2)}\n`;
}

function validate(rec: TeamRecord, team: string, file: string): TeamRecord {
  try {
    if (rec.format !== 1) throw new Error(`unknown format ${String(rec.format)}`);
    if (rec.team !== team) throw new Error(`names team ${JSON.stringify(rec.team)}`);
    if (!/^[0-9a-f]+$/.test(rec.secret) || rec.secret.length !== SECRET_BYTES * 2) throw new Error('bad secret');
    if (!Array.isArray(rec.bootstrap) || !Array.isArray(rec.members)) throw new Error('unexpected shape');
    for (const b of rec.bootstrap) parseHostPort(b, 'bootstrap');
    return rec;
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `team record is damaged (${(err as Error).message}), ${file}`);
  }
}

export async function loadTeam(home: Home, team: string): Promise<TeamRecord> {
  checkName('team', team);
  const file = teamFile(home, team);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CloneboxError('TEAM_NOT_FOUND', `no such team, ${team}`, {
        hint: 'create it with `clonebox team create` or join it with `clonebox team join --invite`',
      });
    }
    throw ioError(err, 'cannot read team record', file);
  }
  let rec: TeamRecord;
  try {
    rec = JSON.parse(text) as TeamRecord;
  } catch (err) {
    throw new CloneboxError('STORE_CORRUPT', `team record is damaged (${(err as Error).message}), ${file}`);
  }
  return validate(rec, team, file);
}

export async function listTeams(home: Home): Promise<string[]> {
  try {
    return (await readdir(teamsDir(home)))
      .filter((n) => n.endsWith('.json') && !n.startsWith('.'))
      .map((n) => n.slice(0, -5))
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, 'cannot list teams', teamsDir(home));
  }
}

async function ensureTeamsDir(home: Home): Promise<void> {
  await ensureHome(home);
  await ensureDir(teamsDir(home), 0o700);
  await chmod(teamsDir(home), 0o700).catch(() => undefined);
}

function teamExists(team: string): CloneboxError {
  return new CloneboxError('TEAM_EXISTS', `team already exists, ${team}`, { hint: 'pick another team name, or see `clonebox team show`' });
}

function newRecord(team: string, secret: Buffer, origin: TeamRecord['origin'], bootstrap: HostPort[]): TeamRecord {
  return {
    format: 1,
    team,
    secret: secret.toString('hex'),
    created_at: new Date().toISOString(),
    origin,
    bootstrap: bootstrap.map(formatHostPort),
    members: [],
  };
}

/** Makes a new team with a fresh secret. Returns the record and its invite. */
export async function createTeam(home: Home, team: string, opts: { bootstrap?: HostPort[] } = {}): Promise<{ record: TeamRecord; invite: string }> {
  checkName('team', team);
  const record = newRecord(team, newTeamSecret(), 'created', opts.bootstrap ?? []);
  const invite = teamInvite(record); // checks the bootstrap list fits before anything is written
  await ensureTeamsDir(home);
  if (!(await createFileExclusive(teamFile(home, team), serialize(record), 0o600))) throw teamExists(team);
  return { record, invite };
}

/**
 * Stores a team from an invite (checked before anything is written). Joining again with the same
 * invite is harmless; a team of that name with another secret is refused. `bootstrap` overrides the
 * invite's bootstrap nodes.
 */
export async function joinTeam(
  home: Home,
  team: string,
  inviteText: string,
  opts: { bootstrap?: HostPort[] } = {},
): Promise<{ record: TeamRecord; already: boolean }> {
  checkName('team', team);
  const invite = decodeInvite(inviteText);
  const record = newRecord(team, invite.secret, 'joined', opts.bootstrap ?? invite.bootstrap);
  await ensureTeamsDir(home);
  // One team, one local name: a second name for the same secret would run two catalogs and two
  // memberships of one workstation in one team.
  for (const other of await listTeams(home)) {
    if (other === team) continue;
    const rec = await loadTeam(home, other).catch(() => null);
    if (rec?.secret === record.secret) {
      throw new CloneboxError('TEAM_EXISTS', `this workstation is in that team already, as team ${other}`, {
        hint: `use --team ${other} (or \`clonebox team leave ${other}\` first)`,
      });
    }
  }
  if (await createFileExclusive(teamFile(home, team), serialize(record), 0o600)) return { record, already: false };
  const existing = await loadTeam(home, team);
  if (existing.secret !== record.secret) throw teamExists(team);
  if (opts.bootstrap) return { record: await setTeamBootstrap(home, team, opts.bootstrap), already: true };
  return { record: existing, already: true };
}

/** Runs `fn` on the team record under the team's lock and saves what it returns. */
async function updateTeam(home: Home, team: string, fn: (rec: TeamRecord) => TeamRecord): Promise<TeamRecord> {
  const lock = await acquireLock(`${teamFile(home, team)}.lock`, `team ${team}`, 'team update');
  try {
    const next = fn(await loadTeam(home, team));
    await writeFileAtomic(teamFile(home, team), serialize(next), 0o600);
    return next;
  } finally {
    await lock.release();
  }
}

export async function setTeamBootstrap(home: Home, team: string, bootstrap: HostPort[]): Promise<TeamRecord> {
  encodeInvite(Buffer.alloc(SECRET_BYTES), bootstrap); // same limits as an invite
  return updateTeam(home, team, (rec) => ({ ...rec, bootstrap: bootstrap.map(formatHostPort) }));
}

export interface SeenMember {
  member: MemberRecord;
  /** First time this key completed the proof here. */
  isNew: boolean;
  /** The claimed name was taken (by another key or by this workstation), so a suffixed name was given. */
  renamed: boolean;
}

/**
 * The name a newcomer gets: its claim, unless that is taken, then "<claim>-<8 hex of its key>". A member
 * known only from a card a teammate handed on (`provisional`) always gets the suffixed name: a card
 * cannot reserve a plain name, so a member cannot squat a teammate's name for a newcomer who has not
 * met that teammate yet. Met directly, it takes its plain name if that is free (recordMember).
 */
export function memberName(
  rec: TeamRecord,
  self: { name: string; publicKey: Buffer },
  publicKey: string,
  claimed: string,
  provisional = false,
): { name: string; renamed: boolean } {
  const taken = provisional || claimed === self.name || rec.members.some((m) => m.name === claimed && m.public_key !== publicKey);
  if (!taken) return { name: claimed, renamed: false };
  const suffix = `-${publicKey.slice(0, 8)}`;
  return { name: claimed.slice(0, 128 - suffix.length) + suffix, renamed: true };
}

/** Records a peer that completed the membership proof (trust on first use, see the module comment). */
export async function recordMember(
  home: Home,
  team: string,
  self: Identity,
  peer: { publicKey: Buffer; name: string; catalogKey: Buffer | null },
): Promise<SeenMember> {
  const pk = peer.publicKey.toString('hex');
  const now = new Date().toISOString();
  let result: SeenMember | null = null;
  await updateTeam(home, team, (rec) => {
    const members = rec.members.map((m) => ({ ...m }));
    const known = members.find((m) => m.public_key === pk);
    if (known) {
      known.last_seen = now;
      known.claimed_name = peer.name;
      // Met directly for the first time: a provisional name (from a card) becomes the plain one if free.
      if (known.via) known.name = memberName(rec, self, pk, peer.name).name;
      known.via = null;
      if (known.catalog_key === null && peer.catalogKey) known.catalog_key = peer.catalogKey.toString('hex');
      result = { member: known, isNew: false, renamed: known.name !== peer.name };
    } else {
      if (members.length >= MAX_MEMBERS) {
        throw new CloneboxError(
          'SYNC_LIMIT',
          `team ${team} has ${members.length} members already (the limit): ${peer.name} (${pk.slice(0, 8)}) is not recorded`,
          {
            hint: 'a team is a handful of workstations: make a new team for those who stay',
          },
        );
      }
      const { name, renamed } = memberName(rec, self, pk, peer.name);
      const member: MemberRecord = {
        public_key: pk,
        name,
        claimed_name: peer.name,
        first_seen: now,
        last_seen: now,
        catalog_key: peer.catalogKey ? peer.catalogKey.toString('hex') : null,
      };
      members.push(member);
      result = { member, isNew: true, renamed };
    }
    return { ...rec, members };
  });
  return result!;
}

/**
 * Records a verified catalog card (cards.ts), from the member itself or handed on by `via`. A card for
 * a known member only fills in what is missing (a catalog key recorded first stays); a card for a
 * stranger records it as a member known through `via` (its name under the first-seen rules). Returns
 * the member when the card's catalog is the one recorded for it, else null.
 */
export async function recordCard(
  home: Home,
  team: string,
  self: Identity,
  card: { identity: Buffer; name: string; catalog: Buffer; sig: Buffer; csig: Buffer },
  via: string | null,
): Promise<MemberRecord | null> {
  const pk = card.identity.toString('hex');
  if (card.identity.equals(self.publicKey)) return null;
  const catalog = card.catalog.toString('hex');
  let result: MemberRecord | null = null;
  await updateTeam(home, team, (rec) => {
    const members = rec.members.map((m) => ({ ...m }));
    const known = members.find((m) => m.public_key === pk);
    if (known) {
      if (known.catalog_key === null) known.catalog_key = catalog;
      if (known.catalog_key !== catalog) return rec;
      known.card = { name: card.name, sig: card.sig.toString('hex'), csig: card.csig.toString('hex') };
      result = known;
    } else {
      if (members.length >= MAX_MEMBERS) return rec; // the limit: a stranger's card is not recorded
      const now = new Date().toISOString();
      const { name } = memberName(rec, self, pk, card.name, via !== null);
      const member: MemberRecord = {
        public_key: pk,
        name,
        claimed_name: card.name,
        first_seen: now,
        last_seen: now,
        catalog_key: catalog,
        card: { name: card.name, sig: card.sig.toString('hex'), csig: card.csig.toString('hex') },
        via,
      };
      members.push(member);
      result = member;
    }
    return { ...rec, members };
  });
  return result;
}

export function teamView(rec: TeamRecord, self: Identity): TeamView {
  return {
    team: rec.team,
    self: { name: self.name, public_key: self.publicKey.toString('hex') },
    members: rec.members.map((m) => ({
      name: m.name,
      public_key: m.public_key,
      first_seen: m.first_seen,
      last_seen: m.last_seen,
      ...(m.via ? { via: m.via } : {}),
    })),
    bootstrap: rec.bootstrap,
  };
}

/**
 * Leaves a team: its record (the secret) and its sync state (our catalog, teammates' catalogs, what we
 * share) are removed. VMs and snapshots pulled from it stay. Refused while a sync runs in this home.
 */
export async function leaveTeam(home: Home, team: string): Promise<{ team: string; left: true }> {
  await loadTeam(home, team); // TEAM_NOT_FOUND first
  const syncRoot = path.join(home.root, 'sync');
  await ensureDir(syncRoot);
  let lock: Awaited<ReturnType<typeof acquireLock>>;
  try {
    lock = await acquireLock(path.join(syncRoot, 'sync.lock'), 'sync', `team leave ${team}`, 0);
  } catch (err) {
    if ((err as CloneboxError).code === 'VM_BUSY') {
      throw new CloneboxError('SYNC_BUSY', `a sync is running in this home, ${home.root}`, { hint: 'stop it, then leave the team' });
    }
    throw err;
  }
  try {
    // The record first: once it is gone the team is left, whatever the removal of its state does.
    await rm(teamFile(home, team), { force: true });
    await rm(path.join(syncRoot, team), { recursive: true, force: true });
  } catch (err) {
    throw ioError(err, 'cannot remove the team', teamFile(home, team));
  } finally {
    await lock.release();
  }
  return { team, left: true };
}
