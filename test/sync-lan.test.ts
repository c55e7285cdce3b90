/**
 * Team sync on a LAN with a private DHT (`clonebox dht bootstrap --host <LAN address>`): the case of
 * an air-gapped office. Without root, the address rules that need a socket (what the DHT node binds;
 * which addresses count as private is in sync.unit.test.ts). As root, a real LAN: two network
 * namespaces made here, joined by a veth pair (10.x.0.1 and 10.x.0.2, no route anywhere else), the
 * bootstrap and a sharer (`sync --watch`) in one, receivers in the other; each receiver must get the
 * chain. Before dht.ts bound LAN addresses and declared them reachable, four pulls out of five here hung
 * in holepunching ("no membership proof").
 * The namespaces are removed in afterAll and when the process exits.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dhtOptions, lanLocalAddress, localAddressTo } from '../src/sync/dht.js';
import { CLI_PATH, cb } from './helpers/cli.js';
import { run } from './helpers/process.js';
import { cleanupTempDirs, makeTempDir } from './helpers/temp.js';

describe('LAN bootstrap addresses', () => {
  it('binds the LAN address and declares it reachable only for LAN bootstraps', async () => {
    const lan = [{ host: '10.1.2.3', port: 49737 }];
    expect(dhtOptions(lan, undefined, '10.1.2.9')).toMatchObject({ host: '10.1.2.9', firewalled: false, port: [0, 0], bootstrap: lan });
    expect(dhtOptions(lan).firewalled).toBeUndefined(); // no local address known: hyperdht's defaults
    expect(dhtOptions(null, undefined, '10.1.2.9').host).toBeUndefined(); // never for the public DHT
    expect(await localAddressTo('127.0.0.1', 9)).toBe('127.0.0.1');
    expect(await lanLocalAddress(null)).toBeNull();
    expect(await lanLocalAddress([{ host: '127.0.0.1', port: 5 }])).toBeNull(); // loopback has its own rule
    expect(
      await lanLocalAddress([
        { host: '10.1.2.3', port: 5 },
        { host: '8.8.8.8', port: 5 },
      ]),
    ).toBeNull(); // a public node
    const local = await lanLocalAddress(lan); // depends on this machine's routes: an address or null
    expect(local === null || /^\d+\.\d+\.\d+\.\d+$/.test(local)).toBe(true);
  });
});

// ---- a real LAN between two network namespaces (root only) -------------------------------------------

const tag = `${process.pid % 100000}`;
const NS_A = `cbtest-a-${tag}`;
const NS_B = `cbtest-b-${tag}`;
const VETH_A = `cbta${tag}`;
const VETH_B = `cbtb${tag}`;
const SUBNET = `10.${200 + (process.pid % 50)}.${process.pid % 250}`;

function ip(args: string[]): boolean {
  return spawnSync('ip', args, { stdio: 'ignore' }).status === 0;
}

function removeNamespaces(): void {
  ip(['netns', 'del', NS_A]);
  ip(['netns', 'del', NS_B]);
}

/** Makes the two namespaces and the link; false (and nothing left) when this machine does not allow it. */
function makeLan(): boolean {
  if (process.getuid?.() !== 0) return false;
  const steps = [
    ['netns', 'add', NS_A],
    ['netns', 'add', NS_B],
    ['link', 'add', VETH_A, 'type', 'veth', 'peer', 'name', VETH_B],
    ['link', 'set', VETH_A, 'netns', NS_A],
    ['link', 'set', VETH_B, 'netns', NS_B],
    ['-n', NS_A, 'addr', 'add', `${SUBNET}.1/24`, 'dev', VETH_A],
    ['-n', NS_B, 'addr', 'add', `${SUBNET}.2/24`, 'dev', VETH_B],
    ['-n', NS_A, 'link', 'set', VETH_A, 'up'],
    ['-n', NS_B, 'link', 'set', VETH_B, 'up'],
    ['-n', NS_A, 'link', 'set', 'lo', 'up'],
    ['-n', NS_B, 'link', 'set', 'lo', 'up'],
  ];
  for (const s of steps) {
    if (!ip(s)) {
      removeNamespaces();
      return false;
    }
  }
  return true;
}

