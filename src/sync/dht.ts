/**
 * Joining a DHT: the public Hyperswarm DHT by default, or private bootstrap nodes (`--bootstrap`, the
 * team's setting). Two things here that plain hyperdht does not do for us:
 *
 * - Loopback: when every bootstrap node is on 127.0.0.0/8, the node binds 127.0.0.1 and declares itself
 *   reachable (firewalled: false). Found on this machine: across processes, swarms only connect on
 *   loopback that way, as no NAT test can succeed there.
 * - Unreachable networks: hyperdht reports "bootstrapped" even when no bootstrap node answered (about
 *   12 s on the public DHT without internet, 6 s on a dead loopback port), with an empty routing table,
 *   and announces then go nowhere. openDht() waits until the routing table holds a node, retrying the
 *   bootstrap nodes, and fails with DHT_UNREACHABLE at the caller's deadline: never a hang.
 */
import HyperDHT from 'hyperdht';
import { CloneboxError } from '../errors.js';
import { formatHostPort, isLoopbackHost, type HostPort } from './hostport.js';
import type { KeyPair } from './identity.js';

export type { HostPort } from './hostport.js';

/** Bootstrap setting: null means the public DHT. */
export type Bootstrap = HostPort[] | null;

export function describeBootstrap(bootstrap: Bootstrap): string {
  return bootstrap === null ? 'the public DHT' : bootstrap.map(formatHostPort).join(', ');
}

/** True when every bootstrap node is on loopback (and there is at least one). */
export function isLoopbackBootstrap(bootstrap: Bootstrap): boolean {
  return bootstrap !== null && bootstrap.length > 0 && bootstrap.every((b) => isLoopbackHost(b.host));
}

/** hyperdht options for a client node with this bootstrap setting. */
export function dhtOptions(bootstrap: Bootstrap, keyPair?: KeyPair): HyperDHT.Options {
  const opts: HyperDHT.Options = {};
  if (keyPair) opts.keyPair = keyPair;
  if (bootstrap !== null) opts.bootstrap = bootstrap.map((b) => ({ host: b.host, port: b.port }));
  if (isLoopbackBootstrap(bootstrap)) {
    opts.host = '127.0.0.1';
    opts.firewalled = false;
    opts.port = [0, 0]; // any free port: do not take 49737, the default of `clonebox dht bootstrap`
  }
  return opts;
}

export function dhtUnreachable(bootstrap: Bootstrap, seconds: number): CloneboxError {
  return new CloneboxError('DHT_UNREACHABLE', `no DHT reachable, bootstrap ${describeBootstrap(bootstrap)} (no node answered in ${seconds} s)`, {
    hint: bootstrap === null
      ? 'check the network connection, or use private bootstrap nodes with --bootstrap HOST:PORT (see `clonebox dht bootstrap`)'
      : 'check that the bootstrap node runs (`clonebox dht bootstrap`) and that HOST:PORT is right',
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until `dht` knows at least one other node, or throws DHT_UNREACHABLE at `deadline` (epoch ms).
 * Retries the bootstrap nodes every `retryMs` while the routing table is empty.
 */
export async function waitReachable(dht: HyperDHT, bootstrap: Bootstrap, deadline: number, retryMs = 2000): Promise<void> {
  const started = Date.now();
  let bootstrapped = false;
  dht.fullyBootstrapped().then(() => { bootstrapped = true; }, () => undefined);
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
    await sleep(Math.min(50, Math.max(1, deadline - now)));
  }
}

/** A DHT node joined to the network (or DHT_UNREACHABLE at `deadline`, with the node destroyed). */
export async function openDht(opts: { bootstrap: Bootstrap; deadline: number; keyPair?: KeyPair; onError?: (err: Error) => void }): Promise<HyperDHT> {
  const dht = new HyperDHT(dhtOptions(opts.bootstrap, opts.keyPair));
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
