/**
 * In-process tests of the sync building blocks: z-base-32, invites (every single-character change and
 * every truncation refused), wire messages (round trips, truncations, mutations, limits), key
 * derivation, the membership proof's binding, identities and the member naming rule.
 */
import { sign } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import c from 'compact-encoding';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../src/store/home.js';
import { makeCard, verifyCard, verifyCatalogProof } from '../src/sync/cards.js';
import { catalogKeyOf, catalogKeyPair } from '../src/sync/catalog.js';
import { dhtOptions, isLoopbackBootstrap } from '../src/sync/dht.js';
import { isPrivateHost, parseHostPort } from '../src/sync/hostport.js';
import { defaultWorkstationName, ed25519PrivateKey, ensureIdentity, identityFile, loadIdentity } from '../src/sync/identity.js';
import { decodeInvite, encodeInvite } from '../src/sync/invite.js';
import { membershipKey, newTeamSecret, teamTopic } from '../src/sync/keys.js';
import { membershipProof } from '../src/sync/membership.js';
import * as m from '../src/sync/messages.js';
import { createTeam, joinTeam, loadTeam, memberName, recordCard, recordMember, resolveBootstrap, type TeamRecord, teamSecret } from '../src/sync/teams.js';
import { Z32_ALPHABET, z32Decode, z32Encode } from '../src/sync/z32.js';
import { codeOf } from './helpers/errors.js';
import { rng } from './helpers/random.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

afterAll(cleanupTempDirs);

describe('z-base-32', () => {
  it('round-trips every length and rejects foreign characters', () => {
    const r = rng(5);
    for (let n = 0; n < 80; n++) {
      const b = r.bytes(n);
      const t = z32Encode(b);
      expect([...t].every((ch) => Z32_ALPHABET.includes(ch))).toBe(true);
      expect(z32Decode(t).equals(b)).toBe(true);
      expect(z32Decode(t.toUpperCase()).equals(b)).toBe(true);
    }
    expect(() => z32Decode('ybn0')).toThrow(/position 4/);
    expect(() => z32Decode('yl')).toThrow(/not z-base-32/);
  });
});

describe('invites', () => {
  const secret = Buffer.alloc(32, 7);

  it('round-trip with and without bootstrap nodes', () => {
    const plain = decodeInvite(encodeInvite(secret));
    expect(plain.secret.equals(secret)).toBe(true);
    expect(plain.bootstrap).toEqual([]);
    const boot = [
      { host: '127.0.0.1', port: 49737 },
      { host: 'dht.lan.example', port: 1 },
    ];
    const withBoot = decodeInvite(`  ${encodeInvite(secret, boot)}\n`);
    expect(withBoot.bootstrap).toEqual(boot);
    expect(withBoot.version).toBe(1);
  });

  it('refuses every single-character change and every truncation', () => {
    for (const inv of [encodeInvite(secret), encodeInvite(secret, [{ host: '10.1.2.3', port: 4000 }])]) {
      const body = inv.slice(4);
      for (let i = 0; i < body.length; i++) {
        for (const step of [1, 13]) {
          const ch = Z32_ALPHABET[(Z32_ALPHABET.indexOf(body[i]!) + step) % 32]!;
          expect(
            codeOf(() => decodeInvite(`cbi-${body.slice(0, i)}${ch}${body.slice(i + 1)}`)),
            `position ${i}`,
          ).toBe('BAD_INVITE');
        }
      }
      for (let n = 0; n < inv.length; n++)
        expect(
          codeOf(() => decodeInvite(inv.slice(0, n))),
          `length ${n}`,
        ).toBe('BAD_INVITE');
      expect(codeOf(() => decodeInvite(`${inv}y`))).toBe('BAD_INVITE');
      expect(codeOf(() => decodeInvite(`${inv}yyyy`))).toBe('BAD_INVITE');
    }
  });

  it('names a newer version instead of calling it damaged', async () => {
    const { createHash } = await import('node:crypto');
    const body = Buffer.concat([Buffer.from([2, 0]), secret]);
    const sum = createHash('sha256').update('clonebox/v1/invite').update(body).digest().subarray(0, 4);
    const text = `cbi-${z32Encode(Buffer.concat([body, sum]))}`;
    expect(() => decodeInvite(text)).toThrow(/version 2 is not supported/);
  });
});

