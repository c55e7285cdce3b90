/**
 * The client of a remote `clonebox serve` (`clonebox remote ...`): logs in with a Redfish session,
 * drives the snapshot endpoints, follows each task monitor to the operation's final response, and
 * returns the same shapes as the local library (SnapshotView, RestoreResult, DeleteResult). Errors
 * come back as CloneboxErrors with the code the service attached, else REMOTE_ERROR.
 *
 * TLS: the system's CAs, or a CA/certificate file (`ca`, e.g. the service's self-signed cert.pem), or a
 * pinned SHA-256 fingerprint (what `clonebox serve` prints), or `insecure` (no check; not advised).
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { CloneboxError, type DeleteResult, type ErrorCode, type RestoreResult, type SnapshotView } from '../index.js';

export interface RemoteOptions {
  /** https://host:port (or http:// for a loopback service started with --insecure-http). */
  url: string;
  user: string;
  password: string;
  /** PEM of a CA or of the service's own certificate. */
  ca?: string;
  /** The service certificate's SHA-256 fingerprint (colon-separated hex, case-insensitive). */
  fingerprint?: string;
  insecure?: boolean;
  /** Per request (default 30 s). */
  timeoutMs?: number;
  /** Task progress, 0-100. */
  onProgress?: (percent: number, state: string) => void;
  /** Messages of a task that are warnings (quiesce unavailable, pruned by limit...). */
  onWarning?: (message: string) => void;
  /** Between task monitor polls (default 200 ms). */
  pollMs?: number;
}

interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  body: unknown;
}

interface RedfishMessageLike {
  MessageId?: string;
  Message?: string;
  MessageSeverity?: string;
  Resolution?: string;
  Oem?: { HawkFish?: { Code?: string } };
}

/** Largest reply read (a collection of thousands of links is well below it). */
const MAX_REPLY = 16 * 1024 * 1024;

function basename(uri: unknown): string | null {
  return typeof uri === 'string' ? (uri.split('/').pop() ?? null) : null;
}

function toView(vm: string, m: Record<string, unknown>): SnapshotView {
  const links = (m.Links ?? {}) as { Parent?: { '@odata.id'?: string } | null; Children?: { '@odata.id'?: string }[] };
  const state = String(m.SnapshotState ?? 'Ready').toLowerCase() as SnapshotView['state'];
  return {
    name: String(m.Id),
    vm_name: vm,
    type: m.Type === 'full' ? 'full' : 'disk',
    state,
    created_at: String(m.CreatedTime ?? ''),
    description: typeof m.Description === 'string' ? m.Description : null,
    parent: basename(links.Parent?.['@odata.id']),
    children: (links.Children ?? []).map((c) => basename(c['@odata.id']) ?? ''),
    size_bytes: typeof m.SizeBytes === 'number' ? m.SizeBytes : 0,
    tags: Array.isArray(m.Tags) ? m.Tags.map(String) : [],
    auto_created: m.AutoCreated === true,
    auto_policy: null,
    expires_at: typeof m.ExpiresAt === 'string' ? m.ExpiresAt : null,
    current: m.Current === true,
    quiesced: m.Quiesced === true,
    // The Redfish member carries no group yet (docs/groups.md: groups are not in the service).
    group: null,
    // The service does not expose host paths of layers.
    disks: [],
  };
}

export class RemoteClient {
  private token: string | null = null;
  private session: string | null = null;
  private readonly base: URL;

