/**
 * A TCP path for blocks between proven teammates (issue #16; docs/sync.md "Wire protocol", "Threat
 * model"). Hyperswarm's UDX stream moves 1500-byte datagrams, a syscall and an ack each: on a LAN or
 * one machine it costs more CPU than the rest of a pull. So once a peer has proven membership on the
 * Hyperswarm connection, the side that did not dial it listens on TCP (on its address facing the
 * peer) and offers the port on the `clonebox/tcp` channel; the other side dials, and both run Noise XX
 * (`@hyperswarm/secret-stream`, the same identity key pairs) over the socket. Each side keeps the
 * stream only when the remote key is the peer already proven on the Hyperswarm connection: the
 * listener accepts a key only while it awaits that peer, once, and closes any other socket. The new
 * stream gets a Protomux of its own for `clonebox/blocks` (onLink); the Hyperswarm connection stays
 * for everything else and carries blocks again if the TCP stream closes. The sockets under the Noise
 * streams read whole messages (framed-socket.ts): secret-stream decrypts each where it landed instead
 * of reassembling block frames from 64 KiB reads.
 *
 * Nothing here can fail a sync: a peer that does not speak the channel (an older clonebox, or
 * CLONEBOX_SYNC_TCP=0) rejects it, a port that cannot be reached (NAT, firewall) is reported back as
 * port 0, and every step is bounded in time; then blocks stay on the Hyperswarm connection (a trace
 * line says why).
 */
import net from 'node:net';
import NoiseSecretStream from '@hyperswarm/secret-stream';
import Protomux from 'protomux';
import { localAddressTo } from './dht.js';
import { framedSocket } from './framed-socket.js';
import { MAX_TCP_HANDSHAKE_MESSAGE, MAX_TCP_MESSAGE, MAX_TCP_UNAUTHENTICATED } from './limits.js';
import { TCP_PROTOCOL, type TcpOffer, tcpOffer } from './messages.js';
import type { TeamPeer } from './swarm.js';
import { trace } from './trace.js';

/** False with CLONEBOX_SYNC_TCP=0: blocks stay on the Hyperswarm connection (for A/B measurements). */
export function tcpPathEnabled(): boolean {
  return process.env.CLONEBOX_SYNC_TCP !== '0';
}

export interface TcpPathOptions {
  keyPair: NoiseSecretStream.KeyPair;
  /**
   * Called once per peer, synchronously, when the TCP stream to it is authenticated: attach the
   * channels that run on it (its Protomux refuses a channel opened before ours exists).
   */
  onLink: (peer: TeamPeer, mux: Protomux, stream: NoiseSecretStream) => void;
  /** Dialling plus the Noise handshake, on the dialling side (default 3 s). */
  connectTimeoutMs?: number;
  /** An accepted socket must finish the Noise handshake within this (default 5 s). */
  authTimeoutMs?: number;
}

const CONNECT_TIMEOUT_MS = 3000;
const AUTH_TIMEOUT_MS = 5000;

interface Awaiting {
  key: Buffer;
  accept: (stream: NoiseSecretStream) => void;
}

export class TcpPath {
  /** Listeners by local address, made on first need and closed with the path. */
  private readonly listeners = new Map<string, Promise<number | null>>();
  private readonly servers: net.Server[] = [];
  /** Peers offered a port and not connected yet, by public key hex. */
  private readonly awaiting = new Map<string, Awaiting>();
  private readonly streams = new Set<NoiseSecretStream>();
  private unauthenticated = 0;
  private closed = false;
  /** Accepted sockets closed unauthenticated or with a key not awaited (for tests and traces). */
  refusedSockets = 0;
  /** Peers whose blocks moved to TCP. */
  links = 0;

  constructor(private readonly opts: TcpPathOptions) {}

