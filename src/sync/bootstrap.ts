/**
 * A private DHT for air-gapped LANs and tests (`clonebox dht bootstrap`). One hyperdht node is not
 * enough for Hyperswarm topics: announces are stored on the nodes closest to the topic and a lone
 * bootstrapper is never asked to hold them. Three persistent nodes in one process are: the first
 * listens on HOST:PORT (the address clients give as --bootstrap), the other two on free ports of the
 * same host, bootstrapped from the first.
 */
import { createSocket } from 'node:dgram';
import HyperDHT from 'hyperdht';
import { CloneboxError } from '../errors.js';
import type { HostPort } from './hostport.js';

export interface PrivateDht {
  /** The address clients pass as --bootstrap. */
  address: HostPort;
  nodes: HyperDHT[];
  close(): Promise<void>;
}

function listenError(host: string, port: number, err: NodeJS.ErrnoException): CloneboxError {
  const reason = err.code === 'EADDRINUSE' ? 'address in use' : err.code === 'EADDRNOTAVAIL' ? 'address not on this machine' : err.message;
  return new CloneboxError('IO', `cannot listen on ${host}:${port} (${reason})`, {
    hint: 'pick another UDP port with --port, or an address of this machine with --host',
  });
}

/** Fails with a clear error when host:port cannot be bound for UDP (before any DHT node is made). */
async function checkUdpPortFree(host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', (err) => {
      s.close();
      reject(listenError(host, port, err));
    });
    s.bind(port, host, () => s.close(() => resolve()));
  });
}

/**
 * Starts `size` (default 3) persistent DHT nodes on `host`. Port 0 picks a free port (tests). The host
 * must be an address peers can reach (not 0.0.0.0).
 */
export async function startPrivateDht(opts: { host: string; port: number; size?: number; onError?: (err: Error) => void }): Promise<PrivateDht> {
  const size = opts.size ?? 3;
  const { host } = opts;
  if (host === '0.0.0.0' || !/^\d{1,3}(?:\.\d{1,3}){3}$/.test(host)) {
    throw new CloneboxError('USAGE', `invalid --host ${JSON.stringify(host)}`, {
      hint: 'give the IPv4 address peers will use to reach this node, e.g. 127.0.0.1 or a LAN address',
    });
  }
  if (opts.port) await checkUdpPortFree(host, opts.port);
  const nodes: HyperDHT[] = [];
  const onError = (err: Error) => opts.onError?.(err);
  const close = async () => {
    for (let i = nodes.length - 1; i >= 0; i--) {
      const node = nodes[i]!;
      await node.destroy().catch(() => {
        // dht-rpc 6 skips its cleanup when the node never bound, leaving a network-interface watcher
        // that keeps the process alive: release it by hand.
        (node as unknown as { io?: { networkInterfaces?: { destroy(): void } } }).io?.networkInterfaces?.destroy();
      });
    }
  };
  try {
    const first = opts.port
      ? HyperDHT.bootstrapper(opts.port, host, { host })
      : new HyperDHT({ ephemeral: false, firewalled: false, bootstrap: [], host, port: [0, 0] });
    first.on('error', onError);
    nodes.push(first);
    try {
      await first.fullyBootstrapped();
    } catch (err) {
      throw listenError(host, opts.port, err as NodeJS.ErrnoException);
    }
    const address = { host, port: first.address()!.port };
    while (nodes.length < size) {
      const node = new HyperDHT({ ephemeral: false, firewalled: false, bootstrap: [address], host, port: [0, 0] });
      node.on('error', onError);
      nodes.push(node);
      await node.fullyBootstrapped();
    }
    return { address, nodes, close };
  } catch (err) {
    await close();
    throw err;
  }
}
