/**
 * The map checks of bundle decoding (decode.ts): every zero and data record must describe a valid
 * layer map before a sink sees it — layers in order, pieces inside the disk and increasing, extents on
 * cluster boundaries, blocks cut canonically (content/digest.ts). The layer digests are recomputed on
 * the way, for the seal check.
 */
import { BLOCK_SIZE, blockEnd, LayerDigest } from '../content/digest.js';
import { chainOf, type Meta } from './format.js';
import { corrupt } from './reader.js';

/** Layer boundaries, as the sink sees them: every layer begins and ends exactly once, in order. */
export interface LayerEvents {
  beginLayer?(layer: number): Promise<void>;
  endLayer?(layer: number): Promise<void>;
}

export class MapChecker {
  readonly digests: LayerDigest[];
  private readonly layers: Meta['layers'];
  /** The layer being described (-1: none yet). */
  private cur = -1;
  /** End of the last piece of the current layer. */
  private pos = 0;
  /** Kind of the extent ending at pos, and where it started. */
  private kind: 'data' | 'zero' | null = null;
  private extentStart = 0;

  constructor(
    private readonly meta: Meta,
    private readonly file: string,
    private readonly events: LayerEvents,
  ) {
    this.layers = meta.layers;
    this.digests = this.layers.map((l) => new LayerDigest(l.virtual_size, l.cluster_size));
  }

  layerName(li: number): string {
    const l = this.layers[li]!;
    const vm = this.meta.chains.length > 1 ? `VM ${chainOf(this.meta, l.snapshot).vm}, ` : '';
    return `layer ${li} (${vm}snapshot ${this.meta.snapshots[l.snapshot]!.name}, disk ${l.target})`;
  }

  /** A zero record: checked, then counted in its layer's digest. */
  async zero(layer: number, offset: number, length: number): Promise<void> {
    await this.enter(layer);
    this.place(layer, offset, length, 'zero');
    this.pos = offset + length;
    this.digests[layer]!.addZero(offset, length);
  }

  /** A data record placing blocks first..first+count-1, of which `known` exist so far. */
  async dataRecord(layer: number, first: number, count: number, known: number, where: string): Promise<void> {
    this.checkLayer(layer);
    if (first + count > known) throw corrupt(`${where}: a data record places blocks ${first}..${first + count - 1}, only ${known} exist so far`, this.file);
    await this.advance(layer);
  }

  /** One block of the data record being checked, `length` bytes at `offset`, hashing to `sha`. */
  block(layer: number, offset: number, length: number, sha: Uint8Array): void {
    // Canonical cut: a block never crosses a BLOCK_SIZE boundary, and data never continues a block
    // that stopped short of its boundary.
    if (length > blockEnd(offset) - offset) throw corrupt(`${this.layerName(layer)}: block at ${offset} crosses a ${BLOCK_SIZE}-byte boundary`, this.file);
    if (offset === this.pos && this.kind === 'data' && this.pos % BLOCK_SIZE !== 0) {
      throw corrupt(`${this.layerName(layer)}: data at ${offset} continues a short block`, this.file);
    }
    this.place(layer, offset, length, 'data');
    this.pos = offset + length;
    this.digests[layer]!.addBlock(offset, length, sha);
  }

  /** After the last record: the remaining layers begin and end (an empty layer has no records). */
  async finish(): Promise<void> {
    await this.advance(this.layers.length);
  }

  private async enter(layer: number): Promise<void> {
    this.checkLayer(layer);
    await this.advance(layer);
  }

  private checkLayer(layer: number): void {
    if (layer >= this.layers.length) throw corrupt(`a record names layer ${layer}; the bundle has ${this.layers.length}`, this.file);
    if (layer < this.cur) throw corrupt(`a record for layer ${layer} comes after records of layer ${this.cur}`, this.file);
  }

  private closeExtent(li: number): void {
    if (this.kind === null) return;
    const l = this.layers[li]!;
    if (this.pos % l.cluster_size !== 0 && this.pos !== l.virtual_size) {
      throw corrupt(`${this.layerName(li)}: ${this.kind} extent at ${this.extentStart} ends at ${this.pos}, inside a cluster`, this.file);
    }
    this.kind = null;
  }

  private async advance(to: number): Promise<void> {
    while (this.cur < to) {
      if (this.cur >= 0) {
        this.closeExtent(this.cur);
        await this.events.endLayer?.(this.cur);
      }
      this.cur++;
      this.pos = 0;
      this.kind = null;
      if (this.cur < this.layers.length) await this.events.beginLayer?.(this.cur);
    }
  }

  private place(li: number, offset: number, length: number, k: 'data' | 'zero'): void {
    const l = this.layers[li]!;
    if (offset < this.pos) throw corrupt(`${this.layerName(li)}: ${k} at ${offset} overlaps or precedes the previous piece (ending at ${this.pos})`, this.file);
    if (offset + length > l.virtual_size)
      throw corrupt(`${this.layerName(li)}: ${k} at ${offset}+${length} runs past the disk's end (${l.virtual_size})`, this.file);
    if (offset !== this.pos || k !== this.kind) {
      this.closeExtent(li);
      if (offset % l.cluster_size !== 0) throw corrupt(`${this.layerName(li)}: ${k} extent starts at ${offset}, inside a cluster`, this.file);
      this.kind = k;
      this.extentStart = offset;
    }
  }
}
