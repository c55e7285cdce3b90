/**
 * Reading and editing libvirt domain XML (and writing snapshot XML) with fast-xml-parser.
 *
 * The document is kept as fast-xml-parser's ordered tree (`preserveOrder`), so every element, attribute,
 * comment and the order of both survive a parse → build round trip untouched; edits change only the nodes
 * they name. Attribute values and text are kept as strings (no number parsing), entities are decoded on
 * parse and re-escaped on build. Indentation is regenerated (two spaces, as libvirt prints), which is why
 * whitespace-only text between elements is dropped on parse; text inside leaf elements is kept verbatim.
 * Output uses double quotes where libvirt prints single quotes: the same XML.
 */
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { CloneboxError } from '../../errors.js';

type Attrs = Record<string, string>;
/** One node of fast-xml-parser's ordered tree: `{tag: children, ':@': attrs}`, `{'#text': s}` or `{'#comment': [...]}`. */
export type RawNode = Record<string, unknown>;

const ATTRS = ':@';
const TEXT = '#text';
const COMMENT = '#comment';
const CDATA = '#cdata';
const SPECIAL = new Set([ATTRS, TEXT, COMMENT, CDATA]);

const common = {
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  textNodeName: TEXT,
  commentPropName: COMMENT,
  cdataPropName: CDATA,
} as const;

const parser = new XMLParser({
  ...common,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  allowBooleanAttributes: false,
  processEntities: true,
  htmlEntities: false,
  ignoreDeclaration: false,
  ignorePiTags: false,
});

const builder = new XMLBuilder({
  ...common,
  format: true,
  indentBy: '  ',
  suppressEmptyNode: true,
  processEntities: true,
});

function tagOf(n: RawNode): string | null {
  for (const k of Object.keys(n)) if (!SPECIAL.has(k)) return k;
  return null;
}

/** Drops indentation: whitespace-only text nodes inside elements that have child elements. */
function dropIndentation(nodes: RawNode[]): RawNode[] {
  const hasElements = nodes.some((n) => tagOf(n) !== null || COMMENT in n);
  const kept = hasElements ? nodes.filter((n) => !(TEXT in n && String(n[TEXT]).trim() === '')) : nodes;
  for (const n of kept) {
    const t = tagOf(n);
    if (t !== null && Array.isArray(n[t])) n[t] = dropIndentation(n[t] as RawNode[]);
  }
  return kept;
}

/** An element of the ordered tree, edited in place. */
export class XElem {
  readonly node: RawNode;
  readonly name: string;

  constructor(node: RawNode) {
    const t = tagOf(node);
    if (t === null) throw new Error('not an element');
    this.node = node;
    this.name = t;
    if (!Array.isArray(node[t])) node[t] = [];
  }

  static create(name: string, attrs: Attrs = {}, children: (XElem | string)[] = []): XElem {
    const node: RawNode = { [name]: [] };
    if (Object.keys(attrs).length > 0) node[ATTRS] = { ...attrs };
    const e = new XElem(node);
    for (const c of children) {
      if (typeof c === 'string') e.raw.push({ [TEXT]: c });
      else e.raw.push(c.node);
    }
    return e;
  }

  /** The child nodes (elements, text, comments) as stored. */
  get raw(): RawNode[] {
    return this.node[this.name] as RawNode[];
  }

  get attrs(): Attrs {
    return (this.node[ATTRS] as Attrs | undefined) ?? {};
  }

  attr(name: string): string | undefined {
    const a = this.node[ATTRS] as Attrs | undefined;
    return a?.[name];
  }

  /** Sets an attribute; an existing one keeps its position, a new one goes last. */
  setAttr(name: string, value: string): this {
    const a = (this.node[ATTRS] as Attrs | undefined) ?? {};
    a[name] = value;
    this.node[ATTRS] = a;
    return this;
  }

  removeAttr(name: string): this {
    const a = this.node[ATTRS] as Attrs | undefined;
    if (a && name in a) {
      delete a[name];
      if (Object.keys(a).length === 0) delete this.node[ATTRS];
    }
    return this;
  }

  elements(name?: string): XElem[] {
    const out: XElem[] = [];
    for (const n of this.raw) {
      const t = tagOf(n);
      if (t !== null && (name === undefined || t === name)) out.push(new XElem(n));
    }
    return out;
  }

