/**
 * Team key material. A team is one 32-byte random secret; everything else is derived from it with
 * HMAC-SHA256 under a fixed context string, so that what is derived for one purpose says nothing about
 * the secret or about what is derived for another:
 *
 *   topic          = HMAC-SHA256(secret, "clonebox/v1/topic")        public: DHT nodes see it
 *   membership key = HMAC-SHA256(secret, "clonebox/v1/membership")   private: keys the membership proof
 *
 * docs/sync.md ("Teams and invites") is the reference for these strings.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const SECRET_BYTES = 32;

export function newTeamSecret(): Buffer {
  return randomBytes(SECRET_BYTES);
}

function derive(secret: Buffer, context: string): Buffer {
  if (secret.length !== SECRET_BYTES) throw new Error(`team secret must be ${SECRET_BYTES} bytes`);
  return createHmac('sha256', secret).update(context, 'utf8').digest();
}

/** The Hyperswarm topic the team's workstations announce and look up. */
export function teamTopic(secret: Buffer): Buffer {
  return derive(secret, 'clonebox/v1/topic');
}

/** The key of the per-connection membership proof (src/sync/membership.ts). */
export function membershipKey(secret: Buffer): Buffer {
  return derive(secret, 'clonebox/v1/membership');
}

/** Constant-time equality of two byte strings (false when the lengths differ). */
export function equalBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
