/**
 * `snapshot sync`: join the team's swarm, serve this workstation's shared chains, pull every chain
 * that online teammates share, and exit when caught up (or keep going with --watch).
 *
 * Per proven peer (TeamSwarm services, attached before the peer's channels can be refused):
 *   hypercore/alpha   our catalog replicates to it; its catalog (key from its Intro, recorded with the
 *                     member on first sight) replicates to us, in full; so does every other teammate's
 *                     catalog either side has (relaying: chains travel while their author is away)
 *   clonebox/blocks   a BlockChannel serving our shared chains' blocks and those of chains we pulled
 *                     (ShareSource), and fetching theirs
 *
 * The run is a SyncRun with named collaborators: the catalog set (ours and every teammate's we know,
 * catalog-set.ts), the card exchange (clonebox/catalogs, card-exchange.ts), the serving source
 * (serving.ts), the peer fetcher (fetcher.ts) and the pull scheduler (scheduler.ts).
 *
 * Pulls run one at a time (pull.ts). Without --watch the run ends when: at least one teammate came
 * (or the deadline passed), every pull is done, and either (sharing something) no teammate came and
 * nobody asked us for blocks for 2.5 s, so a teammate pulling from us is not cut off, or (sharing
 * nothing) the swarm's lookup of the topic is done, every connection it found is proven or dropped,
 * and no teammate came for 0.4 s. At the deadline a pull in progress stops, keeps what it received
 * (the spool) and the command fails with SYNC_TIMEOUT.
 */
import path from 'node:path';
import type HyperDHT from 'hyperdht';
import { abortedError } from '../abort.js';
import { CloneboxError, type ErrorCode } from '../errors.js';
import { ensurePrivateDir } from '../fsutil.js';
import { DEFAULT_MAX_VIRTUAL_SIZE } from '../qcow2/budget.js';
import { ensureHome, type Home } from '../store/home.js';
import { acquireLock, type Lock } from '../store/lock.js';
import { originOf, type SnapshotRecord } from '../store/snapshots.js';
import { BlockChannel } from './blocks.js';
import { CardExchange, RELAY_WAIT_MS } from './card-exchange.js';
import { catalogProof } from './cards.js';
import { Catalog, type CatalogView, catalogKeyPair } from './catalog.js';
import { CatalogSet } from './catalog-set.js';
import type { Bootstrap } from './dht.js';
import { PeerFetcher, type PeerState } from './fetcher.js';
import { type HostPort, isLoopbackHost } from './hostport.js';
import { ensureIdentity, type Identity } from './identity.js';
import { LocalBlocks } from './layermap.js';
import { BLOCKS_PROTOCOL, CATALOGS_PROTOCOL, TCP_PROTOCOL } from './messages.js';
import { salvageKilled } from './placed.js';
import { BlocksUnavailable, type ChainReport, pullChain } from './pull.js';
import { type GroupPullReport, pullGroups } from './pull-group.js';
import { PullScheduler } from './scheduler.js';
import { ServingSource } from './serving.js';
import { publish } from './share.js';
import { Spool } from './spool.js';
import { openDhtFor, shortKey, type TeamPeer, TeamSwarm } from './swarm.js';
import { TcpPath, tcpPathEnabled } from './tcp.js';
import { loadTeam, resolveBootstrap, type TeamRecord } from './teams.js';
import { PullTemps } from './temps.js';
import { trace } from './trace.js';

const DEFAULT_TIMEOUT_S = 300;
/**
 * Without --timeout, how long a run waits for a first teammate before NO_PEERS: nobody online is an
 * answer worth giving in a minute, not after the whole timeout (issue 17). With --timeout, the run
 * waits that long for one (a sharer waiting for a teammate to come).
 */