  child(name: string): XElem | undefined {
    return this.elements(name)[0];
  }

  /** The element's text (its direct text and CDATA children, concatenated). */
  text(): string {
    let s = '';
    for (const n of this.raw) {
      if (TEXT in n) s += String(n[TEXT]);
      else if (CDATA in n) for (const c of n[CDATA] as RawNode[]) s += String(c[TEXT] ?? '');
    }
    return s;
  }

  setText(value: string): this {
    const keep = this.raw.filter((n) => !(TEXT in n) && !(CDATA in n));
    this.node[this.name] = [{ [TEXT]: value }, ...keep];
    return this;
  }

  /** Inserts `el` after `after` (a child of this element), or last. */
  insert(el: XElem, after?: XElem): XElem {
    const i = after === undefined ? -1 : this.raw.indexOf(after.node);
    if (i < 0) this.raw.push(el.node);
    else this.raw.splice(i + 1, 0, el.node);
    return el;
  }

  remove(el: XElem): void {
    const i = this.raw.indexOf(el.node);
    if (i >= 0) this.raw.splice(i, 1);
  }

  /** Replaces child `old` with `el` at the same position. */
  replace(old: XElem, el: XElem): XElem {
    const i = this.raw.indexOf(old.node);
    if (i < 0) this.raw.push(el.node);
    else this.raw.splice(i, 1, el.node);
    return el;
  }
}

/** A whole XML document (declaration, comments and one root element). */
export class XmlDoc {
  readonly nodes: RawNode[];

  private constructor(nodes: RawNode[]) {
    this.nodes = nodes;
  }

  static parse(xml: string, what = 'XML document'): XmlDoc {
    let nodes: RawNode[];
    try {
      nodes = parser.parse(xml) as RawNode[];
    } catch (err) {
      throw new CloneboxError('LIBVIRT_XML_INVALID', `${what} is not valid XML (${(err as Error).message.split('\n')[0]})`, { cause: err });
    }
    nodes = dropIndentation(nodes);
    const doc = new XmlDoc(nodes);
    if (!doc.rootOrNull()) throw new CloneboxError('LIBVIRT_XML_INVALID', `${what} has no root element`);
    return doc;
  }

  static fromRoot(root: XElem): XmlDoc {
    return new XmlDoc([root.node]);
  }

  private rootOrNull(): XElem | null {
    for (const n of this.nodes) {
      const t = tagOf(n);
      if (t !== null && !t.startsWith('?')) return new XElem(n);
    }
    return null;
  }

  get root(): XElem {
    return this.rootOrNull()!;
  }

  toString(): string {
    return `${(builder.build(this.nodes) as string).replace(/^\n+/, '').replace(/\n*$/, '')}\n`;
  }
}

// --- domains ------------------------------------------------------------------------------------------

/** One layer below a disk's source, as the domain XML describes it. */
interface BackingEntry {
  /** `file`, `block`, `network`... */
  type: string;
  format: string | null;
  /** File path (or device / network name); null when the element has no source. */
  source: string | null;
}

export interface DiskInfo {
  /** Guest device name (vda, sdb...). */
  target: string;
  bus: string | null;
  /** `disk`, `cdrom`, `floppy`, `lun`. */
  device: string;
  /** `file`, `block`, `network`, `volume`, `dir`, `nvme`, `vhostuser`. */
  type: string;
  /** The image format (`<driver type>`), e.g. qcow2 or raw; null when libvirt has to probe. */
  format: string | null;
  /** The file (or device) the domain writes to; null for an empty drive. */
  source: string | null;
  readonly: boolean;
  shareable: boolean;
  /** The device alias in a live XML (virtio-disk0), else null. */
  alias: string | null;
  /**
   * The backing chain below `source` as the XML states it: null when the XML does not describe it
   * (libvirt then probes the image headers at start), [] for an explicit `<backingStore/>` (no backing).
   */
  backingChain: BackingEntry[] | null;
}

