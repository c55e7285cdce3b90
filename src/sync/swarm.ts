/**
 * A workstation on its team's swarm: a DHT node (src/sync/dht.ts), a Hyperswarm joined to the team's
 * topic, and the membership proof (src/sync/membership.ts) run on every connection before anything else.
 * Peers that pass are recorded in the team record (first seen) and emitted as 'peer'; peers that fail
 * are dropped, logged, and refused for a while ('rejected').
 *
 * Hyperswarm looks the topic up once at join and then every ~10 minutes. Two workstations that join at
 * the same moment can each query the DHT before the other's announce lands and so miss each other for
 * those 10 minutes (seen in CI: a sync that waited its whole --timeout beside a sharer started with
 * it). So while no teammate is connected, the topic is looked up again after 1, 2, 4, 8, then every
 * 15 s.
 *
 * Later protocols (catalog replication, block exchange) attach to `peer.mux`, which is only handed out
 * after the proof, so nothing of ours reaches a non-member.
 *
 * Unproven connections are limited per remote address and in all (limits.ts): beyond that a new one is
 * closed at once, before any proof. Refusing a key for 60 s does not stop an outsider, who makes a
 * fresh key pair per connection; the address it connects from is what it cannot change freely. And
 * Hyperswarm's peer budget (maxPeers, which decides whether we still dial teammates we find) is raised
 * by the unproven allowance, so outsiders holding their allowed slots cannot crowd members out.
 */
import { EventEmitter } from 'node:events';
import type NoiseSecretStream from '@hyperswarm/secret-stream';
import type HyperDHT from 'hyperdht';
import Hyperswarm from 'hyperswarm';
import type { Home } from '../store/home.js';
import { verifyCatalogProof } from './cards.js';
import { type Bootstrap, openDht } from './dht.js';
import type { Identity } from './identity.js';
import { membershipKey, teamTopic } from './keys.js';
import { MAX_UNPROVEN, MAX_UNPROVEN_PER_ADDRESS } from './limits.js';
import { MembershipError, type ProvenPeer, proveMembership, type RejectReason } from './membership.js';
import { type MemberRecord, recordMember, type TeamRecord, teamSecret } from './teams.js';

export interface TeamPeer extends ProvenPeer {
  /** The name this workstation knows the peer by (see teams.ts: first seen, never a taken name). */
  name: string;
  member: MemberRecord;
  stream: NoiseSecretStream;
}

export interface Rejection {
  publicKey: Buffer;
  reason: RejectReason;
  message: string;
}

export interface TeamSwarmOptions {
  home: Home;
  team: TeamRecord;
  identity: Identity;
  /** Resolved bootstrap: --bootstrap, else the team's setting, else null (public DHT). */
  bootstrap: Bootstrap;
  /** Epoch ms by which the DHT must be reachable (DHT_UNREACHABLE otherwise). */
  deadline: number;
  /**
   * A DHT node being opened already (openDht with the same bootstrap and identity), so that its
   * bootstrap round trips overlap the caller's own start; the swarm owns it from here. Else one is
   * opened here.
   */
  dht?: Promise<HyperDHT>;
  proofTimeoutMs?: number;
  /** Our catalog core key, announced to proven peers (null: nothing shared yet). */
  catalogKey?: Buffer | null;
  /** The catalog key's signature that it is ours (cards.ts catalogProof), sent with it. */
  catalogSig?: Buffer | null;
  /** One line per notable event (dropped peers, new members), for stderr. */
  log?: (line: string) => void;
  /**
   * Protocols run with every proven peer: protocol name -> attach(peer), which must have created and
   * opened its Protomux channels when it returns (or when the promise it returns resolves). A peer
   * opening one of these (any channel id) before we attached is held (paired) until attach is done,
   * never refused.
   */
  services?: Record<string, (peer: TeamPeer) => void | Promise<void>>;
}

