/**
 * Domain XML round trip and edits (fast-xml-parser), virsh error mapping and table parsing. The first
 * block needs no daemon; the second takes XML from a real libvirtd and feeds edits back to it.
 */
import { describe, expect, it } from 'vitest';
import { XMLParser } from 'fast-xml-parser';
import { buildSnapshotXml, parseDomainXml, XmlDoc } from '../src/drivers/libvirt/domain-xml.js';
import { mapVirshError, parseDomblklist, reasonOf } from '../src/drivers/libvirt/virsh.js';
import { libvirtSuite, qcow2, TestDomain, useTestDaemon } from './libvirt-fixture.js';

/**
 * A canonical form for "semantically identical": element names, attributes as ordered [name, value]
 * pairs, children in order, text of leaf elements verbatim, indentation ignored.
 */
const canonParser = new XMLParser({
  preserveOrder: true, ignoreAttributes: false, attributeNamePrefix: '', parseTagValue: false,
  parseAttributeValue: false, trimValues: false, commentPropName: '#comment',
});
type Canon = { tag: string; attrs: [string, string][]; children: Canon[] } | { text: string } | { comment: string };
function canon(xml: string): Canon[] {
  const walk = (nodes: Record<string, unknown>[]): Canon[] => {
    const hasEl = nodes.some((n) => Object.keys(n).some((k) => k !== '#text' && k !== ':@'));
    const out: Canon[] = [];
    for (const n of nodes) {
      if ('#text' in n) {
        if (!hasEl || String(n['#text']).trim() !== '') out.push({ text: String(n['#text']) });
        continue;
      }
      if ('#comment' in n) {
        out.push({ comment: JSON.stringify(n['#comment']) });
        continue;
      }
      const tag = Object.keys(n).find((k) => k !== ':@')!;
      const attrs = Object.entries((n[':@'] as Record<string, string> | undefined) ?? {});
      out.push({ tag, attrs, children: walk(n[tag] as Record<string, unknown>[]) });
    }
    return out;
  };
  return walk(canonParser.parse(xml) as Record<string, unknown>[]);
}

const SAMPLE = `<domain type='kvm' id='3' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web&amp;1</name>
  <uuid>0b0c6d5e-1d2f-4e0a-9a57-7d6c8a0f1e11</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <description>  keep  my
 spaces </description>
  <memory unit='KiB'>65536</memory>
  <devices>
    <!-- the system disk -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/var/lib/images/web &apos;1&apos; &lt;a&gt;.qcow2' index='3'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/images/base.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='/run/x'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-d'/>
  </qemu:commandline>
</domain>
`;

