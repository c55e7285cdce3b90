/**
 * What a sync run serves to teammates over clonebox/blocks: the blocks of our shared chains and of the
 * chains we pulled (ShareSource), rebuilt when a --watch run republishes, and when a block was last
 * asked for (a run that shares something waits until teammates stop asking before it ends).
 */
import type { Home } from '../store/home.js';
import type { BlockSource, SourcePart } from './blocks.js';
import type { Catalog } from './catalog.js';
import type { CatalogSet } from './catalog-set.js';
import type { FramePace } from './pace.js';
import { ShareSource } from './share.js';

export class ServingSource implements BlockSource {
  /** Date.now() of the last request served (0: none yet). */
  lastServed = 0;

  private constructor(
    private source: ShareSource,
    private readonly home: Home,
    private readonly catalogs: CatalogSet,
    private readonly log: (line: string) => void,
  ) {}

  static async build(home: Home, catalogs: CatalogSet, log: (line: string) => void): Promise<ServingSource> {
    const s = new ServingSource(await ShareSource.build(home, catalogs.own), home, catalogs, log);
    s.servePulled(s.source);
    return s;
  }

  /** Blocks of the chains we share (a run sharing nothing ends without waiting for requests). */
  get blocks(): number {
    return this.source.blocks;
  }

  read(hashes: Buffer[], pace?: FramePace): AsyncIterable<SourcePart | Promise<SourcePart>> {
    this.lastServed = Date.now();
    const inner = this.source.read(hashes, pace);
    const self = this;
    return (async function* () {
      for await (const part of inner) {
        self.lastServed = Date.now();
        yield part;
      }
    })();
  }

  /** A chain pulled from `cat` is served on from now. */
  pulledFrom(cat: Catalog): Promise<void> {
    return this.source.pulledFrom(cat);
  }

  /** After a republish: serves the new shares (requests in flight finish on the old index). */
  async rebuild(): Promise<void> {
    const next = await ShareSource.build(this.home, this.catalogs.own);
    this.servePulled(next);
    const old = this.source;
    this.source = next;
    await old.close();
  }

  /** Resolves when no background indexing reads the catalogs any more. */
  settled(): Promise<void> {
    return this.source.settled();
  }

  close(): Promise<void> {
    return this.source.close();
  }

  /** The chains we pulled are served too (indexed on the first request). */
  private servePulled(src: ShareSource): void {
    src.servePulled(
      this.home,
      this.catalogs.teamName,
      () => this.catalogs.catalogs(),
      (err) => this.log(`cannot index pulled chains for serving: ${err.message}`),
    );
  }
}