describe('wire messages', () => {
  const h = (i: number) => Buffer.alloc(32, i);
  // biome-ignore lint/suspicious/noExplicitAny: each sample pairs an encoding with a value of its own type
  const samples: [string, m.Encoding<any>, unknown][] = [
    ['handshake', m.membershipHandshake, { version: 1, proof: h(1) }],
    ['intro', m.intro, { name: 'ws-1', catalog: h(2), catalogSig: Buffer.alloc(96, 2) }],
    ['intro without catalog', m.intro, { name: 'ws-1', catalog: null, catalogSig: null }],
    ['request', m.blockRequest, { id: 7, hashes: [h(3), h(4)] }],
    [
      'frame',
      m.blockFrame,
      {
        id: 7,
        codec: m.CODEC_ZSTD,
        blocks: [
          { hash: h(3), size: 65536 },
          { hash: h(4), size: 512 },
        ],
        data: Buffer.from('zstd frame'),
      },
    ],
    ['raw frame', m.blockFrame, { id: 8, codec: m.CODEC_RAW, blocks: [{ hash: h(3), size: 3 }], data: Buffer.from('abc') }],
    ['missing', m.blockMissing, { id: 9, hashes: [h(5)] }],
    ['cancel', m.blockCancel, { id: 300000 }],
    [
      'cards',
      m.catalogCards,
      [
        { identity: h(6), name: 'ws-a', catalog: h(7), sig: Buffer.alloc(64, 8), csig: Buffer.alloc(96, 12) },
        { identity: h(9), name: 'b', catalog: h(10), sig: Buffer.alloc(64, 11), csig: Buffer.alloc(96, 13) },
      ],
    ],
  ];

  it('round-trip, and refuse every truncation and any trailing byte', () => {
    for (const [what, enc, value] of samples) {
      const buf = m.encodeMessage(enc, value);
      expect(m.decodeMessage(enc, buf), what).toEqual(value);
      // An Intro cut right after its catalog is an older peer's Intro (no catalog signature): valid.
      const older = enc === m.intro ? m.encodeMessage(m.intro, { ...(value as m.Intro), catalogSig: null }).length - 1 : -1;
      for (let n = 0; n < buf.length; n++) {
        if (n === older) continue;
        expect(() => m.decodeMessage(enc, buf.subarray(0, n)), `${what} cut at ${n}`).toThrow(m.WireError);
      }
      expect(() => m.decodeMessage(enc, Buffer.concat([buf, Buffer.from([0])])), what).toThrow(/trailing/);
    }
  });

  it('survive random mutations: decoded or WireError, never anything else', () => {
    const r = rng(11);
    for (const [what, enc, value] of samples) {
      const buf = m.encodeMessage(enc, value);
      for (let k = 0; k < 300; k++) {
        const mut = Buffer.from(buf);
        for (let j = r.int(1, 4); j > 0; j--) mut[r.int(0, mut.length)] = r.u32() & 0xff;
        try {
          m.decodeMessage(enc, mut);
        } catch (err) {
          expect(err, what).toBeInstanceOf(m.WireError);
        }
      }
    }
  });

  it('enforce limits before keeping anything', () => {
    expect(() => m.encodeMessage(m.blockRequest, { id: 1, hashes: [] })).not.toThrow();
    expect(() => m.decodeMessage(m.blockRequest, m.encodeMessage(m.blockRequest, { id: 1, hashes: [] }))).toThrow(/hash count/);
    const many = Array.from({ length: m.MAX_HASHES_PER_REQUEST + 1 }, () => h(1));
    expect(() => m.decodeMessage(m.blockRequest, m.encodeMessage(m.blockRequest, { id: 1, hashes: many }))).toThrow(/hash count/);
    const frame =
      (blocks: { hash: Buffer; size: number }[], data: Buffer, codec: number = m.CODEC_ZSTD) =>
      () =>
        m.decodeMessage(m.blockFrame, m.encodeMessage(m.blockFrame, { id: 1, codec, blocks, data }));
    expect(frame([{ hash: h(1), size: m.MAX_FRAME_RAW + 1 }], Buffer.from('x'))).toThrow(/block size/);
    expect(
      frame(
        [
          { hash: h(1), size: m.MAX_FRAME_RAW },
          { hash: h(2), size: 1 },
        ],
        Buffer.from('x'),
      ),
    ).toThrow(/frame size/);
    expect(frame([{ hash: h(1), size: 10 }], Buffer.from('abc'), m.CODEC_RAW)).toThrow(/raw payload/);
    expect(frame([{ hash: h(1), size: 2 }], Buffer.from('abc'))).toThrow(/payload length/); // bigger than its raw bytes
    expect(frame([], Buffer.from('abc'))).toThrow(/block count/);
    expect(frame([{ hash: h(1), size: 3 }], Buffer.from('abc'), 7)).toThrow(/codec/);
    expect(() => m.decodeMessage(m.intro, m.encodeMessage(m.intro, { name: '../x', catalog: null, catalogSig: null }))).toThrow(/workstation name/);
    expect(() => m.decodeMessage(m.intro, m.encodeMessage(m.intro, { name: 'a', catalog: Buffer.alloc(5), catalogSig: null }))).toThrow(/catalog/);
    expect(() => m.decodeMessage(m.intro, m.encodeMessage(m.intro, { name: 'a', catalog: h(1), catalogSig: Buffer.alloc(63) }))).toThrow(/catalog signature/);
    // An older peer's Intro (name and catalog only) still decodes, unsigned.
    const old = c.encode(
      {
        preencode: (st: c.State) => {
          c.string.preencode(st, 'a');
          c.optionalBuffer.preencode(st, h(1));
        },
        encode: (st: c.State) => {
          c.string.encode(st, 'a');
          c.optionalBuffer.encode(st, h(1));
        },
        decode: () => null,
      },
      null,
    );
    expect(m.decodeMessage(m.intro, old)).toEqual({ name: 'a', catalog: h(1), catalogSig: null });
    expect(() => m.decodeMessage(m.membershipHandshake, m.encodeMessage(m.membershipHandshake, { version: 0, proof: h(1) }))).toThrow(/version/);
    const card = { identity: h(1), name: 'ws', catalog: h(2), sig: Buffer.alloc(64), csig: Buffer.alloc(96) };
    expect(() => m.decodeMessage(m.catalogCards, m.encodeMessage(m.catalogCards, []))).toThrow(/card count/);
    expect(() => m.decodeMessage(m.catalogCards, m.encodeMessage(m.catalogCards, Array(m.MAX_CARDS + 1).fill(card)))).toThrow(/card count/);
    expect(() => m.decodeMessage(m.catalogCards, m.encodeMessage(m.catalogCards, [{ ...card, name: '../x' }]))).toThrow(/card name/);
  });
});