const DEFAULT_PEER_WAIT_S = 60;
/** How long joining the DHT may take before DHT_UNREACHABLE (an unreachable bootstrap must fail fast). */
const DHT_JOIN_MS = 10_000;
/** How long a finished run that shares something waits for more teammates and for requests to stop. */
const SETTLE_MS = 2500;
/** How long a finished run that shares nothing waits after the last teammate came (lookup done). */
const PEER_GRACE_MS = 400;

export interface SyncOptions {
  home: Home;
  team: string;
  bootstrap?: HostPort[];
  /** The whole run's bound (default DEFAULT_TIMEOUT_S); also the wait for a first teammate when given. */
  timeoutSeconds?: number | undefined;
  watch?: boolean;
  /**
   * Stops the run (SIGINT/SIGTERM in the CLI). A --watch run ends normally; otherwise a pull in
   * progress stops before it registers anything (blocks received stay in the spool) and ABORTED rejects.
   */
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** Progress of each chain pulled: received bytes, written bytes of a snapshot, and its end. */
  progress?: (p: SyncProgress) => void;
  /** Refuse (BUDGET_EXCEEDED) a chain whose new layers would write more than this; free space is always checked. */
  maxWrite?: number | undefined;
  /** Refuse (BUDGET_EXCEEDED) a chain with a disk larger than this (default DEFAULT_MAX_VIRTUAL_SIZE, 16 TiB). */
  maxVirtualSize?: number | undefined;
}

type SyncProgress =
  | { phase: 'wait'; chain: ''; done: number; total: number }
  | { phase: 'receive'; chain: string; done: number; total: null }
  | { phase: 'write'; chain: string; snapshot: string; done: number; total: number }
  | { phase: 'pulled'; chain: string; done: number; total: number; vm: string; blocks_fetched: number; blocks_reused: number };

export interface SyncReport {
  peers: string[];
  chains: ChainReport[];
  bytes_received: number;
  /** Extra: what this workstation published (per shared VM). */
  shared: { vm: string; snapshots: string[] }[];
  /** Extra: chains that failed (the command exits 1 when any did). */
  errors: { peer: string; vm: string | null; code: ErrorCode; message: string }[];
  /** Teammates' shared groups: what was registered, and what waits for a member (pull-group.ts). */
  groups: GroupPullReport[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref?.());

export async function runSync(opts: SyncOptions): Promise<SyncReport> {
  const team = await loadTeam(opts.home, opts.team);
  const identity = await ensureIdentity(opts.home);
  const bootstrap = resolveBootstrap(team, opts.bootstrap);
  return new SyncRun(opts, team, identity, bootstrap).run();
}

/** The parts of a run that exist once the sync lock is held (see SyncRun.start). */
interface Started {
  catalogs: CatalogSet;
  cards: CardExchange;
  serving: ServingSource;
  local: LocalBlocks;
  temps: PullTemps;
  spool: Spool;
  fetcher: PeerFetcher;
  swarm: TeamSwarm | null;
}

/** One `snapshot sync` run (see the module comment). */
class SyncRun {
  private readonly home: Home;
  private readonly log: (line: string) => void;
  private readonly t0 = Date.now();
  private readonly deadline: number;
  /** Without a teammate by then, the run ends with NO_PEERS (see DEFAULT_PEER_WAIT_S). */
  private readonly peerDeadline: number;
  /** --watch: the timeout bounds only reaching the DHT; pulls take what they take. */
  private readonly pullDeadline: number;
  private readonly report: SyncReport = { peers: [], chains: [], bytes_received: 0, shared: [], errors: [], groups: [] };
  /** Per proven connection, by peer public key hex. */
  private readonly states = new Map<string, PeerState>();
  private readonly scheduler = new PullScheduler((key) => this.pullKey(key));
  /** Per catalog and VM: blocks its sharer said it no longer has, at which catalog length. */
  private readonly unservableMemo = new Map<string, { length: number; blocks: Set<string> }>();
  private readonly cleanups: (() => Promise<void>)[] = [];
  /** Teammates' catalogs found beyond the limits (reported once per run). */
  private readonly overLimit = new Set<Catalog>();
  /** Teammates' catalogs this build could not read, at which length (reported once per length). */
  private readonly unreadable = new Map<Catalog, number>();
  private lastPeerAt = 0;
  /** The spool is cleared (and closed) once every block in it is in a registered layer. */
  private spoolDone = false;
  private s!: Started;

