/**
 * The TCP path for blocks (src/sync/tcp.ts) between two real TeamSwarms on a private DHT on 127.0.0.1:
 * blocks move to a Noise stream over TCP once membership is proven; a socket with any other key, or
 * none, gets nothing and is closed; a port that refuses the connection leaves blocks on the Hyperswarm
 * connection and the fetch completes there; so does a fetch cut off by the TCP stream closing.
 */

import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import NoiseSecretStream from '@hyperswarm/secret-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../src/store/home.js';
import { BlockChannel, type BlockSource } from '../src/sync/blocks.js';
import { startPrivateDht } from '../src/sync/bootstrap.js';
import { ensureIdentity } from '../src/sync/identity.js';
import { BLOCKS_PROTOCOL, CODEC_RAW, TCP_PROTOCOL } from '../src/sync/messages.js';
import { type TeamPeer, TeamSwarm } from '../src/sync/swarm.js';
import { TcpPath, type TcpPathOptions } from '../src/sync/tcp.js';
import { createTeam, joinTeam, loadTeam } from '../src/sync/teams.js';
import { expectSameChain } from './helpers/chains.js';
import { cb, runCli } from './helpers/cli.js';
import { watchSync } from './helpers/dht.js';
import { qemuIo } from './helpers/qemu.js';
import { rng } from './helpers/random.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest();
const r = rng(16);
const blocks = Array.from({ length: 64 }, () => r.bytes(65536));
const store = new Map(blocks.map((b) => [sha(b).toString('hex'), b]));

/** Raw frames of up to 8 blocks. */
const source: BlockSource = {
  async *read(hashes) {
    for (let i = 0; i < hashes.length; i += 8) {
      const hs = hashes.slice(i, i + 8);
      const data = hs.map((h) => store.get(h.toString('hex'))!);
      yield { frame: { codec: CODEC_RAW, blocks: hs.map((h, j) => ({ hash: h, size: data[j]!.length })), data: Buffer.concat(data) } };
    }
  },
};

interface End {
  swarm: TeamSwarm;
  path: TcpPath;
  /** The Hyperswarm connection's block channel, and the TCP one once linked. */
  udx: Promise<BlockChannel>;
  tcp: BlockChannel | null;
  upgraded: Promise<boolean>;
  streams: NoiseSecretStream[];
  keyPair: NoiseSecretStream.KeyPair;
}

type MakePath = (o: TcpPathOptions) => TcpPath;

afterAll(cleanupTempDirs);

/** Two members of one team, each with a TcpPath made by `make`; the first serves `source`. */
async function openPair(make: MakePath): Promise<{ ends: [End, End]; close: () => Promise<void> }> {
  const dht = await startPrivateDht({ host: '127.0.0.1', port: 0 });
  const root = await makeTempDir('sync-tcp');
  const homes = [resolveHome(path.join(root, 'a')), resolveHome(path.join(root, 'b'))];
  const ids = [await ensureIdentity(homes[0]!, 'sharer'), await ensureIdentity(homes[1]!, 'receiver')];
  const { invite } = await createTeam(homes[0]!, 'crew');
  await joinTeam(homes[1]!, 'crew', invite);
  const ends: End[] = [];
  for (const i of [0, 1]) {
    let udx!: (bc: BlockChannel) => void;
    let upgraded!: (ok: Promise<boolean>) => void;
    const end = {
      udx: new Promise<BlockChannel>((res) => {
        udx = res;
      }),
      upgraded: new Promise<boolean>((res) => {
        upgraded = (p) => void p.then(res);
      }),
      tcp: null,
      streams: [],
      keyPair: ids[i]!,
    } as unknown as End;
    const serve = i === 0 ? { source } : {};
    end.path = make({
      keyPair: ids[i]!,
      authTimeoutMs: 500,
      onLink: (_peer, mux, stream) => {
        end.streams.push(stream);
        end.tcp = BlockChannel.attach(mux, { ...serve, transport: 'tcp' });
      },
    });
    end.swarm = await TeamSwarm.open({
      home: homes[i]!,
      team: await loadTeam(homes[i]!, 'crew'),
      identity: ids[i]!,
      bootstrap: [dht.address],
      deadline: Date.now() + 10_000,
      services: {
        [BLOCKS_PROTOCOL]: (peer: TeamPeer) => udx(BlockChannel.attach(peer.mux, serve)),
        [TCP_PROTOCOL]: (peer: TeamPeer) => upgraded(end.path.attach(peer)),
      },
    });
    ends.push(end);
  }
  return {
    ends: ends as [End, End],
    close: async () => {
      for (const e of ends) await e.path.close();
      for (const e of ends) await e.swarm.close();
      await dht.close();
    },
  };
}

