/**
 * Per-member resource limits (issue #11, attack 7): what a hostile member can make a teammate hold,
 * queue or decode. The block channel and card cases run between two proven workstations on a private
 * DHT on 127.0.0.1 (the card receiver is a real sync run); the catalog and member cases on real
 * catalog cores and team records.
 */
import { createHash, randomBytes } from 'node:crypto';
import path from 'node:path';
import c from 'compact-encoding';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Codec, decodeFrame } from '../src/content/codec.js';
import { resolveHome } from '../src/store/home.js';
import type { BlockChannel, BlockSource, FrameDecoder } from '../src/sync/blocks.js';
import { type PrivateDht, startPrivateDht } from '../src/sync/bootstrap.js';
import { type CatalogCard, makeCard } from '../src/sync/cards.js';
import { Catalog } from '../src/sync/catalog.js';
import { ensureIdentity, type Identity, publicKeyOfSeed } from '../src/sync/identity.js';
import { MAX_MEMBERS, MAX_NEW_CARDS_PER_PEER, MAX_QUEUED_REQUESTS } from '../src/sync/limits.js';
import { CATALOGS_PROTOCOL, CODEC_RAW, catalogCards, MAX_CARDS } from '../src/sync/messages.js';
import { type TeamPeer, TeamSwarm } from '../src/sync/swarm.js';
import { runSync } from '../src/sync/sync.js';
import { createTeam, joinTeam, loadTeam, recordMember } from '../src/sync/teams.js';
import { type BlockPair, openBlockPair } from './helpers/block-pair.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest();

afterAll(cleanupTempDirs);

describe('catalog and team limits', () => {
  it('refuses a catalog whose Snapshot records share one Map entry (one map, many records: heap exhaustion)', async () => {
    const root = await makeTempDir('clonebox-sync-limits-');
    const home = resolveHome(path.join(root, 'h'));
    const id = await ensureIdentity(home, 'ws-x');
    await createTeam(home, 'crew');
    const cat = await Catalog.openOwn(home, await loadTeam(home, 'crew'), id);
    try {
      const items = Array.from({ length: 64 }, (_, i) => ({ kind: 'block' as const, offset: i * 65536, length: 65536, sha: sha(Buffer.from([i])) }));
      const snapshot = (name: string) => ({
        kind: 'snapshot' as const,
        vm: 'web',
        name,
        content_id: randomBytes(32),
        parent: null,
        parent_name: null,
        type: 'disk' as const,
        created_at: new Date(0).toISOString(),
        description: null,
        tags: [],
        auto_created: false,
        auto_policy: null,
        disks: [
          {
            target: 'vda',
            virtual_size: 64 * 65536,
            cluster_size: 65536,
            digest: randomBytes(32),
            data_bytes: 0,
            zero_bytes: 0,
            blocks: 64,
            map_start: 1,
            map_count: 1,
          },
        ],
      });
      await cat.append([
        { kind: 'share', vm: 'web', upto: null, at: new Date(0).toISOString() },
        { kind: 'map', vm: 'web', target: 'vda', items },
        snapshot('s1'),
      ]);
      expect((await cat.view()).snapshots.get('web')).toHaveLength(1); // one record per map: fine
      await cat.append(Array.from({ length: 100 }, (_, i) => snapshot(`t${i}`)));
      await expect(cat.view()).rejects.toMatchObject({
        code: 'SYNC_CATALOG',
        message: expect.stringMatching(/snapshot web\/t0\) points at map entries 1\.\.1, which are not its own/),
      });
    } finally {
      await cat.close();
    }
  });

  it(`records at most ${MAX_MEMBERS} members per team; the next new key is refused with SYNC_LIMIT`, async () => {
    const root = await makeTempDir('clonebox-sync-limits-');
    const home = resolveHome(path.join(root, 'h'));
    const id = await ensureIdentity(home, 'ws-x');
    await createTeam(home, 'crew');
    for (let i = 0; i < MAX_MEMBERS; i++) await recordMember(home, 'crew', id, { publicKey: randomBytes(32), name: `m${i}`, catalogKey: null });
    await expect(recordMember(home, 'crew', id, { publicKey: randomBytes(32), name: 'one-more', catalogKey: null })).rejects.toMatchObject({
      code: 'SYNC_LIMIT',
      message: expect.stringMatching(/team crew has 256 members already \(the limit\): one-more \([0-9a-f]{8}\) is not recorded/),
    });
    expect((await loadTeam(home, 'crew')).members).toHaveLength(MAX_MEMBERS);
  });
});

