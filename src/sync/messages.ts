/**
 * Wire formats of clonebox's team protocol, in one place so the protocol reads in one sitting (docs/sync.md,
 * "Wire protocol"). Everything travels inside a Noise-encrypted Hyperswarm connection, multiplexed by
 * Protomux into channels:
 *
 *   clonebox/membership  opened first by both sides; its handshake carries the membership proof
 *                        (src/sync/membership.ts), then each side sends an Intro once it has checked the
 *                        other's proof. Nothing else is opened or sent before that.
 *   hypercore/alpha      Hypercore replication of each member's catalog core (one per workstation).
 *   clonebox/blocks      block requests and frames of blocks (Request, Frame, Missing, Cancel below).
 *   clonebox/catalogs    its handshake carries the catalog cards the sender knows (cards.ts), its own
 *                        first, so teammates can follow catalogs of members they never met. A peer
 *                        that does not speak it (an older clonebox) just never opens it.
 *   clonebox/tcp         one Offer each way: the TCP port blocks may move to (tcp.ts); a peer that
 *                        does not speak it rejects the channel and blocks stay on this connection.
 *
 * Encodings are compact-encoding (varint "uint", length-prefixed strings and buffers). The protocol
 * version travels in the membership handshake; both sides then speak the lower of the two versions.
 * Decoders check every length against a fixed limit before anything is kept, and reject trailing bytes.
 */
import c from 'compact-encoding';
import { NAME_RE } from '../names.js';

/** A compact-encoding codec of one message type. */
export type Encoding<T> = c.Encoding<T>;

export const PROTOCOL_VERSION = 1;
export const MEMBERSHIP_PROTOCOL = 'clonebox/membership';
export const BLOCKS_PROTOCOL = 'clonebox/blocks';
/** Version 2: cards carry the catalog key's countersignature (version 1 peers never open this one). */
export const CATALOGS_PROTOCOL = 'clonebox/catalogs/2';
export const TCP_PROTOCOL = 'clonebox/tcp';

/** Most block hashes in one Request or Missing. */
export const MAX_HASHES_PER_REQUEST = 4096;
export const HASH_BYTES = 32;

