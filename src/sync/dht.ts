/**
 * Joining a DHT: the public Hyperswarm DHT by default, or private bootstrap nodes (`--bootstrap`, the
 * team's setting). Two things here that plain hyperdht does not do for us:
 *
 * - Loopback and LANs: when every bootstrap node is on 127.0.0.0/8, the node binds 127.0.0.1 and
 *   declares itself reachable (firewalled: false). When every bootstrap node is on a private or
 *   link-local IPv4 address (a LAN: 10/8, 172.16/12, 192.168/16, 169.254/16; names resolving there
 *   count), the node binds the local address on the route to them and declares itself reachable too.
 *   Found on this machine: across processes, swarms on loopback only connect that way, as no NAT test
 *   can succeed there; and on a LAN (two network namespaces joined by a veth pair, bootstrap on
 *   10.x), with hyperdht's defaults (bound to 0.0.0.0, firewalled, NAT type unknown after sampling
 *   only the three nodes of `clonebox dht bootstrap`) four connections out of five hung in
 *   holepunching, the client's stream never reaching the server, while bound and declared reachable
 *   every one connected at once. On a LAN nobody needs holepunching: addresses are routed as they are.
 * - Unreachable networks: hyperdht reports "bootstrapped" even when no bootstrap node answered (about
 *   12 s on the public DHT without internet, 6 s on a dead loopback port), with an empty routing table,
 *   and announces then go nowhere. openDht() waits until the routing table holds a node, retrying the
 *   bootstrap nodes, and fails with DHT_UNREACHABLE at the caller's deadline: never a hang.
 */
import { createSocket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import HyperDHT from 'hyperdht';
import { CloneboxError } from '../errors.js';
import { formatHostPort, type HostPort, isLoopbackHost, isPrivateHost } from './hostport.js';
import type { KeyPair } from './identity.js';

/** Bootstrap setting: null means the public DHT. */
export type Bootstrap = HostPort[] | null;

function describeBootstrap(bootstrap: Bootstrap): string {
  return bootstrap === null ? 'the public DHT' : bootstrap.map(formatHostPort).join(', ');
}

/** True when every bootstrap node is on loopback (and there is at least one). */
export function isLoopbackBootstrap(bootstrap: Bootstrap): boolean {
  return bootstrap !== null && bootstrap.length > 0 && bootstrap.every((b) => isLoopbackHost(b.host));
}

/**
 * hyperdht options for a client node with this bootstrap setting. `lanHost`: the local address to bind
 * when the bootstrap nodes are on a LAN (see lanLocalAddress); the node then declares itself reachable.
 */
export function dhtOptions(bootstrap: Bootstrap, keyPair?: KeyPair, lanHost?: string | null): HyperDHT.Options {
  const opts: HyperDHT.Options = {};
  if (keyPair) opts.keyPair = keyPair;
  if (bootstrap !== null) opts.bootstrap = bootstrap.map((b) => ({ host: b.host, port: b.port }));
  const host = isLoopbackBootstrap(bootstrap) ? '127.0.0.1' : bootstrap !== null ? (lanHost ?? null) : null;
  if (host !== null) {
    opts.host = host;
    opts.firewalled = false;
    opts.port = [0, 0]; // any free port: do not take 49737, the default of `clonebox dht bootstrap`
  }
  return opts;
}

/** The IPv4 address of a bootstrap host: itself, or a name resolved (null when that fails in 2 s). */
async function ipv4Of(host: string): Promise<string | null> {
  if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(host)) return host;
  const timeout = new Promise<null>((r) => setTimeout(r, 2000, null).unref());
  return Promise.race([
    lookup(host, { family: 4 }).then(
      (a) => a.address,
      () => null,
    ),
    timeout,
  ]);
}

/** The local address the kernel sends from to reach host:port (no packet is sent), or null. */
export async function localAddressTo(host: string, port: number): Promise<string | null> {
  const s = createSocket('udp4');
  try {
    return await new Promise<string | null>((resolve) => {
      s.once('error', () => resolve(null));
      s.connect(port, host, () => {
        try {
          resolve(s.address().address);
        } catch {
          resolve(null);
        }
      });
    });
  } finally {
    s.close();
  }
}