function sourceOf(type: string, src: XElem | undefined): string | null {
  if (!src) return null;
  switch (type) {
    case 'file':
      return src.attr('file') ?? null;
    case 'block':
      return src.attr('dev') ?? null;
    case 'dir':
      return src.attr('dir') ?? null;
    case 'volume':
      return src.attr('pool') !== undefined ? `${src.attr('pool')}/${src.attr('volume') ?? ''}` : null;
    case 'network':
      return src.attr('name') ?? null;
    default:
      return src.attr('file') ?? src.attr('dev') ?? src.attr('name') ?? null;
  }
}

function readChain(disk: XElem): BackingEntry[] | null {
  let bs = disk.child('backingStore');
  if (!bs) return null;
  const chain: BackingEntry[] = [];
  while (bs && (bs.elements().length > 0 || bs.attr('type') !== undefined)) {
    const type = bs.attr('type') ?? 'file';
    chain.push({ type, format: bs.child('format')?.attr('type') ?? null, source: sourceOf(type, bs.child('source')) });
    bs = bs.child('backingStore');
  }
  return chain;
}

function buildChain(chain: BackingEntry[]): XElem {
  // Innermost first: an empty <backingStore/> terminates the chain ("no further backing").
  let inner = XElem.create('backingStore');
  for (let i = chain.length - 1; i >= 0; i--) {
    const b = chain[i]!;
    const children: XElem[] = [];
    if (b.format !== null) children.push(XElem.create('format', { type: b.format }));
    const srcAttr = b.type === 'block' ? 'dev' : 'file';
    if (b.source !== null) children.push(XElem.create('source', { [srcAttr]: b.source }));
    children.push(inner);
    inner = XElem.create('backingStore', { type: b.type }, children);
  }
  return inner;
}

export interface SetSourceOptions {
  /** Image format of the new source (default qcow2): `<driver type>` is set to it. */
  format?: string;
  /**
   * The chain below the new source. Omitted or null: `<backingStore>` is removed so libvirt reads the
   * chain from the image headers at start. Gotcha: a stale `<backingStore>` left in place is TRUSTED by
   * libvirt 9 and overrides the header, silently opening the wrong chain.
   */
  backingChain?: BackingEntry[] | null;
}

export class DomainXml {
  readonly doc: XmlDoc;

  constructor(doc: XmlDoc) {
    if (doc.root.name !== 'domain') {
      throw new CloneboxError('LIBVIRT_XML_INVALID', `expected a <domain> document, found <${doc.root.name}>`);
    }
    this.doc = doc;
  }

  get root(): XElem {
    return this.doc.root;
  }

  get name(): string | null {
    const n = this.root.child('name')?.text().trim();
    return n ? n : null;
  }

  get uuid(): string | null {
    const u = this.root.child('uuid')?.text().trim();
    return u ? u : null;
  }

  /** `qemu`, `kvm`... */
  get type(): string | null {
    return this.root.attr('type') ?? null;
  }

  /** The live domain id (only in a running domain's XML). */
  get id(): string | null {
    return this.root.attr('id') ?? null;
  }

  private diskElems(): XElem[] {
    return this.root.child('devices')?.elements('disk') ?? [];
  }

  private diskElem(target: string): XElem {
    const d = this.diskElems().find((e) => e.child('target')?.attr('dev') === target);
    if (!d) {
      throw new CloneboxError('DISK_NOT_FOUND', `the domain has no disk ${target}, domain ${this.name ?? '?'}`);
    }
    return d;
  }

  disks(): DiskInfo[] {
    return this.diskElems().map((d) => {
      const type = d.attr('type') ?? 'file';
      return {
        target: d.child('target')?.attr('dev') ?? '',
        bus: d.child('target')?.attr('bus') ?? null,
        device: d.attr('device') ?? 'disk',
        type,
        format: d.child('driver')?.attr('type') ?? null,
        source: sourceOf(type, d.child('source')),
        readonly: d.child('readonly') !== undefined,
        shareable: d.child('shareable') !== undefined,
        alias: d.child('alias')?.attr('name') ?? null,
        backingChain: readChain(d),
      };
    });
  }

  disk(target: string): DiskInfo {
    const d = this.disks().find((x) => x.target === target);
    if (!d) this.diskElem(target); // throws the coded error
    return d!;
  }

