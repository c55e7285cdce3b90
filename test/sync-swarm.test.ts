/**
 * Workstations on a private DHT on 127.0.0.1 (made here, never the public DHT): the membership proof
 * between two homes, a topic-holder without the secret dropped having received nothing of ours, a peer
 * with a wrong secret refused, and DHT_UNREACHABLE at the deadline with a dead bootstrap address.
 * Every swarm and DHT node is closed by the test that made it; each test is bounded in time.
 */
import { createSocket } from 'node:dgram';
import path from 'node:path';
import c from 'compact-encoding';
import HyperDHT from 'hyperdht';
import Hyperswarm from 'hyperswarm';
import Protomux from 'protomux';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../src/store/home.js';
import { type PrivateDht, startPrivateDht } from '../src/sync/bootstrap.js';
import { catalogProof } from '../src/sync/cards.js';
import { catalogKeyOf, catalogKeyPair } from '../src/sync/catalog.js';
import { dhtOptions, openDht } from '../src/sync/dht.js';
import type { HostPort } from '../src/sync/hostport.js';
import { ensureIdentity } from '../src/sync/identity.js';
import { membershipKey, newTeamSecret, teamTopic } from '../src/sync/keys.js';
import { membershipProof, proveMembership } from '../src/sync/membership.js';
import { intro, MEMBERSHIP_PROTOCOL, membershipHandshake } from '../src/sync/messages.js';
import { type Rejection, type TeamPeer, TeamSwarm } from '../src/sync/swarm.js';
import { createTeam, joinTeam, loadTeam, teamSecret } from '../src/sync/teams.js';
import { cb } from './helpers/cli.js';
import { startBootstrapCli } from './helpers/dht.js';
import { bounded } from './helpers/process.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

let net: PrivateDht;
let root: string;

beforeAll(async () => {
  net = await startPrivateDht({ host: '127.0.0.1', port: 0 });
  root = await makeTempDir('clonebox-sync-swarm-');
});

afterAll(async () => {
  await net?.close();
  await cleanupTempDirs();
});

/** Two homes in one team: "ws-a" created it, "ws-b" joined with the invite. */
async function twoHomes(tag: string) {
  const a = resolveHome(path.join(root, `${tag}-a`));
  const b = resolveHome(path.join(root, `${tag}-b`));
  const ida = await ensureIdentity(a, 'ws-a');
  const idb = await ensureIdentity(b, 'ws-b');
  const { invite } = await createTeam(a, 'crew');
  await joinTeam(b, 'crew', invite);
  return { a, b, ida, idb };
}

