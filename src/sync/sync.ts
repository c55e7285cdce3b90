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
 * Pulls run one at a time (pull.ts). Without --watch the run ends when: at least one teammate came
 * (or the deadline passed), every pull is done, and either (sharing something) no teammate came and
 * nobody asked us for blocks for 2.5 s, so a teammate pulling from us is not cut off, or (sharing
 * nothing) the swarm's lookup of the topic is done, every connection it found is proven or dropped,
 * and no teammate came for 0.4 s. At the deadline a pull in progress stops, keeps what it received
 * (the spool) and the command fails with SYNC_TIMEOUT.
 */
import path from 'node:path';
import { CloneboxError, type ErrorCode } from '../errors.js';
import { acquireLock, type Lock } from '../store/lock.js';
import { ensureDir } from '../fsutil.js';
import type { Home } from '../store/home.js';
import { BlockChannel } from './blocks.js';
import { Catalog } from './catalog.js';
import type { HostPort } from './hostport.js';
import { ensureIdentity } from './identity.js';
import { LocalBlocks } from './layermap.js';
import { makeCard, verifyCard, type CatalogCard } from './cards.js';
import { BLOCKS_PROTOCOL, CATALOGS_PROTOCOL, catalogCards, MAX_CARDS } from './messages.js';
import { BlocksUnavailable, pullChain, type Fetcher } from './pull.js';
import { publish, ShareSource } from './share.js';
import { Spool } from './spool.js';
import { PullTemps } from './temps.js';
import { shortKey, TeamSwarm, type TeamPeer } from './swarm.js';
import { loadTeam, recordCard, resolveBootstrap } from './teams.js';
import { trace } from './trace.js';
import { abortedError } from '../abort.js';

export const DEFAULT_TIMEOUT_S = 300;
/** How long a finished run that shares something waits for more teammates and for requests to stop. */
const SETTLE_MS = 2500;
/** How long a finished run that shares nothing waits after the last teammate came (lookup done). */
const PEER_GRACE_MS = 400;
/** How long a pull waits for a peer to start replicating a catalog it may not have (pullPeer). */
const RELAY_WAIT_MS = 1500;

export interface SyncOptions {
  home: Home;
  team: string;
  bootstrap?: HostPort[];
  timeoutSeconds?: number;
  watch?: boolean;
  /**
   * Stops the run (SIGINT/SIGTERM in the CLI). A --watch run ends normally; otherwise a pull in
   * progress stops before it registers anything (blocks received stay in the spool) and ABORTED rejects.
   */
  signal?: AbortSignal;
  log?: (line: string) => void;
  /** Progress of each chain pulled: received bytes, written bytes of a snapshot, and its end. */
  progress?: (p: SyncProgress) => void;
}

type SyncProgress =
  | { phase: 'receive'; chain: string; done: number; total: null }
  | { phase: 'write'; chain: string; snapshot: string; done: number; total: number }
  | { phase: 'pulled'; chain: string; done: number; total: number; vm: string; blocks_fetched: number; blocks_reused: number };