describe('catalog cards from one member', () => {
  let net: PrivateDht | null = null;
  let swarm: TeamSwarm | null = null;

  afterAll(async () => {
    await swarm?.close();
    await net?.close();
  });

  it(`records at most ${MAX_NEW_CARDS_PER_PEER} members first learnt from one peer's cards per sync, the rest at later syncs, never beyond ${MAX_MEMBERS}`, async () => {
    net = await startPrivateDht({ host: '127.0.0.1', port: 0 });
    const root = await makeTempDir('clonebox-sync-cards-');
    const h = resolveHome(path.join(root, 'h'));
    const r = resolveHome(path.join(root, 'r'));
    const idH = await ensureIdentity(h, 'ws-h');
    const { invite } = await createTeam(h, 'crew');
    await ensureIdentity(r, 'ws-r');
    await joinTeam(r, 'crew', invite);
    const team = await loadTeam(h, 'crew');
    // H mints members: key pairs of its own, each with a card that verifies (a member can sign any
    // number of them), and hands them all on at every meeting.
    const ghost = (i: number): Identity => {
      const seed = randomBytes(32);
      const publicKey = publicKeyOfSeed(seed);
      return { publicKey, secretKey: Buffer.concat([seed, publicKey]), name: `ghost${i}`, createdAt: new Date(0).toISOString() };
    };
    const n = 40;
    const cards: CatalogCard[] = [makeCard(idH, team), ...Array.from({ length: n }, (_, i) => makeCard(ghost(i), team))];
    swarm = await TeamSwarm.open({
      home: h,
      team,
      identity: idH,
      bootstrap: [net.address],
      deadline: Date.now() + 10_000,
      services: {
        [CATALOGS_PROTOCOL]: (peer: TeamPeer) => {
          peer.mux.createChannel({ protocol: CATALOGS_PROTOCOL, handshake: catalogCards })?.open(cards);
        },
      },
    });
    // R's team is near its member limit: room for H and 36 more.
    const idR = await ensureIdentity(r);
    const room = 36;
    const prefill = MAX_MEMBERS - (await loadTeam(r, 'crew')).members.length - 1 - room;
    for (let i = 0; i < prefill; i++) await recordMember(r, 'crew', idR, { publicKey: randomBytes(32), name: `m${i}`, catalogKey: null });
    const ghosts = async () => (await loadTeam(r, 'crew')).members.filter((m) => m.claimed_name.startsWith('ghost'));
    const counts: number[] = [];
    const lines: string[] = [];
    for (let run = 0; run < 3; run++) {
      await runSync({ home: r, team: 'crew', bootstrap: [net.address], timeoutSeconds: 30, log: (l) => lines.push(l) });
      counts.push((await ghosts()).length);
    }
    expect(counts).toEqual([MAX_NEW_CARDS_PER_PEER, 2 * MAX_NEW_CARDS_PER_PEER, room]);
    expect((await loadTeam(r, 'crew')).members).toHaveLength(MAX_MEMBERS);
    expect(lines.filter((l) => /team crew has 256 members \(the limit\): the card of ghost\d+ \([0-9a-f]{8}\) from ws-h is not recorded/.test(l))).toHaveLength(
      n - room,
    );
    expect(
      lines.filter((l) => l.includes(`peer ws-h handed on cards of more than ${MAX_NEW_CARDS_PER_PEER} members unknown here; the rest wait for the next sync`)),
    ).toHaveLength(2);
    // Known only through H's cards: a suffixed name, and who handed it on.
    for (const m of await ghosts()) {
      expect(m.name).toBe(`${m.claimed_name}-${m.public_key.slice(0, 8)}`);
      expect(m.via).toBe('ws-h');
    }
  });

  it(`decodes no handshake of more than ${MAX_CARDS} cards (the count is checked before any card is read)`, () => {
    const id = (() => {
      const seed = randomBytes(32);
      const publicKey = publicKeyOfSeed(seed);
      return { publicKey, secretKey: Buffer.concat([seed, publicKey]), name: 'one' };
    })();
    const card: CatalogCard = { identity: id.publicKey, name: id.name, catalog: randomBytes(32), sig: randomBytes(64), csig: randomBytes(96) };
    const full = c.encode(
      catalogCards,
      Array.from({ length: MAX_CARDS }, () => card),
    );
    expect(c.decode(catalogCards, full)).toHaveLength(MAX_CARDS);
    // The same list claiming one card more (and carrying it): refused.
    const one = c.encode(catalogCards, [card]).subarray(1);
    const count = c.encode(c.uint, MAX_CARDS + 1);
    const over = Buffer.concat([count, full.subarray(c.encode(c.uint, MAX_CARDS).length), one]);
    expect(() => c.decode(catalogCards, over)).toThrow(/card count/);
    // A count of a billion is refused as quickly, with four bytes of input.
    expect(() => c.decode(catalogCards, c.encode(c.uint, 1e9))).toThrow(/card count/);
  });
});

