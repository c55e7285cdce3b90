/**
 * The card exchange of a sync run (clonebox/catalogs): each side hands the other the catalog cards it
 * knows — its own and its teammates' — so that members who never met learn each other's catalogs
 * (which then relay like any other), and a member met without its card gets it recorded, to hand on.
 */
import type { Home } from '../store/home.js';
import { type CatalogCard, makeCard, verifyCard } from './cards.js';
import type { CatalogSet } from './catalog-set.js';
import type { PeerState } from './fetcher.js';
import type { Identity } from './identity.js';
import { MAX_MEMBERS, MAX_NEW_CARDS_PER_PEER } from './limits.js';
import { CATALOGS_PROTOCOL, catalogCards, MAX_CARDS } from './messages.js';
import { shortKey, type TeamPeer } from './swarm.js';
import { type MemberRecord, recordCard, type TeamRecord } from './teams.js';

/** How long a pull waits for a peer's cards (and for it to replicate a catalog it may not have). */
export const RELAY_WAIT_MS = 1500;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref?.());

export class CardExchange {
  /** Cards we hand on: ours, then those of the members we know (checked when they were recorded). */
  private readonly toSend: CatalogCard[];
  /** Member public key hex -> its recorded card (null: met without one). */
  private readonly cardOf: Map<string, MemberRecord['card'] | null>;

  constructor(
    private readonly home: Home,
    private readonly teamName: string,
    private readonly team: TeamRecord,
    private readonly identity: Identity,
    private readonly catalogs: CatalogSet,
    private readonly log: (line: string) => void,
  ) {
    this.toSend = [makeCard(identity, team)];
    for (const m of team.members) {
      // A card recorded before cards were countersigned (no csig) cannot be handed on.
      if (!m.card?.csig || !m.catalog_key || this.toSend.length >= MAX_CARDS) continue;
      this.toSend.push({
        identity: Buffer.from(m.public_key, 'hex'),
        name: m.card.name,
        catalog: Buffer.from(m.catalog_key, 'hex'),
        sig: Buffer.from(m.card.sig, 'hex'),
        csig: Buffer.from(m.card.csig, 'hex'),
      });
    }
    this.cardOf = new Map(team.members.map((m) => [m.public_key, m.card ?? null]));
  }

  /** The clonebox/catalogs service for a proven peer: sends our cards, notes the promise of theirs. */
  attach(peer: TeamPeer, st: PeerState): void {
    let got!: (cards: CatalogCard[]) => void;
    st.cards = new Promise((r) => {
      got = r;
    });
    const ch = peer.mux.createChannel({
      protocol: CATALOGS_PROTOCOL,
      handshake: catalogCards,
      onopen: (cards: CatalogCard[]) => got(cards),
      onclose: () => got([]),
    });
    if (!ch) {
      got([]);
      return;
    }
    ch.open(this.toSend.slice(0, MAX_CARDS));
  }

  /**
   * Takes in the cards `st`'s peer handed us (waiting RELAY_WAIT_MS at most): verifies and records
   * each new one, opens and replicates the catalogs of members met this way. Returns the cards, and
   * whether it stopped early because the run is stopping.
   */
  async receive(st: PeerState, stopping: () => boolean): Promise<{ cards: CatalogCard[]; stopped: boolean }> {
    const { catalogs, identity, log, teamName } = this;
    const cards = st.cards ? await Promise.race([st.cards, sleep(RELAY_WAIT_MS).then((): CatalogCard[] => [])]) : [];
    let strangers = 0; // members first learnt from this peer's cards in this run
    for (const card of cards) {
      if (stopping()) return { cards, stopped: true };
      const hex = card.catalog.toString('hex');
      const pk = card.identity.toString('hex');
      const known = catalogs.has(hex) || card.catalog.equals(catalogs.own.key);
      if (known && (this.cardOf.get(pk) || card.identity.equals(identity.publicKey))) continue;
      if (!verifyCard(card, this.team)) {
        log(`peer ${st.peer.name} handed on a catalog card that does not verify (${shortKey(card.identity)}); ignored`);
        continue;
      }
      const via = card.identity.equals(st.peer.publicKey) ? null : st.peer.name;
      const stranger = !this.cardOf.has(pk);
      // The peer's own card (met this run, so not among the members known at the start) is no member
      // learnt from its cards: it must not take one of the places of those.
      if (stranger && via !== null && ++strangers > MAX_NEW_CARDS_PER_PEER) {
        if (strangers === MAX_NEW_CARDS_PER_PEER + 1) {
          log(`peer ${st.peer.name} handed on cards of more than ${MAX_NEW_CARDS_PER_PEER} members unknown here; the rest wait for the next sync`);
        }
        continue;
      }
      const m = await recordCard(this.home, teamName, identity, card, via);
      if (!m && stranger) {
        log(
          `team ${teamName} has ${MAX_MEMBERS} members (the limit): the card of ${card.name} (${shortKey(card.identity)}) from ${st.peer.name} is not recorded`,
        );
        continue;
      }
      if (!m || m.catalog_key !== hex) continue;
      this.cardOf.set(pk, m.card ?? null);
      if (this.toSend.length < MAX_CARDS && !this.toSend.some((k) => k.identity.equals(card.identity))) this.toSend.push(card);
      if (known) continue;
      log(`new member on team ${teamName}: ${m.name} (${shortKey(card.identity)}), known through ${st.peer.name}`);
      catalogs.setAuthor(hex, m.name, card.identity);
      const cat = await catalogs.open(card.catalog);
      cat.core.replicate(st.peer.mux);
    }
    return { cards, stopped: false };
  }
}