  constructor(
    private readonly opts: SyncOptions,
    private readonly team: TeamRecord,
    private readonly identity: Identity,
    private readonly bootstrap: Bootstrap,
  ) {
    this.home = opts.home;
    this.log = opts.log ?? (() => undefined);
    this.deadline = this.t0 + (opts.timeoutSeconds ?? DEFAULT_TIMEOUT_S) * 1000;
    this.peerDeadline = opts.timeoutSeconds !== undefined ? this.deadline : Math.min(this.deadline, this.t0 + DEFAULT_PEER_WAIT_S * 1000);
    this.pullDeadline = opts.watch ? this.t0 + 1e12 : this.deadline;
  }

  async run(): Promise<SyncReport> {
    const lock = await this.lock();
    try {
      // The DHT node bootstraps (round trips to the bootstrap nodes) while start() reads catalogs and
      // indexes (disk and CPU); joinSwarm() hands it to the swarm, which closes it.
      const dht = openDhtFor({
        bootstrap: this.bootstrap,
        deadline: Math.min(this.deadline, Date.now() + DHT_JOIN_MS),
        identity: this.identity,
        log: this.log,
      });
      dht.catch(() => undefined); // reported when joinSwarm() awaits it
      this.cleanups.push(async () => {
        if (!this.s?.swarm) await (await dht.catch(() => null))?.destroy({ force: true }).catch(() => undefined);
      });
      await this.start();
      await this.joinSwarm(dht);
      if (this.opts.watch) await this.watch();
      else await this.untilCaughtUp();
      await this.scheduler.idle();
      trace('sync: done, closing');
      if (this.report.errors.length === 0) {
        // Every block in the spool is in a registered layer now.
        await this.s.spool.clear();
        this.spoolDone = true;
      }
      return this.report;
    } finally {
      for (const c of this.cleanups) await c().catch(() => undefined);
      await lock.release();
    }
  }

  private async lock(): Promise<Lock> {
    const { home } = this;
    await ensureHome(home);
    await ensurePrivateDir(path.join(home.root, 'sync'));
    try {
      return await acquireLock(path.join(home.root, 'sync', 'sync.lock'), 'sync', `snapshot sync --team ${this.opts.team}`, 0);
    } catch (err) {
      if ((err as CloneboxError).code === 'VM_BUSY') {
        throw new CloneboxError('SYNC_BUSY', `another sync is running in this home, ${home.root}`, { hint: 'wait for it to finish (or stop its --watch)' });
      }
      throw err;
    }
  }

