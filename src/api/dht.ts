/** `cb.dht`: a private DHT (three nodes in this process) for air-gapped networks and tests (src/sync/bootstrap.ts). */
import { usageError } from '../errors.js';
import type { Session } from './session.js';
import type { DhtOptions, PrivateDht } from './types.js';

export class Dht {
  constructor(private readonly s: Session) {}

  /** Starts the nodes; they run until close() (of the result, or of the Clonebox). */
  bootstrap(opts: DhtOptions = {}): Promise<PrivateDht> {
    return this.s.run(async () => {
      const port = opts.port ?? 49737;
      if (!Number.isInteger(port) || port < 0 || port > 65535)
        throw usageError(`invalid --port ${JSON.stringify(String(port))}`, 'use a UDP port number, 1-65535 (0: any free port)');
      const { startPrivateDht } = await import('../sync/bootstrap.js');
      const warn = this.s.warner(opts.onWarning);
      const net = await startPrivateDht({ host: opts.host ?? '127.0.0.1', port, onError: (err) => warn(`DHT node error: ${err.message}`) });
      const { host, port: bound } = net.address;
      let closing: Promise<void> | null = null;
      const close = () => (closing ??= net.close());
      this.s.onClose(close);
      return { bootstrap: `${host}:${bound}`, host, port: bound, nodes: net.nodes.length, close };
    });
  }
}
