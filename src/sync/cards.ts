/**
 * Catalog cards: a member's signed statement "my catalog core for this team is K, and I call myself N".
 *
 *   sig = Ed25519(identity secret key, "clonebox/v1/catalog-card\n" || team topic (32) || K (32) ||
 *                 u8 length of N || N)
 *
 * A teammate who met a member keeps its card and hands it on (the clonebox/catalogs channel,
 * messages.ts), so a workstation that never met that member can still open its catalog, have a
 * teammate relay it (Hypercore checks every entry against K) and pull its chains. The card is what
 * makes that safe: a relay cannot make a catalog of its own pass for someone else's, since only the
 * identity's holder can sign the link from identity to K, and K's holder alone writes the core. What
 * a relay can do (withhold a card, or hand on a real member's card late) gives it nothing it could
 * not do by connecting under a new key pair of its own.
 */
import { createPublicKey, sign, verify } from 'node:crypto';
import { ed25519PrivateKey, type Identity } from './identity.js';
import { teamTopic } from './keys.js';
import type { CatalogCardWire } from './messages.js';
import { type TeamRecord, teamSecret } from './teams.js';

/** A card: identity, claimed name, catalog key, signature (the wire shape, messages.ts). */
export type CatalogCard = CatalogCardWire;

const CONTEXT = Buffer.from('clonebox/v1/catalog-card\n', 'latin1');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function signedBytes(team: TeamRecord, catalog: Buffer, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([CONTEXT, teamTopic(teamSecret(team)), catalog, Buffer.from([n.length]), n]);
}

/** Our own card for `team` (the identity's secret key is libsodium's layout: seed, then public key). */
export function makeCard(identity: Identity, team: TeamRecord, catalog: Buffer): CatalogCard {
  const key = ed25519PrivateKey(identity.secretKey.subarray(0, 32));
  return { identity: identity.publicKey, name: identity.name, catalog, sig: sign(null, signedBytes(team, catalog, identity.name), key) };
}

/** True when the card's signature checks for this team. */
export function verifyCard(card: CatalogCard, team: TeamRecord): boolean {
  if (card.identity.length !== 32 || card.catalog.length !== 32 || card.sig.length !== 64) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, card.identity]), format: 'der', type: 'spki' });
    return verify(null, signedBytes(team, card.catalog, card.name), key, card.sig);
  } catch {
    return false;
  }
}