  /** Our catalog published, teammates' catalogs open, the serving index, local blocks, spool. */
  private async start(): Promise<void> {
    const { home, log } = this;
    trace('sync: locked');
    const own = await Catalog.openOwn(home, this.team, this.identity);
    trace('sync: own catalog open');
    this.cleanups.push(() => own.close());
    this.report.shared = (await publish(home, this.opts.team, own, log)).map(({ vm, snapshots }) => ({ vm, snapshots }));
    trace('sync: published');
    const catalogs = new CatalogSet(home, this.opts.team, own);
    let serving: ServingSource | null = null;
    this.cleanups.push(async () => {
      await serving?.settled(); // may be reading these catalogs
      await catalogs.close();
    });
    await catalogs.openKnown(this.team, log);
    trace(`sync: ${catalogs.size} teammates' catalogs open`);
    const cards = new CardExchange(home, this.opts.team, this.team, this.identity, catalogs, log);
    serving = await ServingSource.build(home, catalogs, log);
    const srv = serving;
    trace(`sync: serving index built (${srv.blocks} blocks)`);
    this.cleanups.push(() => srv.close());
    const local = await LocalBlocks.scan(home, await this.reusable(own), log);
    this.cleanups.push(() => local.close());
    trace(`sync: local blocks indexed (${local.size})`);
    // What a killed pull wrote before taking a VM lock goes first (we hold the sync lock), the blocks
    // it placed in its layers into the spool before the layers go.
    const spool = await Spool.open(home);
    this.cleanups.push(async () => {
      if (!this.spoolDone) await spool.close();
    });
    const temps = await PullTemps.open(home, log, async (files) => {
      // A salvage that fails costs a refetch of those blocks, never the sync.
      const n = await salvageKilled(home, spool, files).catch((err: Error) => {
        log(`could not keep the blocks an interrupted pull had written (${err.message}); they will be fetched again`);
        return 0;
      });
      if (n) log(`kept ${n} block(s) an interrupted pull had written`);
    });
    const fetcher = new PeerFetcher({
      peers: () => this.states.values(),
      deadline: this.pullDeadline,
      log,
      stopping: () => this.scheduler.stopping,
      signal: this.opts.signal,
    });
    this.s = { catalogs, cards, serving: srv, local, temps, spool, fetcher, swarm: null };
  }

  /**
   * Which local snapshots a pull of this team may take blocks from: those our catalog for the team
   * publishes (a VM still shared, the snapshot matched by name and creation time as share.ts does), and
   * those pulled from this team. Never an unshared VM's, nor another team's (the presence oracle).
   */
  private async reusable(own: Catalog): Promise<(vm: string, s: SnapshotRecord) => boolean> {
    const view = await own.view();
    const published = new Set<string>();
    for (const [vm] of view.shares) for (const p of view.snapshots.get(vm) ?? []) published.add(`${vm}\u0000${p.name}\u0000${p.created_at}`);
    const team = this.opts.team;
    return (vm, s) => {
      const o = originOf(s);
      if (o.kind === 'pulled') return o.team === team;
      return published.has(`${vm}\u0000${s.name}\u0000${s.created_at}`);
    };
  }

  private stateOf(peer: TeamPeer): PeerState {
    const hex = peer.publicKey.toString('hex');
    let st = this.states.get(hex);
    if (!st || st.peer !== peer) {
      const same = st?.peer === peer;
      st = { peer, channel: same ? st!.channel : null, tcp: same ? st!.tcp : null, catalog: same ? st!.catalog : null, cards: same ? st!.cards : null };
      this.states.set(hex, st);
    }
    return st;
  }