async function fetchAll(ch: BlockChannel): Promise<void> {
  const got = new Map<string, Buffer>();
  const res = await ch.fetch([...store.values()].map(sha), {
    // Kept as handed on, as a pull does: raw frames are hashed where they arrived, so this checks
    // that no later read overwrites them.
    onBlock: (h, d) => void got.set(h.toString('hex'), d),
    deadline: Date.now() + 20_000,
  });
  expect(res.received).toBe(blocks.length);
  for (const [h, b] of store) expect(got.get(h)?.equals(b)).toBe(true);
}

/** Resolves true when the stream is closed by the other end within `ms`, with what it received. */
function closedWithin(stream: NoiseSecretStream | net.Socket, ms: number): Promise<{ closed: boolean; received: number }> {
  return new Promise((resolve) => {
    let received = 0;
    stream.on('data', (d: Buffer) => {
      received += d.length;
    });
    stream.on('error', () => undefined);
    const t = setTimeout(() => resolve({ closed: false, received }), ms);
    stream.once('close', () => {
      clearTimeout(t);
      resolve({ closed: true, received });
    });
  });
}

describe('TCP path for blocks', () => {
  it('moves blocks to TCP after the proof; a socket with an unproven key, or no handshake, gets nothing and is closed', async () => {
    // The dialling side waits for `go`, so the listener awaits the proven peer while strangers knock.
    let go!: () => void;
    const gate = new Promise<void>((res) => {
      go = res;
    });
    class Held extends TcpPath {
      protected override async connect(host: string, port: number, key: Buffer) {
        await gate;
        return super.connect(host, port, key);
      }
    }
    const { ends, close } = await openPair((o) => new Held(o));
    try {
      await Promise.all(ends.map((e) => e.swarm.waitForPeers(1, Date.now() + 15_000)));
      const deadline = Date.now() + 10_000;
      while (!ends.some((e) => e.path.ports.length) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      const offerer = ends.find((e) => e.path.ports.length)!;
      const port = offerer.path.ports[0]!;

      // A Noise stream with a fresh key: the handshake completes, then the listener closes it.
      const stranger = new NoiseSecretStream(true, net.connect({ host: '127.0.0.1', port }), { keyPair: NoiseSecretStream.keyPair() });
      const s1 = await closedWithin(stranger, 5000);
      expect(s1).toEqual({ closed: true, received: 0 });
      // A socket that never starts a handshake is closed after authTimeoutMs.
      const mute = net.connect({ host: '127.0.0.1', port });
      const s2 = await closedWithin(mute, 5000);
      expect(s2).toEqual({ closed: true, received: 0 });
      expect(offerer.path.refusedSockets).toBe(2);
      expect(offerer.path.links).toBe(0);

      go();
      expect(await ends[0].upgraded).toBe(true);
      expect(await ends[1].upgraded).toBe(true);
      const fetcher = ends[1].tcp!;
      expect(fetcher.transport).toBe('tcp');
      const before = ends[1].streams[0]!.rawBytesRead;
      await fetchAll(fetcher);
      expect(ends[1].streams[0]!.rawBytesRead - before).toBeGreaterThan(blocks.length * 65536);

      // Once linked, the listener takes no second connection with the proven key either.
      const dialler = ends.find((e) => e !== offerer)!;
      const again = new NoiseSecretStream(true, net.connect({ host: '127.0.0.1', port }), { keyPair: dialler.keyPair });
      expect((await closedWithin(again, 5000)).closed).toBe(true);

      // The TCP stream cut mid-fetch: that fetch ends with blocks unanswered, and the Hyperswarm
      // connection's channel (the one a pull falls back to) still serves them all.
      const cut = fetcher.fetch([...store.values()].map(sha), {
        onBlock: () => ends[1].streams[0]!.destroy(),
        deadline: Date.now() + 20_000,
      });
      const res = await cut;
      expect(res.unanswered.length).toBeGreaterThan(0);
      await fetchAll(await ends[1].udx);
    } finally {
      await close();
    }
  }, 60_000);

  it('falls back to the Hyperswarm connection when the offered port refuses the connection', async () => {
    // A port nothing listens on (bound, then closed): the kernel refuses, as a firewall's reject would.
    const closed = await new Promise<number>((resolve) => {
      const srv = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as net.AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    class Refused extends TcpPath {
      protected override async listen(host: string) {
        await super.listen(host);
        return closed;
      }
    }
    const { ends, close } = await openPair((o) => new Refused(o));
    try {
      await Promise.all(ends.map((e) => e.swarm.waitForPeers(1, Date.now() + 15_000)));
      expect(await ends[0].upgraded).toBe(false);
      expect(await ends[1].upgraded).toBe(false);
      expect(ends[1].tcp).toBeNull();
      await fetchAll(await ends[1].udx);
    } finally {
      await close();
    }
  }, 60_000);
});

describe('snapshot sync over the TCP path (CLI)', () => {
  it('pulls over TCP identical to the source; with the path off on the receiver, over the Hyperswarm connection', async () => {
    const dht = await startPrivateDht({ host: '127.0.0.1', port: 0 });
    const bs = `${dht.address.host}:${dht.address.port}`;
    const root = await makeTempDir('sync-tcp-cli');
    const children = new Set<ChildProcess>();
    const ok = async (h: string, args: string[]) => {
      const res = await cb(h, args, 60_000);
      if (res.code !== 0) throw new Error(`clonebox ${args.join(' ')} exited ${res.code}: ${res.stderr}`);
      return res.stdout;
    };
    const [A, B, C] = ['a', 'b', 'c'].map((n) => path.join(root, n)) as [string, string, string];
    let sharer: ReturnType<typeof watchSync> | null = null;
    try {
      await ok(A, ['vm', 'create', 'dev', '--size', '32M']);
      const disk = (JSON.parse(await ok(A, ['vm', 'show', 'dev', '--json'])) as { disks: { path: string }[] }).disks[0]!.path;
      const data = path.join(root, 'r6');
      await writeFile(data, r.bytes(6 * 1024 * 1024));
      await qemuIo(disk, `write -s ${data} 0 6M`);
      await qemuIo(disk, 'write -P 0x33 8M 2M');
      await ok(A, ['snapshot', 'create', 'dev', '--name', 'base']);
      const { invite } = JSON.parse(await ok(A, ['team', 'create', 'crew', '--name', 'ws-a', '--json'])) as { invite: string };
      await ok(A, ['snapshot', 'share', 'dev', '--team', 'crew']);
      sharer = watchSync(A, { team: 'crew', bootstrap: bs, children });
      const pull = async (h: string, name: string, env: NodeJS.ProcessEnv) => {
        await ok(h, ['team', 'join', 'crew', '--invite', invite, '--name', name]);
        const res = await runCli(['--home', h, 'snapshot', 'sync', '--team', 'crew', '--bootstrap', bs, '--timeout', '60', '--json'], {
          home: null,
          env: { CLONEBOX_SYNC_TRACE: '1', ...env },
          timeoutMs: 90_000,
        });
        expect(res.code, res.stderr).toBe(0);
        await expectSameChain(A, 'dev', h, 'dev', { sameTree: true });
        return res.stderr;
      };
      const overTcp = await pull(B, 'ws-b', {});
      expect(overTcp).toMatch(/tcp: peer ws-a: blocks over TCP/);
      expect(overTcp).toMatch(/fetch \d+ blocks from ws-a over TCP/);
      expect(overTcp).not.toMatch(/over the Hyperswarm connection/);
      const off = await pull(C, 'ws-c', { CLONEBOX_SYNC_TCP: '0' });
      expect(off).toMatch(/fetch \d+ blocks from ws-a over the Hyperswarm connection/);
      expect(off).not.toMatch(/over TCP/);
    } finally {
      await sharer?.stop();
      for (const c of children) c.kill('SIGKILL');
      await dht.close();
    }
  }, 120_000);
});