const lanOk = makeLan();
if (lanOk) process.once('exit', removeNamespaces);

describe.skipIf(!lanOk)('sync on a LAN between two network namespaces (root)', () => {
  const children = new Set<ChildProcess>();
  let root = '';
  let bs = '';
  let invite = '';
  let boot: ChildProcess;
  let sharer: ChildProcess;
  const home = (n: string) => path.join(root, n);
  const env = () => {
    const e: NodeJS.ProcessEnv = { ...process.env };
    delete e.CLONEBOX_HOME;
    return e;
  };
  const inNs = (ns: string, args: string[]) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, CLI_PATH, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env() });
    children.add(child);
    child.once('exit', () => children.delete(child));
    return child;
  };
  const ok = async (h: string, args: string[]) => {
    const r = await cb(h, args);
    if (r.code !== 0) throw new Error(`clonebox ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  beforeAll(async () => {
    root = await makeTempDir('clonebox-sync-lan-');
    boot = inNs(NS_A, ['--home', home('boot'), 'dht', 'bootstrap', '--host', `${SUBNET}.1`, '--port', '0', '--json']);
    const line = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('dht bootstrap printed nothing in 15 s')), 15_000);
      readline.createInterface({ input: boot.stdout! }).once('line', (l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
    bs = (JSON.parse(line) as { bootstrap: string }).bootstrap;

    await ok(home('a'), ['vm', 'create', 'dev', '--size', '32M']);
    const disk = JSON.parse(await ok(home('a'), ['vm', 'show', 'dev', '--json'])).disks[0].path as string;
    const r2 = path.join(root, 'r2');
    await writeFile(r2, randomBytes(2 * 1024 * 1024));
    expect((await run('qemu-io', ['-f', 'qcow2', '-c', `write -s ${r2} 0 2M`, '-c', 'write -P 0x5a 4M 1M', disk])).code).toBe(0);
    await ok(home('a'), ['snapshot', 'create', 'dev', '--name', 'base']);
    invite = JSON.parse(await ok(home('a'), ['team', 'create', 'crew', '--name', 'ws-a', '--json'])).invite;
    await ok(home('a'), ['snapshot', 'share', 'dev', '--team', 'crew']);
    sharer = inNs(NS_A, ['--home', home('a'), 'snapshot', 'sync', '--team', 'crew', '--bootstrap', bs, '--watch', '--timeout', '30']);
    sharer.stdout!.resume();
    sharer.stderr!.resume();
  });

  afterAll(async () => {
    for (const c of [sharer, boot]) if (c && c.exitCode === null) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    for (const c of children) c.kill('SIGKILL');
    removeNamespaces();
    await cleanupTempDirs();
  });

  it('every receiver on the other side of the link pulls the chain', async () => {
    const src = JSON.parse(await ok(home('a'), ['snapshot', 'list', 'dev', '--json']))[0].disks[0].path as string;
    for (const n of ['b1', 'b2', 'b3']) {
      await ok(home(n), ['team', 'join', 'crew', '--invite', invite, '--name', n]);
      const t0 = Date.now();
      const r = await run(
        'ip',
        [
          'netns',
          'exec',
          NS_B,
          process.execPath,
          CLI_PATH,
          '--home',
          home(n),
          'snapshot',
          'sync',
          '--team',
          'crew',
          '--bootstrap',
          bs,
          '--timeout',
          '30',
          '--json',
        ],
        { env: env(), timeoutMs: 50_000 },
      );
      expect(r.code, r.stderr).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.peers, `${n}: ${r.stderr}`).toEqual(['ws-a']);
      expect(doc.chains.map((c: { vm: string }) => c.vm)).toEqual(['dev']);
      const got = JSON.parse(await ok(home(n), ['snapshot', 'list', 'dev', '--json']))[0].disks[0].path as string;
      expect((await run('qemu-img', ['compare', src, got])).code).toBe(0);
      // Joining, pulling and the 2.5 s settle: seconds, not a holepunching timeout.
      expect(Date.now() - t0).toBeLessThan(20_000);
    }
  });
});
