/**
 * Catalog cards: a member's signed statement "my catalog core for this team is K, and I call myself N",
 * countersigned by K: "this catalog belongs to identity I".
 *
 *   sig  = Ed25519(identity secret key, "clonebox/v1/catalog-card\n" || team topic (32) || K (32) ||
 *                  u8 length of N || N)
 *   csig = S || Ed25519(catalog signer secret key S, "clonebox/v1/catalog-owner\n" || team topic (32) || I (32))
 *
 * where S is the catalog core's signer public key: a core's key K is a hash of its signer's key
 * (Hypercore's manifest), so the proof carries S and is valid only when K = Hypercore.key(S).
 *
 * The countersignature (also carried by the Intro, catalogProof) stops a member from claiming a
 * teammate's catalog as its own: without it, a newcomer that meets the claimant first would credit the
 * teammate's chains to the claimant. Only K's holder can sign for K.
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
import { catalogKeyOf, catalogKeyPair } from './catalog.js';
import { ed25519PrivateKey, type Identity, type KeyPair } from './identity.js';
import { teamTopic } from './keys.js';
import { CATALOG_PROOF_LENGTH, type CatalogCardWire } from './messages.js';
import { type TeamRecord, teamSecret } from './teams.js';

/** A card: identity, claimed name, catalog key, signature (the wire shape, messages.ts). */
export type CatalogCard = CatalogCardWire;

const CONTEXT = Buffer.from('clonebox/v1/catalog-card\n', 'latin1');
const OWNER_CONTEXT = Buffer.from('clonebox/v1/catalog-owner\n', 'latin1');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function signedBytes(team: TeamRecord, catalog: Buffer, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([CONTEXT, teamTopic(teamSecret(team)), catalog, Buffer.from([n.length]), n]);
}

function ownerBytes(team: TeamRecord, identity: Buffer): Buffer {
  return Buffer.concat([OWNER_CONTEXT, teamTopic(teamSecret(team)), identity]);
}

function checks(publicKey: Buffer, message: Buffer, sig: Buffer): boolean {
  if (publicKey.length !== 32 || sig.length !== 64) return false;
  try {
    return verify(null, message, createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]), format: 'der', type: 'spki' }), sig);
  } catch {
    return false;
  }
}

/** The catalog's proof that it belongs to `identity` (card csig, Intro catalogSig): signer key, signature. */
export function catalogProof(catalog: KeyPair, team: TeamRecord, identity: Buffer): Buffer {
  return Buffer.concat([catalog.publicKey, sign(null, ownerBytes(team, identity), ed25519PrivateKey(catalog.secretKey.subarray(0, 32)))]);
}

/** True when `proof` is the proof of the core with key `catalog` that it belongs to `identity` in this team. */
export function verifyCatalogProof(team: TeamRecord, identity: Buffer, catalog: Buffer, proof: Buffer | null): boolean {
  if (proof?.length !== CATALOG_PROOF_LENGTH) return false;
  const signer = proof.subarray(0, 32);
  return catalogKeyOf(signer).equals(catalog) && checks(signer, ownerBytes(team, identity), proof.subarray(32));
}

/**
 * Our own card for `team` (the identity's secret key is libsodium's layout: seed, then public key).
 * `catalog`: our catalog key pair for the team (tests pass others).
 */
export function makeCard(identity: Identity, team: TeamRecord, catalog: KeyPair = catalogKeyPair(identity, team)): CatalogCard {
  const key = catalogKeyOf(catalog.publicKey);
  return {
    identity: identity.publicKey,
    name: identity.name,
    catalog: key,
    sig: sign(null, signedBytes(team, key, identity.name), ed25519PrivateKey(identity.secretKey.subarray(0, 32))),
    csig: catalogProof(catalog, team, identity.publicKey),
  };
}

/** True when both signatures of the card check for this team. */
export function verifyCard(card: CatalogCard, team: TeamRecord): boolean {
  if (card.catalog.length !== 32) return false;
  return checks(card.identity, signedBytes(team, card.catalog, card.name), card.sig) && verifyCatalogProof(team, card.identity, card.catalog, card.csig);
}