describe('catalog cards', () => {
  it('verify only as signed: every field and the team are bound', async () => {
    const root = await makeTempDir('clonebox-sync-cards-');
    const home = resolveHome(path.join(root, 'h'));
    const me = await ensureIdentity(home, 'ws-a');
    const other = await ensureIdentity(resolveHome(path.join(root, 'o')), 'ws-o');
    await createTeam(home, 't');
    await createTeam(home, 'u');
    const t = await loadTeam(home, 't');
    const u = await loadTeam(home, 'u');
    const card = makeCard(me, t);
    expect(verifyCard(card, t)).toBe(true);
    expect(verifyCard(m.decodeMessage(m.catalogCards, m.encodeMessage(m.catalogCards, [card]))[0]!, t)).toBe(true);
    expect(verifyCard(card, u)).toBe(false); // another team
    expect(verifyCard({ ...card, name: 'ws-b' }, t)).toBe(false);
    expect(verifyCard({ ...card, catalog: Buffer.alloc(32, 6) }, t)).toBe(false);
    expect(verifyCard({ ...card, identity: other.publicKey }, t)).toBe(false); // a relay cannot re-attribute it
    const sig = Buffer.from(card.sig);
    sig[10]! ^= 1;
    expect(verifyCard({ ...card, sig }, t)).toBe(false);
    expect(verifyCard({ ...card, sig: sig.subarray(0, 63) }, t)).toBe(false);
  });

  it("refuse a card that claims a teammate's catalog: the catalog key must countersign (attack 12)", async () => {
    const root = await makeTempDir('clonebox-sync-cards-claim-');
    const alice = await ensureIdentity(resolveHome(path.join(root, 'a')), 'ws-a');
    const mallory = await ensureIdentity(resolveHome(path.join(root, 'm')), 'ws-m');
    const home = resolveHome(path.join(root, 'h'));
    await createTeam(home, 't');
    const t = await loadTeam(home, 't');
    const real = makeCard(alice, t);
    // Mallory signs "my catalog is alice's" with its own identity (a valid sig) and has no proof of
    // alice's catalog for itself: it replays alice's, or brings its own catalog's.
    const own = makeCard(mallory, t);
    const text = Buffer.concat([Buffer.from('clonebox/v1/catalog-card\n'), teamTopic(teamSecret(t)), real.catalog, Buffer.from([4]), Buffer.from('ws-m')]);
    const sig = sign(null, text, ed25519PrivateKey(mallory.secretKey.subarray(0, 32)));
    const forged = { ...own, catalog: real.catalog, sig };
    expect(verifyCard({ ...forged, csig: real.csig }, t)).toBe(false);
    expect(verifyCard({ ...forged, csig: own.csig }, t)).toBe(false);
    expect(verifyCatalogProof(t, mallory.publicKey, real.catalog, real.csig)).toBe(false);
    expect(verifyCatalogProof(t, alice.publicKey, real.catalog, real.csig)).toBe(true);
    expect(real.catalog.equals(catalogKeyOf(catalogKeyPair(alice, t).publicKey))).toBe(true);
    expect(verifyCard(real, t)).toBe(true);
  });

  it('record a stranger through the teammate that handed the card on, and never rebind a known catalog', async () => {
    const root = await makeTempDir('clonebox-sync-cards-rec-');
    const home = resolveHome(path.join(root, 'h'));
    const self = await ensureIdentity(home, 'alice');
    await createTeam(home, 't');
    const t = await loadTeam(home, 't');
    const bob = await ensureIdentity(resolveHome(path.join(root, 'b')), 'bob');
    const pair = (i: number) => ({ publicKey: Buffer.alloc(32, i), secretKey: Buffer.alloc(64, i) });
    const card = makeCard(bob, t, pair(1));
    const rec = await recordCard(home, 't', self, card, 'carol');
    // Known only through carol: the name carries a key prefix until bob is met (attack 12: a card
    // cannot squat a plain name).
    const provisional = `bob-${bob.publicKey.toString('hex').slice(0, 8)}`;
    expect(rec).toMatchObject({ name: provisional, via: 'carol', catalog_key: card.catalog.toString('hex'), card: { name: 'bob' } });
    // Another catalog for bob (a second card, or a forged binding) never replaces the first.
    expect(await recordCard(home, 't', self, makeCard(bob, t, pair(2)), 'carol')).toBeNull();
    // Meeting bob directly clears "via" and confirms its plain name.
    await recordMember(home, 't', self, { publicKey: bob.publicKey, name: 'bob', catalogKey: null });
    expect((await loadTeam(home, 't')).members).toMatchObject([{ name: 'bob', via: null, catalog_key: card.catalog.toString('hex') }]);
    // Our own card is never recorded as a member.
    expect(await recordCard(home, 't', self, makeCard(self, t, pair(3)), 'carol')).toBeNull();
  });
});