describe('block channel limits', () => {
  let pair: BlockPair;
  let fetcher: BlockChannel;
  let source: BlockSource = { async *read() {} };
  const abuses: string[] = [];
  let decodes = 0;
  const counting: FrameDecoder = (frame) => {
    decodes++;
    return decodeFrame(
      frame.codec as Codec,
      frame.data,
      frame.blocks.reduce((a, b) => a + b.size, 0),
      Uint32Array.from(frame.blocks.map((b) => b.size)),
    );
  };

  beforeAll(async () => {
    pair = await openBlockPair('clonebox-sync-limits-', {
      serve: { source: { read: (h) => source.read(h) }, onAbuse: (why) => abuses.push(why) },
      fetch: { decode: counting },
    });
    fetcher = pair.fetcher;
  });

  afterAll(async () => {
    await pair?.close();
  });

  it('decodes only frames of blocks asked for and not answered yet: junk, repeats and oversized claims are dropped undecoded', async () => {
    const want = [randomBytes(65536), randomBytes(65536), randomBytes(65536)];
    const junk = randomBytes(4 * 1024 * 1024);
    const frame = (bs: { hash: Buffer; size: number }[], data: Buffer) => ({ frame: { codec: CODEC_RAW, blocks: bs, data } });
    const of = (b: Buffer) => ({ hash: sha(b), size: b.length });
    source = {
      async *read() {
        yield frame([{ hash: sha(junk), size: junk.length }], junk); // never asked for
        yield frame([of(want[0]!)], want[0]!);
        for (let i = 0; i < 20; i++) yield frame([of(want[0]!)], want[0]!); // answered already
        yield frame([of(want[1]!), { hash: sha(junk), size: junk.length }], Buffer.concat([want[1]!, junk])); // one asked, one not
        yield frame([{ hash: sha(want[2]!), size: 4 * 1024 * 1024 }], junk); // larger than the map says
      },
    };
    decodes = 0;
    const got: string[] = [];
    const res = await fetcher.fetch(
      want.map((b) => sha(b)),
      { onBlock: (h) => void got.push(h.toString('hex')), expectedSize: () => 65536, deadline: Date.now() + 10_000 },
    );
    expect(got).toEqual([sha(want[0]!).toString('hex')]);
    expect(res.corrupt.map((h) => h.toString('hex')).sort()).toEqual([sha(want[1]!), sha(want[2]!)].map((h) => h.toString('hex')).sort());
    expect(decodes).toBe(1);
  });

  it(`closes the channel of a peer that queues more than ${MAX_QUEUED_REQUESTS} requests, naming why`, async () => {
    source = {
      async *read() {
        await new Promise((r) => setTimeout(r, 60_000)); // never answers: requests pile up
      },
    };
    const closed = new Promise<void>((r) => {
      const t = setInterval(() => {
        if ((fetcher as unknown as { closed: boolean }).closed) {
          clearInterval(t);
          r();
        }
      }, 20);
    });
    for (let i = 0; i < MAX_QUEUED_REQUESTS + 8; i++) {
      fetcher.channel.messages[0]!.send({ id: 10_000 + i, hashes: [randomBytes(32)] });
      fetcher.channel.messages[3]!.send({ id: 900_000 + i }); // cancels of requests never made: ignored
    }
    await closed;
    expect(abuses).toEqual([`more than ${MAX_QUEUED_REQUESTS} block requests queued at once`]);
  });
});
