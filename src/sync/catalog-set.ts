/**
 * The catalogs a sync run replicates: ours, and every teammate's we know — not only those of teammates
 * online: a teammate who has one replicates it to us (hypercore checks its author's signatures), and
 * we serve the chains we pulled from it, so chains travel while their author is away.
 */
import type { Home } from '../store/home.js';
import { Catalog } from './catalog.js';
import type { TeamRecord } from './teams.js';

export class CatalogSet {
  private readonly peers = new Map<string, Catalog>();
  /** Catalog key hex -> the member who writes it: recorded name and identity key (hex). */
  private readonly authors = new Map<string, { name: string; key: string }>();

  constructor(
    private readonly home: Home,
    readonly teamName: string,
    readonly own: Catalog,
  ) {}

  /** Opens the catalog of every member with a recorded key (a failure is logged and skipped). */
  async openKnown(team: TeamRecord, log: (line: string) => void): Promise<void> {
    await Promise.all(
      team.members.map(async (m) => {
        if (!m.catalog_key || m.catalog_key === this.own.key.toString('hex')) return;
        this.authors.set(m.catalog_key, { name: m.name, key: m.public_key });
        try {
          await this.open(Buffer.from(m.catalog_key, 'hex'));
        } catch (err) {
          log(`cannot open the catalog of ${m.name}: ${(err as Error).message}`);
        }
      }),
    );
  }

  /** A teammate's catalog, opened on first use. */
  async open(key: Buffer): Promise<Catalog> {
    const hex = key.toString('hex');
    let cat = this.peers.get(hex);
    if (!cat) {
      cat = await Catalog.openPeer(this.home, this.teamName, key);
      this.peers.set(hex, cat);
    }
    return cat;
  }

  has(hex: string): boolean {
    return this.peers.has(hex);
  }

  get size(): number {
    return this.peers.size;
  }

  /** Teammates' catalogs (not ours), by key hex. */
  entries(): [string, Catalog][] {
    return [...this.peers];
  }

  catalogs(): Catalog[] {
    return [...this.peers.values()];
  }

  setAuthor(hex: string, name: string, identity: Buffer): void {
    this.authors.set(hex, { name, key: identity.toString('hex') });
  }

  /** The member who writes catalog `hex` (its key's start when unknown). */
  authorOf(hex: string): string {
    return this.authors.get(hex)?.name ?? hex.slice(0, 8);
  }

  /** The identity key (hex) of the member who writes catalog `hex`, when known. */
  authorKeyOf(hex: string): string | null {
    return this.authors.get(hex)?.key ?? null;
  }

  async close(): Promise<void> {
    for (const c of this.peers.values()) await c.close();
  }
}