  constructor(private readonly opts: RemoteOptions) {
    let u: URL;
    try {
      u = new URL(opts.url);
    } catch {
      throw CloneboxError.USAGE(`invalid --url ${JSON.stringify(opts.url)}`, { hint: 'use https://HOST:PORT' });
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw CloneboxError.USAGE(`--url must be https:// (or http:// on loopback), not ${u.protocol}`);
    this.base = u;
  }

  private send(method: string, path: string, body?: unknown): Promise<Reply> {
    const url = new URL(path, this.base);
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { Accept: 'application/json', 'OData-Version': '4.0' };
    if (data) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = String(data.length);
    }
    if (this.token) headers['X-Auth-Token'] = this.token;
    const pin = this.opts.fingerprint?.toUpperCase();
    const tlsOpts =
      url.protocol === 'https:'
        ? {
            ...(this.opts.ca ? { ca: this.opts.ca } : {}),
            rejectUnauthorized: !this.opts.insecure && !pin,
            ...(pin
              ? {
                  checkServerIdentity: (_host: string, cert: PeerCertificate) =>
                    cert.fingerprint256?.toUpperCase() === pin
                      ? undefined
                      : new Error(`certificate fingerprint ${cert.fingerprint256} is not the pinned ${pin}`),
                }
              : {}),
          }
        : {};
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { method, headers, timeout: this.opts.timeoutMs ?? 30_000, ...tlsOpts }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (b: Buffer) => {
          size += b.length;
          if (size > MAX_REPLY) req.destroy(new Error(`reply larger than ${MAX_REPLY} bytes`));
          else chunks.push(b);
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = null;
          if (text.trim() !== '') {
            try {
              parsed = JSON.parse(text);
            } catch {
              parsed = text;
            }
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) =>
        reject(
          CloneboxError.REMOTE_UNREACHABLE(`cannot reach ${this.base.origin}: ${err.message}`, {
            hint: /certificate|self.signed|fingerprint/i.test(err.message)
              ? 'pass the service certificate with --ca FILE or its fingerprint with --fingerprint'
              : 'check --url and that `clonebox serve` runs',
          }),
        ),
      );
      req.end(data ?? undefined);
    });
  }

  /** A non-2xx reply as a CloneboxError: the code the service attached, else REMOTE_REFUSED or REMOTE_ERROR. */
  private fail(r: Reply, what: string): CloneboxError {
    const info = ((r.body as { error?: { '@Message.ExtendedInfo'?: RedfishMessageLike[] } } | null)?.error?.['@Message.ExtendedInfo'] ?? [])[0];
    const text = info?.Message ?? `HTTP ${r.status}`;
    if (r.status === 401 || r.status === 403) {
      return CloneboxError.REMOTE_REFUSED(`${what}: ${text}`, {
        hint: r.status === 401 ? 'check the user name and password' : 'the account needs the Operator role',
      });
    }
    const code = info?.Oem?.HawkFish?.Code;
    const hint = info?.Resolution && info.Resolution !== 'None.' ? { hint: info.Resolution } : {};
    if (code && /^[A-Z][A-Z0-9_]*$/.test(code) && typeof (CloneboxError as unknown as Record<string, unknown>)[code] === 'function' && code !== 'INTERNAL')
      return new CloneboxError(code as ErrorCode, `${what}: ${text}`, hint);
    return CloneboxError.REMOTE_ERROR(`${what}: ${text} (HTTP ${r.status})`, hint);
  }

  async login(): Promise<void> {
    const r = await this.send('POST', '/redfish/v1/SessionService/Sessions', { UserName: this.opts.user, Password: this.opts.password });
    if (r.status !== 201) throw this.fail(r, 'login');
    const token = r.headers['x-auth-token'];
    const loc = r.headers.location;
    if (typeof token !== 'string' || typeof loc !== 'string') throw CloneboxError.REMOTE_ERROR('login: the service sent no X-Auth-Token or Location');
    this.token = token;
    this.session = loc;
  }

  async logout(): Promise<void> {
    if (!this.session) return;
    await this.send('DELETE', this.session).catch(() => undefined);
    this.token = null;
    this.session = null;
  }

  private snapshots(vm: string): string {
    return `/redfish/v1/Systems/${encodeURIComponent(vm)}/Oem/HawkFish/Snapshots`;
  }

  /** Newest first, as the local list. */
  async list(vm: string): Promise<SnapshotView[]> {
    const r = await this.send('GET', this.snapshots(vm));
    if (r.status !== 200) throw this.fail(r, `list snapshots of ${vm}`);
    const members = ((r.body as { Members?: { '@odata.id'?: string }[] }).Members ?? [])
      .map((m) => m['@odata.id'])
      .filter((m): m is string => typeof m === 'string');
    const out: SnapshotView[] = [];
    for (const uri of members) {
      const m = await this.send('GET', uri);
      if (m.status === 404) continue; // deleted meanwhile
      if (m.status !== 200) throw this.fail(m, `read ${uri}`);
      out.push(toView(vm, m.body as Record<string, unknown>));
    }
    return out;
  }

  /** Follows a task monitor to the final response (202 while it runs). */
  private async follow(first: Reply, what: string): Promise<Reply> {
    if (first.status !== 202) return first;
    const mon = first.headers.location;
    if (typeof mon !== 'string') throw CloneboxError.REMOTE_ERROR(`${what}: the service sent 202 without a task monitor`);
    for (;;) {
      await new Promise((r) => setTimeout(r, this.opts.pollMs ?? 200));
      const r = await this.send('GET', mon);
      if (r.status !== 202) return r;
      const t = r.body as { PercentComplete?: number; TaskState?: string } | null;
      this.opts.onProgress?.(t?.PercentComplete ?? 0, t?.TaskState ?? 'Running');
    }
  }

  /** Warnings of a finished task (its Messages that are not OK). */
  private async taskWarnings(monitor: string | undefined): Promise<void> {
    if (!monitor || !this.opts.onWarning) return;
    const task = await this.send('GET', monitor.replace('/TaskMonitors/', '/Tasks/'));
    for (const m of ((task.body as { Messages?: RedfishMessageLike[] } | null)?.Messages ?? []) as RedfishMessageLike[]) {
      if (m.MessageSeverity && m.MessageSeverity !== 'OK' && m.Message) this.opts.onWarning(m.Message);
    }
  }

  async create(vm: string, o: { name?: string; description?: string | null; tags?: string[]; memory?: boolean; quiesce?: boolean }): Promise<SnapshotView> {
    const body: Record<string, unknown> = {};
    if (o.name !== undefined) body.Name = o.name;
    if (o.description != null) body.Description = o.description;
    if (o.tags?.length) body.Tags = o.tags;
    if (o.memory) body.Memory = true;
    if (o.quiesce) body.Quiesce = true;
    const first = await this.send('POST', this.snapshots(vm), body);
    if (first.status >= 300) throw this.fail(first, `create snapshot of ${vm}`);
    const r = await this.follow(first, `create snapshot of ${vm}`);
    if (r.status !== 201) throw this.fail(r, `create snapshot of ${vm}`);
    await this.taskWarnings(first.headers.location);
    return toView(vm, r.body as Record<string, unknown>);
  }

  async revert(vm: string, name: string): Promise<RestoreResult> {
    const first = await this.send('POST', `${this.snapshots(vm)}/${encodeURIComponent(name)}/Actions/HawkFishSnapshot.Revert`, {});
    if (first.status >= 300) throw this.fail(first, `revert ${vm} to ${name}`);
    const r = await this.follow(first, `revert ${vm} to ${name}`);
    if (r.status !== 200 && r.status !== 204) throw this.fail(r, `revert ${vm} to ${name}`);
    await this.taskWarnings(first.headers.location);
    return { vm, restored: name, backup: null };
  }

  async delete(vm: string, name: string, o: { recursive?: boolean } = {}): Promise<DeleteResult> {
    // The names a recursive delete removes, as the local command reports them.
    const doomed = [name];
    if (o.recursive) {
      const all = await this.list(vm);
      for (let i = 0; i < doomed.length; i++) for (const ch of all.find((s) => s.name === doomed[i])?.children ?? []) doomed.push(ch);
    }
    const first = await this.send('DELETE', `${this.snapshots(vm)}/${encodeURIComponent(name)}${o.recursive ? '?recursive=true' : ''}`);
    if (first.status >= 300) throw this.fail(first, `delete snapshot ${name} of ${vm}`);
    const r = await this.follow(first, `delete snapshot ${name} of ${vm}`);
    if (r.status !== 200 && r.status !== 204) throw this.fail(r, `delete snapshot ${name} of ${vm}`);
    return { vm, deleted: doomed, merged_into: [] };
  }
}