describe('domain XML (no daemon needed)', () => {
  it('round-trips every element, attribute (in order), comment, namespace and entity', () => {
    const out = parseDomainXml(SAMPLE).toString();
    expect(canon(out)).toEqual(canon(SAMPLE));
    // Attribute order is kept textually, not just semantically.
    expect(out).toContain('<driver name="qemu" type="qcow2" cache="none" discard="unmap"/>');
    expect(out).toContain('<description>  keep  my\n spaces </description>');
    expect(out).toContain('<!-- the system disk -->');
    // A second round trip is a fixed point.
    expect(parseDomainXml(out).toString()).toBe(out);
  });

  it('lists disks with target, source, format, device kind and chain', () => {
    const x = parseDomainXml(SAMPLE);
    expect(x.name).toBe('web&1');
    expect(x.id).toBe('3');
    const [vda, vdb, sda] = x.disks();
    expect(vda).toMatchObject({ target: 'vda', bus: 'virtio', device: 'disk', type: 'file', format: 'qcow2', source: "/var/lib/images/web '1' <a>.qcow2", readonly: false, alias: 'virtio-disk0' });
    expect(vda!.backingChain).toEqual([{ type: 'file', format: 'qcow2', source: '/var/lib/images/base.qcow2' }]);
    expect(vdb).toMatchObject({ target: 'vdb', type: 'block', format: 'raw', source: '/dev/vg0/data', backingChain: null });
    expect(sda).toMatchObject({ target: 'sda', device: 'cdrom', source: null, readonly: true });
    expect(x.snapshotDisks().map((d) => d.target)).toEqual(['vda', 'vdb']);
    expect(x.guestAgentChannel()).toEqual({ state: 'connected', type: 'unix' });
    expect(() => x.disk('vdz')).toThrow(/no disk vdz, domain web&1/);
  });

  it('changes one disk source and chain and nothing else', () => {
    const x = parseDomainXml(SAMPLE);
    x.setDiskSource('vda', '/new/top "x".qcow2');
    const d = x.disk('vda');
    expect(d.source).toBe('/new/top "x".qcow2');
    expect(d.backingChain).toBeNull(); // removed: libvirt reads the new image's header
    const out = x.toString();
    expect(out).toContain('<source file="/new/top &quot;x&quot;.qcow2">'); // index dropped, seclabel kept
    expect(out).toContain('<seclabel model="dac" relabel="no"/>');
    expect(out).toContain('<boot order="1"/>');
    // Everything outside that disk is untouched.
    const strip = (s: string) => canon(s).map((n) => JSON.stringify(n)).join('').replace(/\{"tag":"disk".*?"tag":"target".*?"vda".*?\]\}\]\}/, '');
    expect(strip(out)).toBe(strip(SAMPLE));

    x.setDiskSource('vdb', '/img/vdb.top.qcow2', { backingChain: [{ type: 'file', format: 'qcow2', source: '/img/vdb.mid.qcow2' }, { type: 'block', format: 'raw', source: '/dev/vg0/data' }] });
    const b = x.disk('vdb');
    expect(b).toMatchObject({ type: 'file', format: 'qcow2', source: '/img/vdb.top.qcow2' });
    expect(b.backingChain).toEqual([{ type: 'file', format: 'qcow2', source: '/img/vdb.mid.qcow2' }, { type: 'block', format: 'raw', source: '/dev/vg0/data' }]);
    const vdbXml = x.toString().slice(x.toString().indexOf('/img/vdb.top.qcow2'));
    expect(vdbXml.indexOf('<backingStore type="file">')).toBeLessThan(vdbXml.indexOf('<target dev="vdb"'));
  });

  it('builds snapshot XML for virsh snapshot-create', () => {
    const s = buildSnapshotXml({ name: 'snap-1', description: 'a & b', memoryFile: '/m/mem', disks: [{ target: 'vda', file: '/d/a,b.qcow2' }, { target: 'sda', snapshot: 'no' }] });
    const c = canon(s);
    expect(c).toEqual(canon(`<domainsnapshot><name>snap-1</name><description>a &amp; b</description>
      <memory snapshot="external" file="/m/mem"/><disks>
      <disk name="vda" snapshot="external" type="file"><driver type="qcow2"/><source file="/d/a,b.qcow2"/></disk>
      <disk name="sda" snapshot="no"/></disks></domainsnapshot>`));
  });

  it('rejects documents that are not domain XML with a coded error', () => {
    expect(() => parseDomainXml('<domainsnapshot/>')).toThrow(/expected a <domain> document/);
    expect(() => XmlDoc.parse('just text')).toThrow();
  });

  it('maps virsh failures to stable codes with one-line messages naming the domain', () => {
    const ctx = { uri: 'qemu:///system', domain: 'web1', what: 'cannot start domain' };
    const cases: [string, string][] = [
      ["error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory", 'LIBVIRT_UNAVAILABLE'],
      ["error: failed to get domain 'web1'", 'DOMAIN_NOT_FOUND'],
      ["error: failed to get domain 'web1'\nerror: Domain not found: no domain with matching name 'web1'", 'DOMAIN_NOT_FOUND'],
      ['error: argument unsupported: QEMU guest agent is not configured', 'GUEST_AGENT_UNAVAILABLE'],
      ['error: Guest agent is not responding: QEMU guest agent is not connected', 'GUEST_AGENT_UNAVAILABLE'],
      ['error: Requested operation is not valid: domain is not running', 'DOMAIN_NOT_RUNNING'],
      ['error: Failed to start domain \'web1\'\nerror: Requested operation is not valid: domain is already running', 'DOMAIN_RUNNING'],
      ["error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2' (as uid:0, gid:0): No such file or directory", 'LIBVIRT_ERROR'],
    ];
    for (const [stderr, code] of cases) {
      const e = mapVirshError(stderr, ctx);
      expect(e.code, stderr).toBe(code);
      expect(e.message).toMatch(/web1/);
      expect(e.message).not.toMatch(/\n/);
    }
    expect(reasonOf("error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2': No such file or directory")).toBe("Cannot access storage file '/x.qcow2': No such file or directory");
    expect(mapVirshError("error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2': No such file", ctx).message)
      .toBe("cannot start domain: Cannot access storage file '/x.qcow2': No such file, domain web1");
  });

  it('parses domblklist tables, including sources with spaces and empty drives', () => {
    const out = [
      ' Type   Device   Target   Source',
      '------------------------------------------------',
      ' file   disk     vda      /var/lib/images/my disk.qcow2',
      ' file   cdrom    sda      -',
      ' block  disk     vdb      /dev/vg0/data',
      '',
    ].join('\n');
    expect(parseDomblklist(out)).toEqual([
      { type: 'file', device: 'disk', target: 'vda', source: '/var/lib/images/my disk.qcow2' },
      { type: 'file', device: 'cdrom', target: 'sda', source: null },
      { type: 'block', device: 'disk', target: 'vdb', source: '/dev/vg0/data' },
    ]);
  });
});