describe('keys and the membership proof', () => {
  it('derive distinct, deterministic values per secret', () => {
    const s1 = newTeamSecret();
    const s2 = newTeamSecret();
    expect(teamTopic(s1).equals(teamTopic(Buffer.from(s1)))).toBe(true);
    expect(teamTopic(s1).equals(teamTopic(s2))).toBe(false);
    expect(teamTopic(s1).equals(membershipKey(s1))).toBe(false);
    expect(teamTopic(s1)).toHaveLength(32);
  });

  it('binds the proof to the connection and to the direction', () => {
    const key = membershipKey(newTeamSecret());
    const hh = Buffer.alloc(64, 1);
    const a = Buffer.alloc(32, 2);
    const b = Buffer.alloc(32, 3);
    const p = membershipProof(key, hh, a, b);
    expect(p).toHaveLength(32);
    expect(membershipProof(key, hh, a, b).equals(p)).toBe(true);
    expect(membershipProof(key, hh, b, a).equals(p)).toBe(false); // no reflection
    expect(membershipProof(key, Buffer.alloc(64, 9), a, b).equals(p)).toBe(false); // no replay elsewhere
    expect(membershipProof(membershipKey(newTeamSecret()), hh, a, b).equals(p)).toBe(false);
  });
});

describe('addresses', () => {
  it('knows private and link-local IPv4 addresses', () => {
    for (const h of ['10.0.0.1', '10.255.255.255', '172.16.0.1', '172.31.9.9', '192.168.1.20', '169.254.3.4']) expect(isPrivateHost(h), h).toBe(true);
    for (const h of ['127.0.0.1', '172.15.0.1', '172.32.0.1', '192.169.0.1', '100.64.0.1', '8.8.8.8', 'dht.lan', '10.0.0.256', '10.0.0'])
      expect(isPrivateHost(h), h).toBe(false);
  });

  it('parses HOST:PORT and detects loopback setups', () => {
    expect(parseHostPort('127.0.0.1:49737')).toEqual({ host: '127.0.0.1', port: 49737 });
    expect(parseHostPort('localhost:1')).toEqual({ host: '127.0.0.1', port: 1 });
    expect(parseHostPort('dht.example.org:4000')).toEqual({ host: 'dht.example.org', port: 4000 });
    for (const bad of ['127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', ':5', 'a b:5', 'host:port', '[::1]:5']) {
      expect(
        codeOf(() => parseHostPort(bad)),
        bad,
      ).toBe('USAGE');
    }
    const lo = [{ host: '127.0.0.1', port: 5 }];
    expect(isLoopbackBootstrap(lo)).toBe(true);
    expect(isLoopbackBootstrap(null)).toBe(false);
    expect(isLoopbackBootstrap([...lo, { host: '10.0.0.1', port: 5 }])).toBe(false);
    expect(dhtOptions(lo)).toMatchObject({ host: '127.0.0.1', firewalled: false, bootstrap: lo });
    expect(dhtOptions(null).bootstrap).toBeUndefined(); // the public DHT (never contacted by these tests)
  });
});