  private async joinSwarm(dht: Promise<HyperDHT>): Promise<void> {
    const { home, log } = this;
    const { catalogs, cards, serving } = this.s;
    const own = catalogs.own;
    const blockOptions = (peer: TeamPeer) => {
      // A teammate on this machine shares our cores: no climbing past zstd 3 (pace.ts).
      const host = (peer.stream as { rawStream?: { remoteHost?: string | null } | null }).rawStream?.remoteHost;
      return {
        source: serving,
        ...(host && isLoopbackHost(host) ? { maxLevel: 3 } : {}),
        onAbuse: (why: string) => log(`peer ${peer.name} (${shortKey(peer.publicKey)}): ${why}; its block channel is closed`),
      };
    };
    // Blocks move to a TCP stream of their own when the peer can reach it (tcp.ts); the Hyperswarm
    // connection's channel serves too, and fetches again if that stream closes.
    const tcp = new TcpPath({
      keyPair: { publicKey: this.identity.publicKey, secretKey: this.identity.secretKey },
      onLink: (peer, mux, stream) => {
        const st = this.stateOf(peer);
        const before = st.channel;
        const ch = BlockChannel.attach(mux, { ...blockOptions(peer), transport: 'tcp' });
        st.channel = ch;
        stream.once('close', () => {
          if (st.channel === ch) st.channel = before;
        });
      },
    });
    const tcpServices: Record<string, (peer: TeamPeer) => void> = tcpPathEnabled()
      ? {
          [TCP_PROTOCOL]: (peer) => {
            this.stateOf(peer).tcp = tcp.attach(peer);
          },
        }
      : {};
    const swarm = await TeamSwarm.open({
      home,
      team: this.team,
      identity: this.identity,
      bootstrap: this.bootstrap,
      deadline: Math.min(this.deadline, Date.now() + DHT_JOIN_MS),
      dht,
      log,
      catalogKey: own.key,
      catalogSig: catalogProof(catalogKeyPair(this.identity, this.team), this.team, this.identity.publicKey),
      services: {
        'hypercore/alpha': async (peer) => {
          const st = this.stateOf(peer);
          own.core.replicate(peer.mux);
          const recorded = peer.member.catalog_key ? Buffer.from(peer.member.catalog_key, 'hex') : null;
          if (recorded && peer.intro.catalog && !recorded.equals(peer.intro.catalog)) {
            log(`peer ${peer.name} announces another catalog than the one first recorded; using the recorded one`);
          }
          const key = recorded ?? peer.intro.catalog;
          if (key && !key.equals(own.key)) {
            const cat = await catalogs.open(key);
            catalogs.setAuthor(key.toString('hex'), peer.name, peer.publicKey);
            st.catalog = cat;
          }
          // Its own catalog, and every other teammate's we have (relayed both ways).
          for (const c of catalogs.catalogs()) c.core.replicate(peer.mux);
        },
        [BLOCKS_PROTOCOL]: (peer) => {
          this.stateOf(peer).channel = BlockChannel.attach(peer.mux, blockOptions(peer));
        },
        [CATALOGS_PROTOCOL]: (peer) => {
          cards.attach(peer, this.stateOf(peer));
        },
        ...tcpServices,
      },
    });
    this.s.swarm = swarm;
    this.cleanups.unshift(() => swarm.close());
    this.cleanups.unshift(() => tcp.close());
    trace('sync: swarm joined');
    const onPeer = (peer: TeamPeer) => {
      this.lastPeerAt = Date.now();
      trace(`sync: peer ${peer.name} proven`);
      if (!this.report.peers.includes(peer.name)) this.report.peers.push(peer.name);
      const st = this.stateOf(peer);
      st.catalog?.core.on('append', () => {
        if (this.opts.watch) this.schedule(peer);
      });
      this.schedule(peer);
    };
    swarm.on('peer', onPeer);
    for (const p of swarm.peers.values()) onPeer(p);
  }

  private schedule(peer: TeamPeer): void {
    this.scheduler.schedule(peer.publicKey.toString('hex'));
  }

  /** --watch: serve and pull until stopped; republish every few seconds (new snapshots follow the share). */
  private async watch(): Promise<void> {
    const { opts, log } = this;
    const aborted = new Promise<void>((r) => {
      if (opts.signal?.aborted) r();
      opts.signal?.addEventListener('abort', () => r(), { once: true });
    });
    while (!opts.signal?.aborted) {
      await Promise.race([sleep(5000), aborted]);
      if (opts.signal?.aborted) break;
      try {
        const res = await publish(this.home, opts.team, this.s.catalogs.own, log);
        if (res.some((r) => r.appended > 0) || res.length !== this.report.shared.length) {
          this.report.shared = res.map(({ vm, snapshots }) => ({ vm, snapshots }));
          await this.s.serving.rebuild();
        }
      } catch (err) {
        log(`publishing failed: ${(err as Error).message}`);
      }
      // Teammates' catalogs may have grown while we were pulling: look again.
      for (const st of this.states.values()) if (!st.peer.stream.destroyed) this.schedule(st.peer);
    }
    this.scheduler.stop();
  }