  /**
   * Opens the `clonebox/tcp` channel on a proven peer's mux (call it from a TeamSwarm service) and sets
   * up the path. Resolves true once the peer's TCP stream is handed to onLink, false when blocks stay
   * on the Hyperswarm connection; never rejects, and resolves within the timeouts.
   */
  attach(peer: TeamPeer): Promise<boolean> {
    const hex = peer.publicKey.toString('hex');
    // UDX streams name the remote remoteHost; a net.Socket (any other raw stream) remoteAddress.
    const raw = peer.stream.rawStream as { remoteHost?: string | null; remoteAddress?: string } | null;
    const host = raw?.remoteHost ?? raw?.remoteAddress ?? null;
    const offering = !peer.stream.isInitiator;
    let settle!: (ok: boolean) => void;
    const result = new Promise<boolean>((r) => {
      settle = r;
    });
    let done = false;
    // Every step below is bounded; this bounds them all (a peer that neither dials nor answers 0).
    const timer = setTimeout(
      () => finish(null, 'no TCP connection in time'),
      (this.opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS) + (this.opts.authTimeoutMs ?? AUTH_TIMEOUT_MS),
    );
    timer.unref();
    const finish = (stream: NoiseSecretStream | null, why: string) => {
      clearTimeout(timer);
      if (done || this.closed || peer.stream.destroyed) {
        stream?.destroy();
        if (!done) settle(false);
        done = true;
        return;
      }
      done = true;
      if (this.awaiting.get(hex)?.key === peer.publicKey) this.awaiting.delete(hex);
      if (!stream) {
        trace(`tcp: peer ${peer.name}: blocks stay on the Hyperswarm connection (${why})`);
        settle(false);
        return;
      }
      peer.stream.once('close', () => stream.destroy());
      const mux = Protomux.from(stream);
      this.links++;
      trace(`tcp: peer ${peer.name}: blocks over TCP (${why})`);
      this.opts.onLink(peer, mux, stream);
      settle(true);
    };
    const channel = peer.mux.createChannel({
      protocol: TCP_PROTOCOL,
      messages: [{ encoding: tcpOffer, onmessage: (m: TcpOffer) => onOffer(m) }],
      onopen: () => {
        if (offering) void offer();
      },
      onclose: () => finish(null, 'the peer has no TCP path'),
    });
    if (!channel) {
      finish(null, 'a TCP channel is already open on this connection');
      return result;
    }
    const send = (port: number) => {
      if (!channel.closed) channel.messages[0]!.send({ port });
    };
    const offer = async () => {
      const port = host && tcpPathEnabled() ? await this.listen(host) : null;
      if (done) return;
      if (!port) {
        send(0);
        return finish(null, `no TCP listener for ${host ?? 'an unknown address'}`);
      }
      this.awaiting.set(hex, { key: peer.publicKey, accept: (stream) => finish(stream, `accepted on port ${port}`) });
      send(port);
    };
    const onOffer = (m: TcpOffer) => {
      if (offering) {
        // The dialling side could not connect.
        if (m.port === 0) finish(null, 'the peer could not connect to our port');
        return;
      }
      if (m.port === 0 || !host || !tcpPathEnabled()) {
        if (m.port !== 0) send(0);
        return finish(null, m.port === 0 ? 'the peer offers no TCP port' : 'TCP path off here');
      }
      void this.connect(host, m.port, peer.publicKey).then((stream) => {
        if (!stream) send(0);
        finish(stream, stream ? `connected to ${host}:${m.port}` : `cannot reach ${host}:${m.port}`);
      });
    };
    channel.open();
    return result;
  }