/** The team's DHT node (openDht), errors logged. */
export function openDhtFor(opts: Pick<TeamSwarmOptions, 'bootstrap' | 'deadline' | 'identity' | 'log'>): Promise<HyperDHT> {
  return openDht({
    bootstrap: opts.bootstrap,
    deadline: opts.deadline,
    keyPair: opts.identity,
    onError: (err) => opts.log?.(`DHT error: ${err.message}`),
  });
}

/** Reasons that get a peer refused for REFUSE_MS (a closed connection may just be a retry). */
const BANNED: ReadonlySet<RejectReason> = new Set(['bad-proof', 'protocol', 'timeout']);
/**
 * How long a refused key stays refused. Long enough that an outsider cannot make us redo proofs in a
 * loop; short enough that a teammate whose proof timed out under load is not locked out of a --watch
 * that runs for days.
 */
const REFUSE_MS = 60_000;
/** Hyperswarm's default peer budget, kept for members: unproven connections come on top of it. */
const MEMBER_PEERS = 64;
/** Re-lookup backoff while no teammate is connected (see the module comment). */
const LOOKUP_FIRST_MS = 1000;
const LOOKUP_MAX_MS = 15_000;

export function shortKey(key: Buffer): string {
  return key.toString('hex').slice(0, 8);
}

export class TeamSwarm extends EventEmitter {
  readonly peers = new Map<string, TeamPeer>();
  readonly rejections: Rejection[] = [];
  /** Connections whose membership proof (and attaching of services) is still under way. */
  provingNow = 0;
  private readonly refused = new Set<string>();
  /** Unproven connections per remote address (see the module comment). */
  private readonly unproven = new Map<string, number>();
  private unprovenTotal = 0;
  /** Addresses whose refusal was logged (one line per address and run). */
  private readonly toldFull = new Set<string>();
  /** Connections closed at once because their address (or all unproven) was at the limit. */
  refusedUnproven = 0;
  private closing: Promise<void> | null = null;
  private discovery: Hyperswarm.Discovery | null = null;
  private lookupTimer: NodeJS.Timeout | null = null;
  private lookupEvery = LOOKUP_FIRST_MS;
  /** Topic lookups made after the one at join (for tests and traces). */
  relookups = 0;

  private constructor(
    readonly swarm: Hyperswarm,
    private readonly opts: TeamSwarmOptions,
  ) {
    super();
  }

  /** Joins the team's swarm. Throws DHT_UNREACHABLE at opts.deadline when no DHT node answers. */
  static async open(opts: TeamSwarmOptions): Promise<TeamSwarm> {
    const log = opts.log ?? (() => undefined);
    const dht = await (opts.dht ?? openDhtFor(opts));
    let self: TeamSwarm | null = null;
    const swarm = new Hyperswarm({
      dht,
      keyPair: { publicKey: opts.identity.publicKey, secretKey: opts.identity.secretKey },
      maxPeers: MEMBER_PEERS + MAX_UNPROVEN,
      firewall: (remotePublicKey) => self?.refused.has(remotePublicKey.toString('hex')) === true,
    });
    self = new TeamSwarm(swarm, opts);
    swarm.on('connection', (conn, info) => self!.onConnection(conn, info));
    swarm.on('error', (err: Error) => log(`swarm error: ${err.message}`));
    const discovery = swarm.join(teamTopic(teamSecret(opts.team)), { server: true, client: true });
    self.discovery = discovery;
    // The first announce normally takes milliseconds once the DHT answers; do not wait past the deadline.
    await Promise.race([discovery.flushed().catch(() => undefined), new Promise((r) => setTimeout(r, Math.max(0, opts.deadline - Date.now())).unref())]);
    self.scheduleLookup();
    return self;
  }

  /** Alone on the topic: look it up again later (see the module comment). */
  private scheduleLookup(): void {
    if (this.closing) return;
    this.lookupTimer = setTimeout(() => void this.lookupAgain(), this.lookupEvery);
    this.lookupTimer.unref();
  }