export class WireError extends Error {
  constructor(message: string) {
    super(`malformed message: ${message}`);
    this.name = 'WireError';
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new WireError(what);
}

// ---- Membership channel (clonebox/membership) -----------------------------------------------------

/**
 * The channel's handshake, sent by both sides as soon as the connection opens. It carries nothing but
 * the protocol version and the proof, so a peer that fails the proof has learnt nothing about us.
 *
 *   version   uint      highest protocol version the sender speaks (1); the session uses the lower of the two
 *   proof     32 bytes  membership proof bound to this connection (src/sync/membership.ts)
 */
export interface MembershipHandshake {
  version: number;
  proof: Buffer;
}

export const membershipHandshake: c.Encoding<MembershipHandshake> = {
  preencode(state, m) {
    c.uint.preencode(state, m.version);
    c.fixed32.preencode(state, m.proof);
  },
  encode(state, m) {
    c.uint.encode(state, m.version);
    c.fixed32.encode(state, m.proof);
  },
  decode(state) {
    const version = c.uint.decode(state);
    check(version >= 1, 'protocol version');
    return { version, proof: c.fixed32.decode(state) };
  },
};

/**
 * Message 0 of the membership channel, sent by each side only after it has checked the other's proof.
 *
 *   name        string    the sender's workstation name (clonebox name rules)
 *   catalog     buffer    key of the sender's catalog core (32 bytes), or empty when it shares nothing yet
 *   catalogSig  buffer    the catalog's proof that it belongs to the sender (cards.ts catalogProof:
 *                         signer key and signature, 96 bytes), or empty; absent from older peers' Intros (which
 *                         older decoders, reading only the first two fields, tolerate from us)
 */
export interface Intro {
  name: string;
  catalog: Buffer | null;
  catalogSig: Buffer | null;
}

export const intro: c.Encoding<Intro> = {
  preencode(state, m) {
    c.string.preencode(state, m.name);
    c.optionalBuffer.preencode(state, m.catalog);
    c.optionalBuffer.preencode(state, m.catalogSig);
  },
  encode(state, m) {
    c.string.encode(state, m.name);
    c.optionalBuffer.encode(state, m.catalog);
    c.optionalBuffer.encode(state, m.catalogSig);
  },
  decode(state) {
    const name = c.string.decode(state);
    check(NAME_RE.test(name), 'workstation name');
    const catalog = c.optionalBuffer.decode(state);
    check(catalog === null || catalog.length === 32, 'catalog key length');
    const catalogSig = state.start < state.end ? c.optionalBuffer.decode(state) : null;
    check(catalogSig === null || catalogSig.length === CATALOG_PROOF_LENGTH, 'catalog signature length');
    return { name, catalog, catalogSig };
  },
};

// ---- Catalog cards (clonebox/catalogs) ------------------------------------------------------------

/** Bytes of a catalog proof (cards.ts): the catalog's signer key and its signature. */
export const CATALOG_PROOF_LENGTH = 96;

/** Most cards in one handshake (a team of that many members is far beyond what clonebox is for). */
export const MAX_CARDS = 256;

/**
 * The channel's handshake: count (1..MAX_CARDS), then per card identity (32 bytes), name (string,
 * clonebox name rules), catalog key (32 bytes), signature (64 bytes), the catalog key's countersignature
 * (96 bytes: the catalog's signer key and signature). Signatures are checked by the receiver (cards.ts
 * verifyCard), not here.
 */
export const catalogCards: c.Encoding<CatalogCardWire[]> = {
  preencode(state, list) {
    c.uint.preencode(state, list.length);
    for (const k of list) {
      state.end += 32;
      c.string.preencode(state, k.name);
      state.end += 32 + 64 + CATALOG_PROOF_LENGTH;
    }
  },
  encode(state, list) {
    c.uint.encode(state, list.length);
    for (const k of list) {
      c.fixed32.encode(state, k.identity);
      c.string.encode(state, k.name);
      c.fixed32.encode(state, k.catalog);
      c.fixed64.encode(state, k.sig);
      c.fixed32.encode(state, k.csig.subarray(0, 32));
      c.fixed64.encode(state, k.csig.subarray(32));
    }
  },
  decode(state) {
    const n = c.uint.decode(state);
    check(n >= 1 && n <= MAX_CARDS, 'card count');
    const out: CatalogCardWire[] = [];
    for (let i = 0; i < n; i++) {
      const identity = c.fixed32.decode(state);
      const name = c.string.decode(state);
      check(NAME_RE.test(name), 'card name');
      const catalog = c.fixed32.decode(state);
      const sig = c.fixed64.decode(state);
      const csig = Buffer.concat([c.fixed32.decode(state), c.fixed64.decode(state)]);
      out.push({ identity, name, catalog, sig, csig });
    }
    return out;
  },
};

export interface CatalogCardWire {
  identity: Buffer;
  name: string;
  catalog: Buffer;
  sig: Buffer;
  csig: Buffer;
}

// ---- Block exchange (clonebox/blocks) -------------------------------------------------------------
//
// Blocks are the bundle's blocks (src/bundle/format.ts: guest data cut at 64 KiB, named by the SHA-256
// of their raw bytes, listed in the signed catalog). They travel in frames: one or more blocks
// compressed together, as the bundle's packs store them, so a sharer can send a frame it already has
// and the receiver checks every block against its hash after decompressing, before writing it.

/** Message 0. Asks for blocks by hash; answers come as Frame or Missing messages, in any order. */
export interface BlockRequest {
  id: number;
  hashes: Buffer[];
}
/**
 * Message 1. Blocks `blocks` (in order: hash and raw size) whose raw bytes, concatenated, are `data`
 * (codec 0) or decompress from it (codec 1: one zstd frame).
 */
export interface BlockFrame {
  id: number;
  codec: number;
  blocks: { hash: Buffer; size: number }[];
  data: Buffer;
}
/** Message 2. The sender does not have (or will not serve) these blocks. */
export interface BlockMissing {
  id: number;
  hashes: Buffer[];
}
/** Message 3. Drop what is still queued for this request. */
export interface BlockCancel {
  id: number;
}

export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
/** Most raw bytes in one frame (the bundle's MAX_FRAME_RAW). */
export const MAX_FRAME_RAW = 16 * 1024 * 1024;
/** Most blocks in one frame (16 MiB of 512-byte clusters). */
const MAX_FRAME_BLOCKS = MAX_FRAME_RAW / 512;

const hashList = (what: string, max: number): c.Encoding<Buffer[]> => ({
  preencode(state, list) {
    c.uint.preencode(state, list.length);
    state.end += HASH_BYTES * list.length;
  },
  encode(state, list) {
    c.uint.encode(state, list.length);
    for (const h of list) c.fixed32.encode(state, h);
  },
  decode(state) {
    const n = c.uint.decode(state);
    check(n >= 1 && n <= max, `${what} count`);
    check(state.end - state.start >= n * HASH_BYTES, `${what} truncated`);
    const out: Buffer[] = [];
    for (let i = 0; i < n; i++) out.push(c.fixed32.decode(state));
    return out;
  },
});

const requestHashes = hashList('hash', MAX_HASHES_PER_REQUEST);

export const blockRequest: c.Encoding<BlockRequest> = {
  preencode(state, m) {
    c.uint.preencode(state, m.id);
    requestHashes.preencode(state, m.hashes);
  },
  encode(state, m) {
    c.uint.encode(state, m.id);
    requestHashes.encode(state, m.hashes);
  },
  decode(state) {
    return { id: c.uint.decode(state), hashes: requestHashes.decode(state) };
  },
};

export const blockFrame: c.Encoding<BlockFrame> = {
  preencode(state, m) {
    c.uint.preencode(state, m.id);
    c.uint8.preencode(state, m.codec);
    c.uint.preencode(state, m.blocks.length);
    for (const b of m.blocks) {
      c.fixed32.preencode(state, b.hash);
      c.uint.preencode(state, b.size);
    }
    c.binary.preencode(state, m.data);
  },
  encode(state, m) {
    c.uint.encode(state, m.id);
    c.uint8.encode(state, m.codec);
    c.uint.encode(state, m.blocks.length);
    for (const b of m.blocks) {
      c.fixed32.encode(state, b.hash);
      c.uint.encode(state, b.size);
    }
    c.binary.encode(state, m.data);
  },
  decode(state) {
    const id = c.uint.decode(state);
    const codec = c.uint8.decode(state);
    check(codec === CODEC_RAW || codec === CODEC_ZSTD, 'codec');
    const n = c.uint.decode(state);
    check(n >= 1 && n <= MAX_FRAME_BLOCKS, 'block count');
    check(state.end - state.start >= n * (HASH_BYTES + 1), 'frame truncated');
    const blocks: BlockFrame['blocks'] = [];
    let total = 0;
    for (let i = 0; i < n; i++) {
      const hash = c.fixed32.decode(state);
      const size = c.uint.decode(state);
      check(size >= 1 && size <= MAX_FRAME_RAW, 'block size');
      total += size;
      check(total <= MAX_FRAME_RAW, 'frame size');
      blocks.push({ hash, size });
    }
    const data = c.binary.decode(state);
    check(data.length >= 1 && data.length <= total, 'payload length');
    check(codec !== CODEC_RAW || data.length === total, 'raw payload length');
    return { id, codec, blocks, data };
  },
};

const missingHashes = hashList('hash', MAX_HASHES_PER_REQUEST);

export const blockMissing: c.Encoding<BlockMissing> = {
  preencode(state, m) {
    c.uint.preencode(state, m.id);
    missingHashes.preencode(state, m.hashes);
  },
  encode(state, m) {
    c.uint.encode(state, m.id);
    missingHashes.encode(state, m.hashes);
  },
  decode(state) {
    return { id: c.uint.decode(state), hashes: missingHashes.decode(state) };
  },
};

export const blockCancel: c.Encoding<BlockCancel> = {
  preencode(state, m) {
    c.uint.preencode(state, m.id);
  },
  encode(state, m) {
    c.uint.encode(state, m.id);
  },
  decode(state) {
    return { id: c.uint.decode(state) };
  },
};

// ---- TCP path channel (clonebox/tcp) --------------------------------------------------------------

/**
 * The one message of the channel (tcp.ts). The side that did not dial the Hyperswarm connection offers
 * a port on the address the other side reaches it at; the other dials it, or answers port 0 when it
 * could not (then both keep blocks on the Hyperswarm connection). Port 0 from the offering side: no
 * TCP path offered.
 *
 *   port   uint   1..65535, or 0
 */
export interface TcpOffer {
  port: number;
}

export const tcpOffer: c.Encoding<TcpOffer> = {
  preencode(state, m) {
    c.uint.preencode(state, m.port);
  },
  encode(state, m) {
    c.uint.encode(state, m.port);
  },
  decode(state) {
    const port = c.uint.decode(state);
    check(port <= 65535, `TCP port ${port} out of range`);
    return { port };
  },
};

/** Encodes one message to a standalone buffer (tests, fuzzing, logs). */
export function encodeMessage<T>(enc: c.Encoding<T>, value: T): Buffer {
  return c.encode(enc, value);
}

/**
 * Decodes one standalone message: any decoder failure (short input, bad field) and any trailing byte
 * become a WireError.
 */
export function decodeMessage<T>(enc: c.Encoding<T>, buf: Buffer): T {
  const state = c.state(0, buf.length, buf);
  let value: T;
  try {
    value = enc.decode(state);
  } catch (err) {
    if (err instanceof WireError) throw err;
    throw new WireError((err as Error).message);
  }
  if (state.start !== state.end) throw new WireError('trailing bytes');
  return value;
}