describe('identity and teams on disk', () => {
  it('keeps one key pair per home, private, and names it', async () => {
    const home = resolveHome(path.join(await makeTempDir('clonebox-sync-id-'), 'home'));
    const [a, b] = await Promise.all([ensureIdentity(home), ensureIdentity(home)]);
    expect(a.publicKey.equals(b.publicKey)).toBe(true); // racing creators agree
    expect(a.name).toBe(defaultWorkstationName());
    expect((await stat(identityFile(home))).mode & 0o777).toBe(0o600);
    const renamed = await ensureIdentity(home, 'desk-2');
    expect(renamed.publicKey.equals(a.publicKey)).toBe(true);
    expect((await loadIdentity(home))!.name).toBe('desk-2');
    expect((await stat(identityFile(home))).mode & 0o777).toBe(0o600);
    expect(defaultWorkstationName('My Laptop.local')).toBe('My-Laptop');
    expect(defaultWorkstationName('---')).toBe('workstation');

    const rec = JSON.parse(await readFile(identityFile(home), 'utf8'));
    rec.public_key = Buffer.alloc(32, 1).toString('hex');
    await writeFile(identityFile(home), JSON.stringify(rec));
    await expect(loadIdentity(home)).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
  });

  it('records members on first sight and never hands out a taken name', async () => {
    const root = await makeTempDir('clonebox-sync-members-');
    const home = resolveHome(path.join(root, 'h'));
    const self = await ensureIdentity(home, 'alice');
    const { invite } = await createTeam(home, 't');
    await expect(joinTeam(home, 't', invite)).resolves.toMatchObject({ already: true });
    const k = (i: number) => Buffer.alloc(32, i);
    const bob = await recordMember(home, 't', self, { publicKey: k(1), name: 'bob', catalogKey: null });
    expect(bob).toMatchObject({ isNew: true, renamed: false, member: { name: 'bob' } });
    const again = await recordMember(home, 't', self, { publicKey: k(1), name: 'bobby', catalogKey: k(9) });
    expect(again.member).toMatchObject({ name: 'bob', claimed_name: 'bobby', catalog_key: k(9).toString('hex') });
    const fakeBob = await recordMember(home, 't', self, { publicKey: k(2), name: 'bob', catalogKey: null });
    expect(fakeBob.member.name).toBe(`bob-${k(2).toString('hex').slice(0, 8)}`);
    expect(fakeBob.renamed).toBe(true);
    const fakeAlice = await recordMember(home, 't', self, { publicKey: k(3), name: 'alice', catalogKey: null });
    expect(fakeAlice.member.name).toBe(`alice-${k(3).toString('hex').slice(0, 8)}`);
    const rec: TeamRecord = await loadTeam(home, 't');
    expect(resolveBootstrap(rec)).toBeNull(); // public DHT
    expect(resolveBootstrap({ ...rec, bootstrap: ['127.0.0.1:7'] })).toEqual([{ host: '127.0.0.1', port: 7 }]);
    expect(resolveBootstrap({ ...rec, bootstrap: ['127.0.0.1:7'] }, [{ host: '127.0.0.1', port: 8 }])).toEqual([{ host: '127.0.0.1', port: 8 }]);
    expect(rec.members.map((x) => x.name)).toEqual(['bob', fakeBob.member.name, fakeAlice.member.name]);
    expect(memberName(rec, self, k(4).toString('hex'), 'x'.repeat(128)).name).toHaveLength(128);
  });
});