  private async lookupAgain(): Promise<void> {
    this.lookupTimer = null;
    if (this.closing || !this.discovery) return;
    if (this.peers.size > 0 || this.provingNow > 0 || this.swarm.connecting > 0) {
      // Not alone: when the last teammate leaves, start again from the short interval.
      this.lookupEvery = LOOKUP_FIRST_MS;
    } else {
      this.lookupEvery = Math.min(this.lookupEvery * 2, LOOKUP_MAX_MS);
      this.relookups++;
      await this.discovery.refresh().catch((err: Error) => this.log(`topic lookup failed: ${err.message}`));
    }
    this.scheduleLookup();
  }

  private log(line: string): void {
    this.opts.log?.(line);
  }

  /** Counts an unproven connection from `addr`; false (and nothing counted) when at a limit. */
  private admitUnproven(addr: string): boolean {
    const n = this.unproven.get(addr) ?? 0;
    if (n >= MAX_UNPROVEN_PER_ADDRESS || this.unprovenTotal >= MAX_UNPROVEN) {
      this.refusedUnproven++;
      if (!this.toldFull.has(addr)) {
        this.toldFull.add(addr);
        this.log(
          n >= MAX_UNPROVEN_PER_ADDRESS
            ? `refused connections from ${addr}: ${n} from it are still proving membership (the limit per address)`
            : `refused a connection from ${addr}: ${this.unprovenTotal} connections are still proving membership (the limit)`,
        );
      }
      return false;
    }
    this.unproven.set(addr, n + 1);
    this.unprovenTotal++;
    return true;
  }

  private releaseUnproven(addr: string): void {
    const n = (this.unproven.get(addr) ?? 1) - 1;
    if (n > 0) this.unproven.set(addr, n);
    else this.unproven.delete(addr);
    this.unprovenTotal--;
  }

  private onConnection(conn: NoiseSecretStream, info: Hyperswarm.PeerInfo): void {
    // An unhandled 'error' on a connection would crash the process: always listen.
    conn.on('error', () => undefined);
    const addr = (conn.rawStream as { remoteHost?: string | null } | null)?.remoteHost ?? 'an unknown address';
    if (!this.admitUnproven(addr)) {
      conn.destroy();
      return;
    }
    // The slot is given back once the proof is over (either way) or the connection closes.
    let holdsSlot = true;
    const releaseSlot = () => {
      if (holdsSlot) this.releaseUnproven(addr);
      holdsSlot = false;
    };
    conn.once('close', releaseSlot);
    const key = conn.remotePublicKey ?? info.publicKey;
    let attached!: (ok: boolean) => void;
    const whenAttached = new Promise<boolean>((r) => {
      attached = r;
    });
    conn.once('close', () => attached(false));
    this.provingNow++;
    let counted = true;
    const settled = () => {
      if (counted) this.provingNow--;
      counted = false;
    };
    void whenAttached.then(settled);
    const proving = proveMembership(conn, {
      onVerified: (mux) => {
        for (const protocol of Object.keys(this.opts.services ?? {})) mux.pair({ protocol }, () => whenAttached);
      },
      key: membershipKey(teamSecret(this.opts.team)),
      intro: { name: this.opts.identity.name, catalog: this.opts.catalogKey ?? null, catalogSig: this.opts.catalogSig ?? null },
      ...(this.opts.proofTimeoutMs !== undefined ? { timeoutMs: this.opts.proofTimeoutMs } : {}),
    });
    void proving.then(releaseSlot, releaseSlot);
    proving.then(
      (peerProven) =>
        this.onProven(conn, peerProven).then(attached, (err) => {
          attached(false);
          this.log(`peer ${shortKey(key)}: ${(err as Error).message}`);
          conn.destroy();
        }),
      (err) => {
        settled();
        if (!(err instanceof MembershipError)) {
          conn.destroy(err as Error);
          this.log(`peer ${shortKey(key)}: ${(err as Error).message}`);
          return;
        }
        if (!BANNED.has(err.reason)) return; // a duplicate or a peer that left: not an offence
        const hex = key.toString('hex');
        this.refused.add(hex);
        info.ban(true);
        setTimeout(() => {
          this.refused.delete(hex);
          info.ban(false);
        }, REFUSE_MS).unref();
        const rejection: Rejection = { publicKey: key, reason: err.reason, message: err.message };
        this.rejections.push(rejection);
        this.log(`dropped peer ${shortKey(key)} on team ${this.opts.team.team}: ${err.message}`);
        this.emit('rejected', rejection);
      },
    );
  }