/**
 * When every bootstrap node is on a LAN (private or link-local IPv4, or loopback, at least one not
 * loopback; names are resolved), the local address on the route to the first LAN node: what the node
 * binds. Null otherwise (the public DHT, a public bootstrap node, a name that does not resolve).
 */
export async function lanLocalAddress(bootstrap: Bootstrap): Promise<string | null> {
  if (bootstrap === null || bootstrap.length === 0 || isLoopbackBootstrap(bootstrap)) return null;
  let first: HostPort | null = null;
  for (const b of bootstrap) {
    const ip = await ipv4Of(b.host);
    if (ip === null || !(isLoopbackHost(ip) || isPrivateHost(ip))) return null;
    if (!first && isPrivateHost(ip)) first = { host: ip, port: b.port };
  }
  if (!first) return null;
  const local = await localAddressTo(first.host, first.port);
  return local !== null && local !== '0.0.0.0' ? local : null;
}

function dhtUnreachable(bootstrap: Bootstrap, seconds: number): CloneboxError {
  return new CloneboxError('DHT_UNREACHABLE', `no DHT reachable, bootstrap ${describeBootstrap(bootstrap)} (no node answered in ${seconds} s)`, {
    hint:
      bootstrap === null
        ? 'check the network connection, or use private bootstrap nodes with --bootstrap HOST:PORT (see `clonebox dht bootstrap`)'
        : 'check that the bootstrap node runs (`clonebox dht bootstrap`) and that HOST:PORT is right',
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until `dht` knows at least one other node, or throws DHT_UNREACHABLE at `deadline` (epoch ms).
 * Retries the bootstrap nodes every `retryMs` while the routing table is empty.
 */
async function waitReachable(dht: HyperDHT, bootstrap: Bootstrap, deadline: number, retryMs = 2000): Promise<void> {
  const started = Date.now();
  let bootstrapped = false;
  const boot = dht.fullyBootstrapped().then(
    () => {
      bootstrapped = true;
    },
    () => undefined,
  );
  let lastTry = Date.now();
  for (;;) {
    // Reachable: the routing table has a node, and the first bootstrap round is over (announces made
    // before it would go only to the nodes found so far).
    if (dht.toArray().length > 0 && bootstrapped) return;
    if (dht.destroyed) throw new CloneboxError('INTERNAL', 'DHT node closed while bootstrapping');
    const now = Date.now();
    if (now >= deadline) throw dhtUnreachable(bootstrap, Math.round((now - started) / 100) / 10);
    if (bootstrapped && now - lastTry >= retryMs) {
      lastTry = now;
      dht.refresh(); // asks the bootstrap nodes again
    }
    // Until the first round is over, also woken by its end: a poll alone made every sync wait up to
    // 50 ms more before it could join.
    const nap = sleep(Math.min(50, Math.max(1, deadline - now)));
    await (bootstrapped ? nap : Promise.race([nap, boot]));
  }
}

/** A DHT node joined to the network (or DHT_UNREACHABLE at `deadline`, with the node destroyed). */
export async function openDht(opts: { bootstrap: Bootstrap; deadline: number; keyPair?: KeyPair; onError?: (err: Error) => void }): Promise<HyperDHT> {
  const dht = new HyperDHT(dhtOptions(opts.bootstrap, opts.keyPair, await lanLocalAddress(opts.bootstrap)));
  dht.on('error', (err: Error) => opts.onError?.(err));
  try {
    await dht.bind().catch((err: Error) => {
      throw new CloneboxError('IO', `cannot bind a UDP socket for the DHT (${err.message})`);
    });
    await waitReachable(dht, opts.bootstrap, opts.deadline);
    return dht;
  } catch (err) {
    await dht.destroy({ force: true }).catch(() => undefined);
    throw err;
  }
}