  /** Without --watch: until caught up (see the module comment), or SYNC_TIMEOUT. */
  private async untilCaughtUp(): Promise<void> {
    const { opts, report } = this;
    const swarm = this.s.swarm!;
    const serving = this.s.serving;
    let discovered = false;
    void swarm.discovered(this.deadline).then(() => {
      discovered = true;
    });
    let waitShown = -1;
    for (;;) {
      const now = Date.now();
      if (now >= this.deadline || opts.signal?.aborted) break;
      if (report.peers.length === 0) {
        if (now >= this.peerDeadline) break;
        // What the run waits for, once a second (a terminal shows it; issue 17: it waited in silence).
        const waited = Math.floor((now - this.t0) / 1000);
        if (waited !== waitShown) {
          waitShown = waited;
          opts.progress?.({ phase: 'wait', chain: '', done: waited, total: Math.ceil((this.peerDeadline - this.t0) / 1000) });
        }
      }
      // Sharing: a teammate may be about to ask us for blocks, or between two of its pulls. Not
      // sharing: done once the teammates the lookup found are connected and proven.
      const quiet =
        serving.blocks > 0
          ? now - Math.max(this.lastPeerAt, serving.lastServed) >= SETTLE_MS
          : discovered && swarm.provingNow === 0 && now - this.lastPeerAt >= PEER_GRACE_MS;
      if (report.peers.length > 0 && quiet && !this.scheduler.busy) break;
      // Looked at again every 50 ms, and as soon as the pulls are done: that is the usual end, and a
      // poll alone let it wait up to 50 ms more.
      await (this.scheduler.busy ? Promise.race([sleep(50), this.scheduler.idle()]) : sleep(50));
    }
    if (opts.signal?.aborted) {
      this.scheduler.stop();
      await this.scheduler.idle();
      throw abortedError();
    }
    if (this.scheduler.busy) {
      this.scheduler.stop();
      await this.scheduler.idle();
      throw new CloneboxError('SYNC_TIMEOUT', `sync did not finish in ${opts.timeoutSeconds ?? DEFAULT_TIMEOUT_S} s, team ${opts.team}`, {
        hint: 'blocks received so far are kept: run sync again to continue (or give a longer --timeout)',
      });
    }
    if (report.peers.length === 0) {
      throw CloneboxError.NO_PEERS(`no teammate of team ${opts.team} came online within ${Math.round((Date.now() - this.t0) / 1000)} s`, {
        hint: `a teammate must run \`clonebox snapshot sync --team ${opts.team}\` (or keep one running with --watch) at the same time; --timeout SECONDS waits longer`,
      });
    }
  }

  /** The scheduler's turn for the teammate with key `hex`, if it is still connected. */
  private async pullKey(hex: string): Promise<void> {
    const st = this.states.get(hex);
    if (st && !st.peer.stream.destroyed) await this.pullPeer(st);
  }

  /** Everything a proven teammate can give: its catalog's chains, its cards, the catalogs it relays. */
  private async pullPeer(st: PeerState): Promise<void> {
    const { catalogs } = this.s;
    const stopping = () => this.scheduler.stopping;
    if (st.catalog) {
      await this.catchUp(st.catalog, 10_000);
      trace(`pull ${st.peer.name}: catalog replicated (${st.catalog.core.length} entries)`);
      await this.pullCatalog(st, st.catalog, st.peer.name, false);
    }
    const { cards, stopped } = await this.s.cards.receive(st, stopping);
    if (stopped) return;
    // Relayed: the catalogs of teammates not online, as this peer has them. A peer that lacks one
    // never opens its channel, so its arrival is waited for (in parallel, RELAY_WAIT_MS at most),
    // only for the catalogs whose cards the peer handed us (all, for a peer without cards).
    const online = new Set([...this.states.values()].filter((o) => !o.peer.stream.destroyed).map((o) => o.catalog));
    const offered = new Set(cards.map((k) => k.catalog.toString('hex')));
    const relayed = catalogs
      .entries()
      .filter(([hex, c]) => c !== st.catalog && !online.has(c) && (cards.length === 0 || offered.has(hex) || c.core.peers.length > 0));
    await Promise.all(relayed.map(([, c]) => this.catchUp(c, RELAY_WAIT_MS)));
    for (const [hex, cat] of relayed) {
      if (stopping()) return;
      if (cat.core.peers.length === 0 || cat.core.length === 0) continue;
      trace(`pull ${st.peer.name}: relays the catalog of ${catalogs.authorOf(hex)} (${cat.core.length} entries)`);
      await this.pullCatalog(st, cat, catalogs.authorOf(hex), true);
    }
  }