export interface SyncReport {
  peers: string[];
  chains: { vm: string; snapshots: string[]; blocks_fetched: number; blocks_reused: number; bytes_received: number; peer: string; remote_vm: string; via?: string; unavailable?: string[] }[];
  bytes_received: number;
  /** Extra: what this workstation published (per shared VM). */
  shared: { vm: string; snapshots: string[] }[];
  /** Extra: chains that failed (the command exits 1 when any did). */
  errors: { peer: string; vm: string | null; code: ErrorCode; message: string }[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref?.());

interface PeerState {
  peer: TeamPeer;
  channel: BlockChannel | null;
  catalog: Catalog | null;
  /** The catalog cards the peer handed us (resolves with none if it never opens the channel). */
  cards: Promise<CatalogCard[]> | null;
}

export async function runSync(opts: SyncOptions): Promise<SyncReport> {
  const { home } = opts;
  const log = opts.log ?? (() => undefined);
  const t0 = Date.now();
  const deadline = t0 + (opts.timeoutSeconds ?? DEFAULT_TIMEOUT_S) * 1000;
  // --watch: the timeout bounds only reaching the DHT; pulls take what they take.
  const pullDeadline = opts.watch ? t0 + 1e12 : deadline;
  const team = await loadTeam(home, opts.team);
  const identity = await ensureIdentity(home);
  const bootstrap = resolveBootstrap(team, opts.bootstrap);

  await ensureDir(path.join(home.root, 'sync'));
  let lock: Lock;
  try {
    lock = await acquireLock(path.join(home.root, 'sync', 'sync.lock'), 'sync', `snapshot sync --team ${opts.team}`, 0);
  } catch (err) {
    if ((err as CloneboxError).code === 'VM_BUSY') {
      throw new CloneboxError('SYNC_BUSY', `another sync is running in this home, ${home.root}`, { hint: 'wait for it to finish (or stop its --watch)' });
    }
    throw err;
  }
  const report: SyncReport = { peers: [], chains: [], bytes_received: 0, shared: [], errors: [] };
  const cleanups: (() => Promise<void>)[] = [];
  try {
    trace('sync: locked');
    const own = await Catalog.openOwn(home, team, identity);
    trace('sync: own catalog open');
    cleanups.push(() => own.close());
    report.shared = (await publish(home, opts.team, own, log)).map(({ vm, snapshots }) => ({ vm, snapshots }));
    trace('sync: published');
    const peerCats = new Map<string, Catalog>();
    let sourceSettled = (): Promise<void> => Promise.resolve();
    cleanups.push(async () => {
      await sourceSettled(); // may be reading these catalogs
      for (const c of peerCats.values()) await c.close();
    });
    /** Catalog key hex -> the name of the member who writes it. */
    const authors = new Map<string, string>();
    const openPeerCatalog = async (key: Buffer): Promise<Catalog> => {
      const hex = key.toString('hex');
      let cat = peerCats.get(hex);
      if (!cat) {
        cat = await Catalog.openPeer(home, opts.team, key);
        peerCats.set(hex, cat);
      }
      return cat;
    };
    // Every teammate's catalog we know, not only those of teammates online: a teammate who has one
    // replicates it to us (hypercore checks its author's signatures), and we serve the chains we
    // pulled from it, so chains travel while their author is away.
    await Promise.all(team.members.map(async (m) => {
      if (!m.catalog_key || m.catalog_key === own.key.toString('hex')) return;
      authors.set(m.catalog_key, m.name);
      try {
        await openPeerCatalog(Buffer.from(m.catalog_key, 'hex'));
      } catch (err) {
        log(`cannot open the catalog of ${m.name}: ${(err as Error).message}`);
      }
    }));
    trace(`sync: ${peerCats.size} teammates' catalogs open`);
    // Cards we hand on: ours, then those of the members we know (checked when they were recorded).
    const cardsToSend: CatalogCard[] = [makeCard(identity, team, own.key)];
    for (const m of team.members) {
      if (!m.card || !m.catalog_key || cardsToSend.length >= MAX_CARDS) continue;
      cardsToSend.push({ identity: Buffer.from(m.public_key, 'hex'), name: m.card.name, catalog: Buffer.from(m.catalog_key, 'hex'), sig: Buffer.from(m.card.sig, 'hex') });
    }
    const cardOf = new Map(team.members.map((m) => [m.public_key, m.card ?? null]));
    const servePulled = (src: ShareSource) => src.servePulled(home, () => [...peerCats.values()], (err) => log(`cannot index pulled chains for serving: ${err.message}`));
    let source = await ShareSource.build(home, own);
    servePulled(source); // the chains we pulled are served too (indexed on the first request)
    sourceSettled = () => source.settled();
    trace(`sync: serving index built (${source.blocks} blocks)`);
    let lastServed = 0;
    const serving = {
      read(hashes: Buffer[]) {
        lastServed = Date.now();
        const inner = source.read(hashes);
        return (async function* () {
          for await (const part of inner) {
            lastServed = Date.now();
            yield part;
          }
        })();
      },
    };
    cleanups.push(() => source.close());
    const local = await LocalBlocks.scan(home, log);
    cleanups.push(() => local.close());
    trace(`sync: local blocks indexed (${local.size})`);
    // What a killed pull wrote before taking a VM lock goes first (we hold the sync lock).
    const temps = await PullTemps.open(home, log);
    const spool = await Spool.open(home);
    let spoolDone = false;
    cleanups.push(async () => {
      if (!spoolDone) await spool.close();
    });

    const states = new Map<string, PeerState>();
    const stateOf = (peer: TeamPeer): PeerState => {
      const hex = peer.publicKey.toString('hex');
      let st = states.get(hex);
      if (!st || st.peer !== peer) {
        const same = st?.peer === peer;
        st = { peer, channel: same ? st!.channel : null, catalog: same ? st!.catalog : null, cards: same ? st!.cards : null };
        states.set(hex, st);
      }
      return st;
    };

    let lastPeerAt = 0;
    // Keys of teammates to pull from, each once; the connection is looked up when its turn comes, since
    // the one that asked may have been replaced (Hyperswarm keeps one of two simultaneous connections).
    const queue: string[] = [];
    const dirty = new Set<string>();
    let pulling: Promise<void> | null = null;
    let stopping = false;

    const fetcherFor = (st: PeerState, progress: (bytes: number) => void): Fetcher => async (hashes, sizeOf, onArrive) => {
      let todo = hashes;
      let fetched = 0;
      let wireBytes = 0;
      let corrupt = 0;
      let notServed = false;
      // The sharer first, then any other teammate online; a corrupt block is asked for once more.
      const order = [st, ...[...states.values()].filter((s) => s !== st)];
      const tries = [...order, st];
      for (const s of tries) {
        if (!todo.length || stopping) break;
        if (!s.channel || s.peer.stream.destroyed) continue;
        let bytes = 0;
        const r = await s.channel.fetch(todo, {
          onBlock: async (h, data) => {
            if (opts.signal?.aborted) throw abortedError(); // the pull fails before it registers anything
            await spool.append(h, data); // keeps `data`: frames are decoded into fresh buffers
            onArrive?.(h, data);
            bytes += data.length;
            progress(bytes);
          },
          expectedSize: sizeOf,
          deadline: pullDeadline,
        });
        fetched += r.received;
        wireBytes += r.wireBytes;
        if (r.corrupt.length) {
          corrupt += r.corrupt.length;
          log(`peer ${s.peer.name} (${shortKey(s.peer.publicKey)}) sent ${r.corrupt.length} corrupt block(s); not written, asking again`);
        }
        todo = [...r.corrupt, ...r.missing, ...r.unanswered];
        // The sharer, asked last, said plainly that it does not have them (no timeout, no corruption).
        notServed = s === st && r.corrupt.length === 0 && r.unanswered.length === 0;
      }
      await spool.flush();
      return { fetched, wireBytes, failed: todo, corrupt, notServed: notServed && todo.length > 0 };
    };

    /**
     * Catches up with a teammate's catalog as the connected peers have it: its length, then every
     * entry. Hypercore's update() answers "nothing new" at once while the core has no replicating peer
     * yet (its channel opens a round trip after ours), which made a pull under load see an old
     * catalog: wait up to `waitMs` for a peer first.
     */
    const catchUp = async (cat: Catalog, waitMs: number): Promise<void> => {
      const bound = (ms: number) => Math.min(ms, Math.max(0, pullDeadline - Date.now()));
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
      if (cat.core.length > cat.core.contiguousLength) {
        const dl = cat.core.download({ start: 0, end: cat.core.length });
        await Promise.race([dl.done().catch(() => undefined), sleep(bound(60_000))]);
      }
    };

    /** Per catalog and VM: blocks its sharer said it no longer has, at which catalog length. */
    const unservableMemo = new Map<string, { length: number; blocks: Set<string> }>();

    /** Pulls every chain `cat` shares; blocks come from `st` first (see fetcherFor). */
    const pullCatalog = async (st: PeerState, cat: Catalog, author: string, relayed: boolean): Promise<void> => {
      if (cat.core.contiguousLength < cat.core.length) {
        log(`the catalog of ${author} is not complete here yet; its chains wait for the next sync`);
        return;
      }
      const view = await cat.view();
      for (const vm of view.shares.keys()) {
        if (stopping) return;
        const label = `${vm} from ${author}${author === st.peer.name ? '' : ` (via ${st.peer.name})`}`;
        const ctx = {
          home, peerName: author, catalog: cat, view, local, spool, temps, log,
          fetch: fetcherFor(st, (b) => opts.progress?.({ phase: 'receive', chain: label, done: b, total: null })),
          progress: (name: string, done: number, total: number) => opts.progress?.({ phase: 'write', chain: label, snapshot: name, done, total }),
        };
        const memoKey = `${cat.key.toString('hex')}/${vm}`;
        const memo = unservableMemo.get(memoKey);
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
            unservableMemo.set(memoKey, { length: view.length, blocks });
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
                phase: 'pulled', chain: label, done: r.snapshots.length, total: r.snapshots.length, vm: r.vm, blocks_fetched: r.blocks_fetched, blocks_reused: r.blocks_reused,
              });
              await source.pulledFrom(cat); // served on from now
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
    };

    const pullPeer = async (st: PeerState): Promise<void> => {
      if (st.catalog) {
        await catchUp(st.catalog, 10_000);
        trace(`pull ${st.peer.name}: catalog replicated (${st.catalog.core.length} entries)`);
        await pullCatalog(st, st.catalog, st.peer.name, false);
      }
      // The peer's cards: members we never met become known through it (their catalogs then relay
      // like any other); a member we met without its card gets it recorded, to hand on.
      const cards = st.cards ? await Promise.race([st.cards, sleep(RELAY_WAIT_MS).then((): CatalogCard[] => [])]) : [];
      for (const card of cards) {
        if (stopping) return;
        const hex = card.catalog.toString('hex');
        const pk = card.identity.toString('hex');
        const known = peerCats.has(hex) || card.catalog.equals(own.key);
        if (known && (cardOf.get(pk) || card.identity.equals(identity.publicKey))) continue;
        if (!verifyCard(card, team)) {
          log(`peer ${st.peer.name} handed on a catalog card that does not verify (${shortKey(card.identity)}); ignored`);
          continue;
        }
        const via = card.identity.equals(st.peer.publicKey) ? null : st.peer.name;
        const m = await recordCard(home, opts.team, identity, card, via);
        if (!m || m.catalog_key !== hex) continue;
        cardOf.set(pk, m.card ?? null);
        if (cardsToSend.length < MAX_CARDS && !cardsToSend.some((k) => k.identity.equals(card.identity))) cardsToSend.push(card);
        if (known) continue;
        log(`new member on team ${opts.team}: ${m.name} (${shortKey(card.identity)}), known through ${st.peer.name}`);
        authors.set(hex, m.name);
        const cat = await openPeerCatalog(card.catalog);
        cat.core.replicate(st.peer.mux);
      }
      // Relayed: the catalogs of teammates not online, as this peer has them. A peer that lacks one
      // never opens its channel, so its arrival is waited for (in parallel, RELAY_WAIT_MS at most),
      // only for the catalogs whose cards the peer handed us (all, for a peer without cards).
      const online = new Set([...states.values()].filter((o) => !o.peer.stream.destroyed).map((o) => o.catalog));
      const offered = new Set(cards.map((k) => k.catalog.toString('hex')));
      const relayed = [...peerCats].filter(([hex, c]) => c !== st.catalog && !online.has(c) && (cards.length === 0 || offered.has(hex) || c.core.peers.length > 0));
      await Promise.all(relayed.map(([, c]) => catchUp(c, RELAY_WAIT_MS)));
      for (const [hex, cat] of relayed) {
        if (stopping) return;
        if (cat.core.peers.length === 0 || cat.core.length === 0) continue;
        trace(`pull ${st.peer.name}: relays the catalog of ${authors.get(hex) ?? hex.slice(0, 8)} (${cat.core.length} entries)`);
        await pullCatalog(st, cat, authors.get(hex) ?? hex.slice(0, 8), true);
      }
    };

    const pump = (): void => {
      if (pulling) return;
      pulling = (async () => {
        while (queue.length && !stopping) {
          const hex = queue.shift()!;
          dirty.delete(hex);
          const st = states.get(hex);
          if (st && !st.peer.stream.destroyed) await pullPeer(st);
        }
      })().finally(() => {
        pulling = null;
        if (queue.length && !stopping) pump();
      });
    };
    const schedule = (peer: TeamPeer): void => {
      const hex = peer.publicKey.toString('hex');
      if (dirty.has(hex)) return;
      dirty.add(hex);
      queue.push(hex);
      pump();
    };

    const swarm = await TeamSwarm.open({
      home, team, identity, bootstrap, deadline, log, catalogKey: own.key,
      services: {
        'hypercore/alpha': async (peer) => {
          const st = stateOf(peer);
          own.core.replicate(peer.mux);
          const recorded = peer.member.catalog_key ? Buffer.from(peer.member.catalog_key, 'hex') : null;
          if (recorded && peer.intro.catalog && !recorded.equals(peer.intro.catalog)) {
            log(`peer ${peer.name} announces another catalog than the one first recorded; using the recorded one`);
          }
          const key = recorded ?? peer.intro.catalog;
          if (key && !key.equals(own.key)) {
            const cat = await openPeerCatalog(key);
            authors.set(key.toString('hex'), peer.name);
            st.catalog = cat;
          }
          // Its own catalog, and every other teammate's we have (relayed both ways).
          for (const c of peerCats.values()) c.core.replicate(peer.mux);
        },
        [BLOCKS_PROTOCOL]: (peer) => {
          stateOf(peer).channel = BlockChannel.attach(peer.mux, { source: serving });
        },
        [CATALOGS_PROTOCOL]: (peer) => {
          const st = stateOf(peer);
          let got!: (cards: CatalogCard[]) => void;
          st.cards = new Promise((r) => { got = r; });
          const ch = peer.mux.createChannel({
            protocol: CATALOGS_PROTOCOL,
            handshake: catalogCards,
            onopen: (cards: CatalogCard[]) => got(cards),
            onclose: () => got([]),
          });
          if (!ch) return got([]);
          ch.open(cardsToSend.slice(0, MAX_CARDS));
        },
      },
    });
    cleanups.unshift(() => swarm.close());
    trace('sync: swarm joined');
    const onPeer = (peer: TeamPeer) => {
      lastPeerAt = Date.now();
      trace(`sync: peer ${peer.name} proven`);
      if (!report.peers.includes(peer.name)) report.peers.push(peer.name);
      const st = stateOf(peer);
      st.catalog?.core.on('append', () => {
        if (opts.watch) schedule(peer);
      });
      schedule(peer);
    };
    swarm.on('peer', onPeer);
    for (const p of swarm.peers.values()) onPeer(p);

    if (opts.watch) {
      // Serve and pull until stopped; republish every few seconds (new snapshots follow the share).
      const aborted = new Promise<void>((r) => {
        if (opts.signal?.aborted) r();
        opts.signal?.addEventListener('abort', () => r(), { once: true });
      });
      while (!opts.signal?.aborted) {
        await Promise.race([sleep(5000), aborted]);
        if (opts.signal?.aborted) break;
        try {
          const res = await publish(home, opts.team, own, log);
          if (res.some((r) => r.appended > 0) || res.length !== report.shared.length) {
            report.shared = res.map(({ vm, snapshots }) => ({ vm, snapshots }));
            const next = await ShareSource.build(home, own);
            servePulled(next);
            const old = source;
            source = next;
            await old.close();
          }
        } catch (err) {
          log(`publishing failed: ${(err as Error).message}`);
        }
        // Teammates' catalogs may have grown while we were pulling: look again.
        for (const st of states.values()) if (!st.peer.stream.destroyed) schedule(st.peer);
      }
      stopping = true;
    } else {
      // Until caught up: see the module comment.
      let discovered = false;
      void swarm.discovered(deadline).then(() => { discovered = true; });
      for (;;) {
        const now = Date.now();
        if (now >= deadline || opts.signal?.aborted) break;
        // Sharing: a teammate may be about to ask us for blocks, or between two of its pulls. Not
        // sharing: done once the teammates the lookup found are connected and proven.
        const quiet = source.blocks > 0
          ? now - Math.max(lastPeerAt, lastServed) >= SETTLE_MS
          : discovered && swarm.provingNow === 0 && now - lastPeerAt >= PEER_GRACE_MS;
        if (report.peers.length > 0 && quiet && !pulling && queue.length === 0) break;
        await sleep(50);
      }
      if (opts.signal?.aborted) {
        stopping = true;
        await pulling;
        throw abortedError();
      }
      if (pulling || queue.length) {
        stopping = true;
        await pulling;
        throw new CloneboxError('SYNC_TIMEOUT', `sync did not finish in ${opts.timeoutSeconds ?? DEFAULT_TIMEOUT_S} s, team ${opts.team}`, {
          hint: 'blocks received so far are kept: run sync again to continue (or give a longer --timeout)',
        });
      }
      if (report.peers.length === 0) log(`no teammate online on team ${opts.team} within ${Math.round((Date.now() - t0) / 1000)} s`);
    }
    await pulling;
    trace('sync: done, closing');
    if (report.errors.length === 0) {
      // Every block in the spool is in a registered layer now.
      await spool.clear();
      spoolDone = true;
    }
    return report;
  } finally {
    for (const c of cleanups) await c().catch(() => undefined);
    await lock.release();
  }
}
