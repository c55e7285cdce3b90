/**
 * What writing a chain of layers described by someone else (a bundle, a teammate's catalog) would cost
 * on disk, counted before each write, so that a few bytes of input cannot make clonebox write without
 * bound. The classic case is a zero range: one record of a few bytes over a huge disk makes the writer
 * put a zero entry in an L2 table for every cluster (1 TiB of 64 KiB clusters: 128 MiB of tables), and
 * a dedup reference repeats one stored block as often as a map names it.
 *
 * The cost follows the layout of src/qcow2/writer.ts: per layer a header cluster, the L1 table, one
 * cluster per L2 table touched, one per data cluster, and the refcount blocks and table at the end.
 * Pieces must come in guest order within a layer (the bundle's map checks and the sync map checks
 * guarantee that), so "already counted" is one number per kind. Pure arithmetic: no I/O.
 */
import { CloneboxError } from '../errors.js';
import { formatBytes } from '../names.js';

/** The default cap on a disk's virtual size in input-driven writes (`--max-virtual-size` raises it). */
export const DEFAULT_MAX_VIRTUAL_SIZE = 16 * 1024 ** 4;

export interface BudgetLimits {
  /** Bytes free on the target file system (null: not known, not checked). */
  free: number | null;
  /** The caller's own cap (`--max-write`), null for none. */
  maxWrite: number | null;
  /** What is being written, for the message: "import of bundle X", "pull of web from alice". */
  what: string;
}

interface LayerState {
  clusterSize: number;
  l2Span: number;
  clusters: number;
  lastCluster: number;
  lastTable: number;
}

export class WriteBudget {
  /** Bytes counted so far. */
  bytes = 0;
  private layer: LayerState | null = null;

  constructor(private readonly limits: BudgetLimits) {}

  /** A new layer of `virtualSize` bytes in clusters of `clusterSize`: its header and L1 table. */
  beginLayer(virtualSize: number, clusterSize: number): void {
    this.endLayer();
    const l2Span = (clusterSize / 8) * clusterSize;
    const l1Clusters = Math.ceil((Math.ceil(virtualSize / l2Span) * 8) / clusterSize);
    this.layer = { clusterSize, l2Span, clusters: 1 + l1Clusters, lastCluster: -1, lastTable: -1 };
    this.charge((1 + l1Clusters) * clusterSize);
  }

  /** Data at [offset, offset + length): its new clusters and the L2 tables that map them. */
  data(offset: number, length: number): void {
    const l = this.current();
    const first = Math.max(Math.floor(offset / l.clusterSize), l.lastCluster + 1);
    const last = Math.floor((offset + length - 1) / l.clusterSize);
    if (last >= first) {
      l.clusters += last - first + 1;
      l.lastCluster = last;
      this.charge((last - first + 1) * l.clusterSize);
    }
    this.tables(l, offset, length);
  }

  /** Zero clusters at [offset, offset + length): no data, but an L2 entry each. */
  zero(offset: number, length: number): void {
    this.tables(this.current(), offset, length);
  }

  /** Other bytes written on the same file system (an import's spool of a piped bundle). */
  other(bytes: number): void {
    this.charge(bytes);
  }

  /** The layer's refcount blocks (16-bit refcounts) and table, which the writer adds at its end. */
  endLayer(): void {
    const l = this.layer;
    if (!l) return;
    this.layer = null;
    const blocks = Math.ceil(l.clusters / (l.clusterSize / 2)) + 1;
    this.charge((blocks + Math.ceil((blocks * 8) / l.clusterSize)) * l.clusterSize);
  }

  private current(): LayerState {
    if (!this.layer) throw new CloneboxError('INTERNAL', 'write budget: a piece outside a layer');
    return this.layer;
  }

  private tables(l: LayerState, offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.max(Math.floor(offset / l.l2Span), l.lastTable + 1);
    const last = Math.floor((offset + length - 1) / l.l2Span);
    if (last < first) return;
    l.clusters += last - first + 1;
    l.lastTable = last;
    this.charge((last - first + 1) * l.clusterSize);
  }

  private charge(n: number): void {
    this.bytes += n;
    const { free, maxWrite, what } = this.limits;
    if (maxWrite !== null && this.bytes > maxWrite) {
      throw CloneboxError.BUDGET_EXCEEDED(`${what} would write more than the limit of ${formatBytes(maxWrite)} (at least ${formatBytes(this.bytes)})`, {
        hint: 'raise it with --max-write SIZE if this much is expected',
      });
    }
    if (free !== null && this.bytes > free) {
      throw CloneboxError.NO_SPACE(
        `${what} would write more than the ${formatBytes(free)} free on the target file system (at least ${formatBytes(this.bytes)})`,
        {
          hint: 'free some space, or write elsewhere (--dir DIR)',
        },
      );
    }
  }
}

/** Refuses a disk larger than the cap before anything is written. */
export function checkVirtualSize(virtualSize: number, cap: number, what: string): void {
  if (virtualSize > cap) {
    throw CloneboxError.BUDGET_EXCEEDED(`${what} has a disk of ${formatBytes(virtualSize)}, above the cap of ${formatBytes(cap)}`, {
      hint: 'raise the cap with --max-virtual-size SIZE if the disk is expected to be this large',
    });
  }
}