  /**
   * Catches up with a teammate's catalog as the connected peers have it: its length, then every
   * entry. Hypercore's update() answers "nothing new" at once while the core has no replicating peer
   * yet (its channel opens a round trip after ours), which made a pull under load see an old
   * catalog: wait up to `waitMs` for a peer first.
   */
  private async catchUp(cat: Catalog, waitMs: number): Promise<void> {
    const bound = (ms: number) => Math.min(ms, Math.max(0, this.pullDeadline - Date.now()));
    if (cat.core.peers.length === 0) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          cat.core.removeListener('peer-add', done);
          resolve();
        };
        const timer = setTimeout(done, bound(waitMs));
        cat.core.on('peer-add', done);
      });
      if (cat.core.peers.length === 0) return;
    }
    await Promise.race([cat.core.update({ wait: true }).catch(() => false), sleep(bound(10_000))]);
    // The signed length and byte length come first: a catalog beyond the limits is not downloaded.
    if (cat.overLimit() !== null) return;
    if (cat.core.length > cat.core.contiguousLength) {
      const dl = cat.core.download({ start: 0, end: cat.core.length });
      await Promise.race([dl.done().catch(() => undefined), sleep(bound(60_000))]);
    }
  }

  /** Pulls every chain `cat` shares; blocks come from `st` first (see PeerFetcher). */
  private async pullCatalog(st: PeerState, cat: Catalog, author: string, relayed: boolean): Promise<void> {
    const { home, log, opts, report } = this;
    const { local, spool, temps, fetcher, serving } = this.s;
    const over = cat.overLimit();
    if (over !== null) {
      const message = `the catalog of ${author} holds ${over} (a per-member limit): none of its chains are pulled`;
      if (!this.overLimit.has(cat)) {
        this.overLimit.add(cat);
        report.errors.push({ peer: author, vm: null, code: 'SYNC_LIMIT', message });
        log(message);
      }
      return;
    }
    if (cat.core.contiguousLength < cat.core.length) {
      log(`the catalog of ${author} is not complete here yet; its chains wait for the next sync`);
      return;
    }
    let view: CatalogView;
    try {
      view = await cat.view();
    } catch (err) {
      // A record this build cannot read (a newer record type, or a malformed one): that author's chains
      // wait, the other teammates' are pulled.
      // Told once per catalog length (a --watch run looks again every few seconds).
      if (this.unreadable.get(cat) === cat.core.length) return;
      this.unreadable.set(cat, cat.core.length);
      const message = `the catalog of ${author} cannot be read here (${(err as Error).message}): none of its chains are pulled`;
      report.errors.push({ peer: author, vm: null, code: err instanceof CloneboxError ? err.code : 'SYNC_CATALOG', message });
      log(message);
      return;
    }
    for (const vm of view.shares.keys()) {
      if (this.scheduler.stopping) return;
      const label = `${vm} from ${author}${author === st.peer.name ? '' : ` (via ${st.peer.name})`}`;
      const ctx = {
        home,
        team: opts.team,
        peerName: author,
        peerKey: this.s.catalogs.authorKeyOf(cat.key.toString('hex')),
        catalog: cat,
        view,
        local,
        spool,
        temps,
        log,
        signal: opts.signal,
        maxWrite: opts.maxWrite ?? null,
        maxVirtualSize: opts.maxVirtualSize ?? DEFAULT_MAX_VIRTUAL_SIZE,
        fetch: fetcher.fetcherFor(st, (b) => opts.progress?.({ phase: 'receive', chain: label, done: b, total: null })),
        progress: (name: string, done: number, total: number) => opts.progress?.({ phase: 'write', chain: label, snapshot: name, done, total }),
      };
      const memoKey = `${cat.key.toString('hex')}/${vm}`;
      const memo = this.unservableMemo.get(memoKey);
      try {
        let r: Awaited<ReturnType<typeof pullChain>>;
        try {
          r = await pullChain(ctx, vm, memo && memo.length === view.length ? memo.blocks : undefined);
        } catch (err) {
          // The sharer itself says it no longer has some blocks (it deleted or pruned a published
          // snapshot): pull what does not need them, name the rest, and do not ask again for them
          // while its catalog stays the same.
          if (!(err instanceof BlocksUnavailable) || relayed || !err.notServed || err.corrupt > 0) throw err;
          const blocks = new Set(err.failed.map((h) => h.toString('hex')));
          this.unservableMemo.set(memoKey, { length: view.length, blocks });
          r = await pullChain(ctx, vm, blocks);
        }
        if (r?.unavailable?.length) {
          log(`${label}: ${r.unavailable.join(', ')} left out: ${author} no longer has some of their blocks (deleted or pruned there after it shared them)`);
        }
        if (r) {
          if (relayed) r.via = st.peer.name;
          report.chains.push(r);
          report.bytes_received += r.bytes_received;
          if (r.snapshots.length) {
            opts.progress?.({
              phase: 'pulled',
              chain: label,
              done: r.snapshots.length,
              total: r.snapshots.length,
              vm: r.vm,
              blocks_fetched: r.blocks_fetched,
              blocks_reused: r.blocks_reused,
            });
            await serving.pulledFrom(cat); // served on from now
          }
        }
      } catch (err) {
        if (relayed && err instanceof BlocksUnavailable && err.corrupt === 0) {
          // Teammates online need not hold every chain of an absent one: not an error, it waits.
          log(`${vm} from ${author}: ${err.failed.length} block(s) are on no teammate online; it waits for ${author}`);
          continue;
        }
        const e = err as Error;
        report.errors.push({ peer: author, vm, code: err instanceof CloneboxError ? err.code : 'INTERNAL', message: e.message });
        log(`pull ${label} failed: ${e.message}`);
      }
    }
    if (view.groups.size && !this.scheduler.stopping) await this.pullGroupsOf(cat, view, author);
  }

  /**
   * The catalog's shared groups, once its chains are pulled: each group snapshot whose members are all
   * complete here is registered (pull-group.ts). A pass of a catalog replaces its earlier report.
   */
  private async pullGroupsOf(cat: Catalog, view: CatalogView, author: string): Promise<void> {
    const { report, log } = this;
    const { reports, errors } = await pullGroups({ home: this.home, peerName: author, catalogKey: cat.key.toString('hex'), view }, log);
    for (const r of reports) {
      const prev = report.groups.findIndex((g) => g.group === r.group && g.peer === r.peer);
      if (prev >= 0) {
        const registered = [...report.groups[prev]!.registered, ...r.registered];
        report.groups[prev] = { ...r, registered };
      } else report.groups.push(r);
    }
    for (const { group, error } of errors) {
      report.errors.push({ peer: author, vm: null, code: error instanceof CloneboxError ? error.code : 'INTERNAL', message: error.message });
      log(`group ${group} from ${author} not registered: ${error.message}`);
    }
  }
}