  /**
   * The disks an external snapshot covers: writable, non-shared, file or block `disk` devices with a
   * source. CD-ROMs, floppies, read-only and shareable disks are left out (libvirt cannot overlay them
   * consistently, and they carry no VM state).
   */
  snapshotDisks(): DiskInfo[] {
    return this.disks().filter((d) => d.device === 'disk' && !d.readonly && !d.shareable && d.source !== null && (d.type === 'file' || d.type === 'block'));
  }

  /**
   * Points disk `target` at a new image file. Other attributes of `<source>` and its children are kept
   * (except `index`, which names a node of the old chain in live XML); a block disk becomes a file disk.
   */
  setDiskSource(target: string, file: string, opts: SetSourceOptions = {}): this {
    const d = this.diskElem(target);
    const oldType = d.attr('type') ?? 'file';
    if (oldType !== 'file') d.setAttr('type', 'file');
    let src = d.child('source');
    if (!src) {
      src = XElem.create('source');
      const drv = d.child('driver');
      if (drv) d.insert(src, drv);
      else d.raw.unshift(src.node);
    }
    for (const a of ['dev', 'dir', 'pool', 'volume', 'name', 'protocol', 'index']) src.removeAttr(a);
    if (oldType !== 'file') {
      // network/volume sources carry children (host, auth...) that make no sense for a file
      for (const c of src.elements()) if (c.name !== 'seclabel') src.remove(c);
    }
    src.setAttr('file', file);
    let drv = d.child('driver');
    if (!drv) {
      drv = XElem.create('driver', { name: 'qemu' });
      d.raw.unshift(drv.node);
    }
    drv.setAttr('type', opts.format ?? 'qcow2');
    const old = d.child('backingStore');
    if (opts.backingChain === undefined || opts.backingChain === null) {
      if (old) d.remove(old);
    } else {
      const bs = buildChain(opts.backingChain);
      if (old) d.replace(old, bs);
      else d.insert(bs, src);
    }
    return this;
  }

  /** Removes every disk's `<backingStore>` so libvirt re-reads all chains from the image headers. */
  clearBackingChains(): this {
    for (const d of this.diskElems()) {
      const bs = d.child('backingStore');
      if (bs) d.remove(bs);
    }
    return this;
  }

  /** The org.qemu.guest_agent.0 channel: null when the domain has none; state only in live XML. */
  guestAgentChannel(): { state: string | null; type: string | null } | null {
    for (const ch of this.root.child('devices')?.elements('channel') ?? []) {
      const t = ch.child('target');
      if (t?.attr('name') === 'org.qemu.guest_agent.0') return { state: t.attr('state') ?? null, type: ch.attr('type') ?? null };
    }
    return null;
  }

  toString(): string {
    return this.doc.toString();
  }
}

export function parseDomainXml(xml: string): DomainXml {
  return new DomainXml(XmlDoc.parse(xml, 'domain XML'));
}

// --- snapshots ----------------------------------------------------------------------------------------

export interface SnapshotDiskSpec {
  target: string;
  /** `external` (default when file is given) or `no` (leave this disk out). */
  snapshot?: 'external' | 'no';
  /** The new overlay (external). */
  file?: string;
}

/** A `<domainsnapshot>` document for `virsh snapshot-create`. */
export function buildSnapshotXml(o: { name: string; description?: string; memoryFile?: string; disks: SnapshotDiskSpec[] }): string {
  const children: XElem[] = [XElem.create('name', {}, [o.name])];
  if (o.description !== undefined && o.description !== '') children.push(XElem.create('description', {}, [o.description]));
  if (o.memoryFile !== undefined) children.push(XElem.create('memory', { snapshot: 'external', file: o.memoryFile }));
  const disks = o.disks.map((d) => {
    const mode = d.snapshot ?? (d.file === undefined ? 'no' : 'external');
    if (mode === 'no') return XElem.create('disk', { name: d.target, snapshot: 'no' });
    if (d.file === undefined) throw new CloneboxError('INTERNAL', `external snapshot of disk ${d.target} needs a file`);
    return XElem.create('disk', { name: d.target, snapshot: 'external', type: 'file' }, [
      XElem.create('driver', { type: 'qcow2' }),
      XElem.create('source', { file: d.file }),
    ]);
  });
  children.push(XElem.create('disks', {}, disks));
  return XmlDoc.fromRoot(XElem.create('domainsnapshot', {}, children)).toString();
}