  /** Stops listening and closes every TCP stream (with the swarm). */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.streams) s.destroy();
    this.awaiting.clear();
    await Promise.all(this.servers.map((srv) => new Promise<void>((r) => srv.close(() => r()))));
  }

  /**
   * The port of our listener on the local address that faces `host` (made on first need), or null
   * when there is none (an IPv6 or unreachable host, or bind failed).
   */
  protected listen(host: string): Promise<number | null> {
    const made = (async () => {
      const local = net.isIPv4(host) ? await localAddressTo(host, 9) : null;
      if (!local || this.closed) return null;
      let p = this.listeners.get(local);
      if (!p) {
        p = new Promise<number | null>((resolve) => {
          // Paused: the connection moves to a socket that reads whole messages (framed-socket.ts).
          const srv = net.createServer({ pauseOnConnect: true }, (sock) => this.accept(sock));
          srv.once('error', () => resolve(null));
          srv.listen({ host: local, port: 0 }, () => {
            this.servers.push(srv);
            trace(`tcp: listening on ${local}:${(srv.address() as net.AddressInfo).port}`);
            resolve((srv.address() as net.AddressInfo).port);
          });
        });
        this.listeners.set(local, p);
      }
      return p;
    })();
    return made;
  }

  private accept(accepted: net.Socket): void {
    accepted.on('error', () => undefined);
    if (this.closed || this.awaiting.size === 0 || this.unauthenticated >= MAX_TCP_UNAUTHENTICATED) {
      this.refusedSockets++;
      accepted.destroy();
      return;
    }
    this.unauthenticated++;
    let stream: NoiseSecretStream | null = null;
    const sock = framedSocket({ accepted }, () => messageLimit(stream));
    sock.on('error', () => undefined);
    sock.setNoDelay(true);
    stream = this.track(new NoiseSecretStream(false, sock, { keyPair: this.opts.keyPair }));
    let counted = true;
    const release = () => {
      if (counted) this.unauthenticated--;
      counted = false;
    };
    const timer = setTimeout(() => stream.destroy(), this.opts.authTimeoutMs ?? AUTH_TIMEOUT_MS);
    timer.unref();
    stream.once('close', release);
    void stream.opened.then((ok) => {
      clearTimeout(timer);
      release();
      const key = ok ? stream.remotePublicKey : null;
      const w = key ? this.awaiting.get(key.toString('hex')) : undefined;
      if (!w || this.closed) {
        this.refusedSockets++;
        trace(`tcp: closed a connection from ${sock.remoteAddress ?? '?'}: ${key ? 'not a peer we offered a port to' : 'no Noise handshake'}`);
        stream.destroy();
        return;
      }
      // One TCP stream per offer: a second connection with the same key is refused.
      this.awaiting.delete(key!.toString('hex'));
      w.accept(stream);
    });
  }

  /** Every stream from its first byte (handshaking or linked) is closed with the path. */
  private track(stream: NoiseSecretStream): NoiseSecretStream {
    stream.on('error', () => undefined);
    this.streams.add(stream);
    stream.once('close', () => this.streams.delete(stream));
    return stream;
  }

  /** The ports listened on (traces and tests). */
  get ports(): number[] {
    return this.servers.map((srv) => (srv.address() as net.AddressInfo | null)?.port ?? 0).filter((p) => p > 0);
  }

  /** Dials a peer's port: the Noise stream once it is authenticated to `key`, else null (bounded). */
  protected connect(host: string, port: number, key: Buffer): Promise<NoiseSecretStream | null> {
    return new Promise((resolve) => {
      let noise: NoiseSecretStream | null = null;
      const sock = framedSocket({ connect: { host, port } }, () => messageLimit(noise));
      sock.on('error', () => undefined);
      sock.setNoDelay(true);
      const stream = this.track(new NoiseSecretStream(true, sock, { keyPair: this.opts.keyPair }));
      noise = stream;
      const timer = setTimeout(() => stream.destroy(), this.opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS);
      timer.unref();
      void stream.opened.then((ok) => {
        clearTimeout(timer);
        if (ok && stream.remotePublicKey?.equals(key)) return resolve(stream);
        stream.destroy();
        resolve(null);
      });
    });
  }
}

/** Largest message a TCP peer may send: small ones until the Noise handshake is done (no allocation on a stranger's word). */
function messageLimit(stream: NoiseSecretStream | null): number {
  return stream?.handshakeHash ? MAX_TCP_MESSAGE : MAX_TCP_HANDSHAKE_MESSAGE;
}