  /** Records the member, attaches the services, announces the peer. Resolves true when attached. */
  private async onProven(conn: NoiseSecretStream, peerProven: ProvenPeer): Promise<boolean> {
    if (this.closing) return false;
    let proven = peerProven;
    // A catalog key is the peer's only when the key itself signed that (cards.ts): otherwise a member
    // could claim a teammate's catalog and have its chains credited to itself.
    const claimed = proven.intro.catalog;
    if (claimed && !verifyCatalogProof(this.opts.team, proven.publicKey, claimed, proven.intro.catalogSig)) {
      this.log(`peer ${proven.intro.name} (${shortKey(proven.publicKey)}) announces catalog ${shortKey(claimed)} without that catalog's signature: ignored`);
      proven = { ...proven, intro: { ...proven.intro, catalog: null, catalogSig: null } };
    }
    let seen: Awaited<ReturnType<typeof recordMember>>;
    try {
      seen = await recordMember(this.opts.home, this.opts.team.team, this.opts.identity, {
        publicKey: proven.publicKey,
        name: proven.intro.name,
        catalogKey: proven.intro.catalog,
      });
    } catch (err) {
      this.log(`cannot record member ${shortKey(proven.publicKey)}: ${(err as Error).message}`);
      conn.destroy();
      return false;
    }
    if (seen.isNew) {
      this.log(
        `new member on team ${this.opts.team.team}: ${seen.member.name} (${shortKey(proven.publicKey)})` +
          (seen.renamed ? `, calls itself ${JSON.stringify(proven.intro.name)}, a name already taken here` : ''),
      );
    }
    const peer: TeamPeer = { ...proven, name: seen.member.name, member: seen.member, stream: conn };
    const hex = proven.publicKey.toString('hex');
    this.peers.set(hex, peer);
    conn.once('close', () => {
      if (this.peers.get(hex) === peer) this.peers.delete(hex);
      this.emit('peer-left', peer);
    });
    if (conn.destroyed) {
      this.peers.delete(hex);
      return false;
    }
    for (const attach of Object.values(this.opts.services ?? {})) await attach(peer);
    if (conn.destroyed) return false;
    this.emit('peer', peer);
    return true;
  }

  /**
   * Resolves once the first lookup of the topic is done and every connection it found was made or
   * failed (Hyperswarm's flush), or at `deadline`.
   */
  async discovered(deadline: number): Promise<void> {
    await Promise.race([this.swarm.flush().catch(() => undefined), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())).unref())]);
  }

  /** Resolves with the proven peers once there are at least `n`, or with what there is at `deadline`. */
  async waitForPeers(n: number, deadline: number): Promise<TeamPeer[]> {
    if (this.peers.size >= n) return [...this.peers.values()];
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.removeListener('peer', onpeer);
        resolve([...this.peers.values()]);
      };
      const onpeer = () => {
        if (this.peers.size >= n) done();
      };
      const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
      this.on('peer', onpeer);
    });
  }

  /** Leaves the topic, closes every connection and the DHT node. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        if (this.lookupTimer) clearTimeout(this.lookupTimer);
        for (const conn of this.swarm.connections) conn.destroy();
        // Unannouncing is polite but needs the DHT: give it 2 s, then close regardless.
        const polite = this.swarm.destroy().then(
          () => true,
          () => true,
        );
        const inTime = await Promise.race([polite, new Promise<boolean>((r) => setTimeout(r, 2000, false).unref())]);
        if (!inTime) await this.swarm.destroy({ force: true }).catch(() => undefined);
      })();
    }
    return this.closing;
  }
}