describe('team swarm on a local testnet', () => {
  it('two workstations prove membership, record each other and open a protocol channel', async () => {
    const { a, b, ida, idb } = await twoHomes('pair');
    const got: string[] = [];
    // A service channel opened right after the proof: neither side may lose the other's open.
    const services = (me: string) => ({
      'clonebox-test/echo': (peer: TeamPeer) => {
        const ch = peer.mux.createChannel({
          protocol: 'clonebox-test/echo',
          messages: [
            {
              encoding: c.string,
              onmessage: (text: string) => {
                got.push(`${me}<-${text}`);
              },
            },
          ],
        })!;
        ch.open();
        ch.messages[0]!.send(`hello from ${me}`);
      },
    });
    const logs: string[] = [];
    const deadline = Date.now() + 10_000;
    const sa = await TeamSwarm.open({
      home: a,
      team: await loadTeam(a, 'crew'),
      identity: ida,
      bootstrap: [net.address],
      deadline,
      services: services('a'),
      log: (l) => logs.push(l),
    });
    const sb = await TeamSwarm.open({
      home: b,
      team: await loadTeam(b, 'crew'),
      identity: idb,
      bootstrap: [net.address],
      deadline,
      services: services('b'),
      log: (l) => logs.push(l),
    });
    try {
      const [pa, pb] = await Promise.all([sa.waitForPeers(1, deadline), sb.waitForPeers(1, deadline)]);
      expect(pa.map((p) => p.name)).toEqual(['ws-b']);
      expect(pb.map((p) => p.name)).toEqual(['ws-a']);
      expect(pa[0]!.publicKey.equals(idb.publicKey)).toBe(true); // authenticated by Noise, not claimed
      expect(pa[0]!.version).toBe(1);
      const t0 = Date.now();
      while (got.length < 2 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
      expect(got.sort()).toEqual(['a<-hello from b', 'b<-hello from a']);
      expect(sa.rejections).toEqual([]);
    } finally {
      await Promise.all([sa.close(), sb.close()]);
    }
    const ra = await loadTeam(a, 'crew');
    const rb = await loadTeam(b, 'crew');
    expect(ra.members.map((x) => [x.name, x.public_key])).toEqual([['ws-b', idb.publicKey.toString('hex')]]);
    expect(rb.members.map((x) => [x.name, x.public_key])).toEqual([['ws-a', ida.publicKey.toString('hex')]]);
    expect(logs.some((l) => l.includes('new member on team crew: ws-b'))).toBe(true);
  });

  it('finds a teammate that announced after its own lookup: it looks the topic up again while alone', async () => {
    // Hyperswarm alone would look again only after ~10 minutes: two workstations joining at the same
    // moment could miss each other for that long. Here the teammate only listens (never looks up), so
    // only the re-lookup can bring the two together.
    const { a, b, ida, idb } = await twoHomes('late');
    const team = await loadTeam(a, 'crew');
    const sb = await TeamSwarm.open({ home: b, team: await loadTeam(b, 'crew'), identity: idb, bootstrap: [net.address], deadline: Date.now() + 10_000 });
    const late = new Hyperswarm({ dht: new HyperDHT(dhtOptions([net.address])), keyPair: { publicKey: ida.publicKey, secretKey: ida.secretKey } });
    const proofs: Promise<unknown>[] = [];
    late.on('connection', (conn) => {
      conn.on('error', () => undefined);
      proofs.push(
        proveMembership(conn, { key: membershipKey(teamSecret(team)), intro: { name: 'ws-a', catalog: null, catalogSig: null } }).catch(() => undefined),
      );
    });
    try {
      expect(sb.peers.size).toBe(0);
      await late.join(teamTopic(teamSecret(team)), { server: true, client: false }).flushed();
      const peers = await sb.waitForPeers(1, Date.now() + 12_000);
      expect(peers.map((p) => p.name)).toEqual(['ws-a']);
      expect(sb.relookups).toBeGreaterThanOrEqual(1);
    } finally {
      await late.destroy();
      await sb.close();
      await Promise.all(proofs);
    }
  });

  it('drops a peer that found the topic but lacks the secret; it receives nothing of ours', async () => {
    const { a, ida } = await twoHomes('outsider');
    const team = await loadTeam(a, 'crew');
    const rejected: Rejection[] = [];
    const sa = await TeamSwarm.open({
      home: a,
      team,
      identity: ida,
      bootstrap: [net.address],
      deadline: Date.now() + 10_000,
      proofTimeoutMs: 1500,
      catalogKey: Buffer.alloc(32, 0xcc),
    });
    sa.on('rejected', (r: Rejection) => rejected.push(r));

    // A DHT observer: it knows the topic (DHT nodes see it), not the secret. It speaks raw bytes.
    const eve = new Hyperswarm({ dht: new HyperDHT(dhtOptions([net.address])) });
    const received: Buffer[] = [];
    let closed = 0;
    eve.on('connection', (conn) => {
      conn.on('error', () => undefined);
      conn.on('data', (d: Buffer) => received.push(d));
      conn.on('close', () => closed++);
      conn.write(Buffer.from('GET /catalog please\n'));
    });
    try {
      eve.join(teamTopic(teamSecret(team)), { server: true, client: true });
      await bounded(
        new Promise<void>((resolve) => {
          const check = setInterval(() => {
            if (rejected.length > 0 && closed > 0) {
              clearInterval(check);
              resolve();
            }
          }, 25);
        }),
        12_000,
        'outsider dropped',
      );
      expect(rejected[0]!.reason).toMatch(/^(protocol|timeout)$/);
      const bytes = Buffer.concat(received);
      // At most Protomux's channel open carrying the version and the 32-byte proof: no name, no catalog key.
      expect(bytes.length).toBeLessThan(128);
      expect(bytes.includes(Buffer.from('ws-a'))).toBe(false);
      expect(bytes.includes(Buffer.alloc(32, 0xcc))).toBe(false);
      expect(sa.peers.size).toBe(0);
    } finally {
      await eve.destroy();
      await sa.close();
    }
    expect((await loadTeam(a, 'crew')).members).toEqual([]);
  });

  it('limits connections still proving per address: an outsider with fresh key pairs holds at most 8, a teammate still gets in', async () => {
    const { a, b, ida, idb } = await twoHomes('slots');
    const logs: string[] = [];
    const sa = await TeamSwarm.open({
      home: a,
      team: await loadTeam(a, 'crew'),
      identity: ida,
      bootstrap: [net.address],
      deadline: Date.now() + 10_000,
      proofTimeoutMs: 3000,
      log: (l) => logs.push(l),
    });
    let most = 0;
    const watch = setInterval(() => {
      most = Math.max(most, sa.provingNow);
    }, 5);
    // The outsider dials A directly, a fresh key pair per connection (refusing a key stops nothing),
    // and never sends a proof: each connection would hold a slot until the proof times out.
    const node = new HyperDHT(dhtOptions([net.address]));
    const socks: ReturnType<HyperDHT['connect']>[] = [];
    let sb: TeamSwarm | null = null;
    try {
      for (let i = 0; i < 16; i++) {
        const s = node.connect(ida.publicKey, { keyPair: HyperDHT.keyPair() });
        s.on('error', () => undefined);
        socks.push(s);
      }
      await bounded(
        new Promise<void>((resolve) => {
          const check = setInterval(() => {
            if (sa.refusedUnproven >= 8) {
              clearInterval(check);
              resolve();
            }
          }, 25);
        }),
        12_000,
        'outsider connections refused',
      );
      expect(most).toBeLessThanOrEqual(8);
      expect(
        logs.filter((l) => /^refused connections from 127\.0\.0\.1: 8 from it are still proving membership \(the limit per address\)$/.test(l)),
      ).toHaveLength(1);
      for (const s of socks) s.destroy();
      // The slots come back as those connections end: a teammate from the same address proves.
      sb = await TeamSwarm.open({ home: b, team: await loadTeam(b, 'crew'), identity: idb, bootstrap: [net.address], deadline: Date.now() + 10_000 });
      expect((await sa.waitForPeers(1, Date.now() + 15_000)).map((p) => p.name)).toEqual(['ws-b']);
    } finally {
      clearInterval(watch);
      for (const s of socks) s.destroy();
      await sb?.close();
      await node.destroy();
      await sa.close();
    }
  });

  it("ignores a catalog key an Intro claims without that catalog's signature over the sender (attack 12)", async () => {
    const { a, b, ida, idb } = await twoHomes('claim');
    const team = await loadTeam(a, 'crew');
    const logs: string[] = [];
    const sa = await TeamSwarm.open({ home: a, team, identity: ida, bootstrap: [net.address], deadline: Date.now() + 10_000, log: (l) => logs.push(l) });
    // Mallory holds the invite and claims ws-b's catalog, replaying ws-b's own catalog signature.
    const bCatalog = catalogKeyPair(idb, await loadTeam(b, 'crew'));
    const bSig = catalogProof(bCatalog, team, idb.publicKey);
    const mallory = new Hyperswarm({ dht: new HyperDHT(dhtOptions([net.address])) });
    mallory.on('connection', (conn) => {
      conn.on('error', () => undefined);
      void proveMembership(conn, {
        key: membershipKey(teamSecret(team)),
        intro: { name: 'ws-m', catalog: catalogKeyOf(bCatalog.publicKey), catalogSig: bSig },
      }).catch(() => undefined);
    });
    try {
      mallory.join(teamTopic(teamSecret(team)), { server: true, client: true });
      const [peer] = await sa.waitForPeers(1, Date.now() + 12_000);
      expect(peer?.name).toBe('ws-m');
      expect(peer!.intro.catalog).toBeNull();
      expect(logs.some((l) => /^peer ws-m \([0-9a-f]{8}\) announces catalog [0-9a-f]{8} without that catalog's signature: ignored$/.test(l))).toBe(true);
      expect((await loadTeam(a, 'crew')).members).toMatchObject([{ name: 'ws-m', catalog_key: null }]);
    } finally {
      await mallory.destroy();
      await sa.close();
    }
  });

  it('refuses a peer whose proof is made with another secret, and logs it', async () => {
    const { a, ida } = await twoHomes('wrongkey');
    const team = await loadTeam(a, 'crew');
    const rejected: Rejection[] = [];
    const logs: string[] = [];
    const sa = await TeamSwarm.open({ home: a, team, identity: ida, bootstrap: [net.address], deadline: Date.now() + 10_000, log: (l) => logs.push(l) });
    sa.on('rejected', (r: Rejection) => rejected.push(r));
    // Mallory speaks the protocol and knows the topic, but proves with a key of another secret.
    const wrongKey = membershipKey(newTeamSecret());
    const mallory = new Hyperswarm({ dht: new HyperDHT(dhtOptions([net.address])) });
    const intros: unknown[] = [];
    let closed = false;
    mallory.on('connection', (conn) => {
      conn.on('error', () => undefined);
      conn.on('close', () => {
        closed = true;
      });
      void conn.opened.then(() => {
        const ch = Protomux.from(conn).createChannel({
          protocol: MEMBERSHIP_PROTOCOL,
          handshake: membershipHandshake,
          messages: [{ encoding: intro, onmessage: (msg: unknown) => intros.push(msg) }],
        })!;
        ch.open({ version: 1, proof: membershipProof(wrongKey, conn.handshakeHash!, conn.publicKey!, conn.remotePublicKey!) });
      });
    });
    try {
      mallory.join(teamTopic(teamSecret(team)), { server: true, client: true });
      await bounded(
        new Promise<void>((resolve) => {
          const check = setInterval(() => {
            if (rejected.length > 0 && closed) {
              clearInterval(check);
              resolve();
            }
          }, 25);
        }),
        12_000,
        'mallory dropped',
      );
      expect(rejected[0]!.reason).toBe('bad-proof');
      expect(rejected[0]!.message).toMatch(/does not hold the team secret/);
      expect(logs.some((l) => /dropped peer [0-9a-f]{8} on team crew: the peer does not hold the team secret/.test(l))).toBe(true);
      expect(intros).toEqual([]); // mallory never learnt our name or catalog key
      expect(sa.peers.size).toBe(0);
    } finally {
      await mallory.destroy();
      await sa.close();
    }
    expect((await loadTeam(a, 'crew')).members).toEqual([]);
  });

  it('fails with DHT_UNREACHABLE at the deadline when no bootstrap node answers', async () => {
    const dead = await new Promise<HostPort>((resolve) => {
      const s = createSocket('udp4');
      s.bind(0, '127.0.0.1', () => {
        const port = s.address().port;
        s.close(() => resolve({ host: '127.0.0.1', port }));
      });
    });
    const { a, ida } = await twoHomes('dead');
    const t0 = Date.now();
    const err = await TeamSwarm.open({ home: a, team: await loadTeam(a, 'crew'), identity: ida, bootstrap: [dead], deadline: t0 + 2000 }).then(
      () => null,
      (e: unknown) => e,
    );
    const elapsed = Date.now() - t0;
    expect(err).toMatchObject({ code: 'DHT_UNREACHABLE' });
    expect((err as Error).message).toMatch(new RegExp(`^no DHT reachable, bootstrap 127\\.0\\.0\\.1:${dead.port} \\(no node answered in 2(\\.\\d)? s\\)$`));
    expect(elapsed).toBeGreaterThanOrEqual(1900);
    expect(elapsed).toBeLessThan(3500);
    // The bare DHT helper behaves the same.
    await expect(openDht({ bootstrap: [dead], deadline: Date.now() + 500 })).rejects.toMatchObject({ code: 'DHT_UNREACHABLE' });
  });

  it('`clonebox dht bootstrap` runs a private DHT that two workstations meet on, and stops on SIGTERM', async () => {
    const boot = await startBootstrapCli(path.join(root, 'boot-home'));
    let stopped = false;
    try {
      expect(boot.address.host).toBe('127.0.0.1');
      const { a, b, ida, idb } = await twoHomes('cli');
      const deadline = Date.now() + 10_000;
      const sa = await TeamSwarm.open({ home: a, team: await loadTeam(a, 'crew'), identity: ida, bootstrap: [boot.address], deadline });
      const sb = await TeamSwarm.open({ home: b, team: await loadTeam(b, 'crew'), identity: idb, bootstrap: [boot.address], deadline });
      try {
        const [pa] = await Promise.all([sa.waitForPeers(1, deadline), sb.waitForPeers(1, deadline)]);
        expect(pa.map((p) => p.name)).toEqual(['ws-b']);
      } finally {
        await Promise.all([sa.close(), sb.close()]);
      }
      const t0 = Date.now();
      expect(await boot.stop()).toBe(0);
      stopped = true;
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      if (!stopped) await boot.stop();
    }
    // A port already taken is a clear error, not a crash.
    const taken = await cb(path.join(root, 'boot-home'), ['dht', 'bootstrap', '--port', String(net.address.port), '--json'], 15_000);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/cannot listen on 127\.0\.0\.1:\d+ \(address in use\)/);
  });
});