const { suite } = await libvirtSuite('domain XML against a real daemon');

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('round-trips real `virsh dumpxml` output (live and inactive), and libvirt reads it back unchanged', async () => {
    const d = await TestDomain.define(virsh, 'xml', { disks: [{ target: 'vda', sizeMiB: 16 }, { target: 'vdb', sizeMiB: 16 }], agentChannel: true });
    const inactive = await virsh.dumpXml(d.name, { inactive: true, secure: true });
    const rt = parseDomainXml(inactive).toString();
    expect(canon(rt)).toEqual(canon(inactive));
    // Attribute order too: the output equals libvirt's text up to the quote style.
    expect(rt.trim()).toBe(inactive.trim().replace(/'/g, '"'));
    // libvirt accepts the round-tripped XML and prints exactly what it printed before.
    await virsh.define(rt);
    expect(await virsh.dumpXml(d.name, { inactive: true, secure: true })).toBe(inactive);

    await virsh.start(d.name);
    const live = await virsh.dumpXml(d.name);
    const lrt = parseDomainXml(live).toString();
    expect(canon(lrt)).toEqual(canon(live));
    expect(lrt.trim()).toBe(live.trim().replace(/'/g, '"'));
    const x = parseDomainXml(live);
    expect(x.disks().map((k) => [k.target, k.source, k.format, k.device, k.alias])).toEqual([
      ['vda', d.disks[0]!.path, 'qcow2', 'disk', 'ua-virtio-disk0'],
      ['vdb', d.disks[1]!.path, 'qcow2', 'disk', 'ua-virtio-disk1'],
    ]);
    expect(x.disk('vda').backingChain).toEqual([]); // live XML: explicit "no backing"
    expect(x.guestAgentChannel()?.state).toBe('disconnected');
    await virsh.destroy(d.name);

    // An edit changes only what it names: define it, and libvirt's own output differs in that source only.
    const ov = `${d.dir}/vdb.next.qcow2`;
    await qcow2(ov, 0, d.disks[1]!.path);
    await virsh.define(parseDomainXml(inactive).setDiskSource('vdb', ov).toString());
    const after = await virsh.dumpXml(d.name, { inactive: true, secure: true });
    expect(after).toBe(inactive.replace(`<source file='${d.disks[1]!.path}'/>`, `<source file='${ov}'/>`));
  });
});
