/**
 * Domain XML round trip and edits (fast-xml-parser), virsh error mapping and table parsing, on sample
 * documents: no daemon. libvirt-xml.test.ts feeds the same parser XML from a real libvirtd.
 */
import { describe, expect, it } from 'vitest';
import { buildSnapshotXml, parseDomainXml, XmlDoc } from '../src/drivers/libvirt/domain-xml.js';
import { mapVirshError, parseDomblklist, reasonOf } from '../src/drivers/libvirt/virsh.js';
import { canon } from './helpers/xml.js';

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
    expect(vda).toMatchObject({
      target: 'vda',
      bus: 'virtio',
      device: 'disk',
      type: 'file',
      format: 'qcow2',
      source: "/var/lib/images/web '1' <a>.qcow2",
      readonly: false,
      alias: 'virtio-disk0',
    });
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
    const strip = (s: string) =>
      canon(s)
        .map((n) => JSON.stringify(n))
        .join('')
        .replace(/\{"tag":"disk".*?"tag":"target".*?"vda".*?\]\}\]\}/, '');
    expect(strip(out)).toBe(strip(SAMPLE));

    x.setDiskSource('vdb', '/img/vdb.top.qcow2', {
      backingChain: [
        { type: 'file', format: 'qcow2', source: '/img/vdb.mid.qcow2' },
        { type: 'block', format: 'raw', source: '/dev/vg0/data' },
      ],
    });
    const b = x.disk('vdb');
    expect(b).toMatchObject({ type: 'file', format: 'qcow2', source: '/img/vdb.top.qcow2' });
    expect(b.backingChain).toEqual([
      { type: 'file', format: 'qcow2', source: '/img/vdb.mid.qcow2' },
      { type: 'block', format: 'raw', source: '/dev/vg0/data' },
    ]);
    const vdbXml = x.toString().slice(x.toString().indexOf('/img/vdb.top.qcow2'));
    expect(vdbXml.indexOf('<backingStore type="file">')).toBeLessThan(vdbXml.indexOf('<target dev="vdb"'));
  });

  it('builds snapshot XML for virsh snapshot-create', () => {
    const s = buildSnapshotXml({
      name: 'snap-1',
      description: 'a & b',
      memoryFile: '/m/mem',
      disks: [
        { target: 'vda', file: '/d/a,b.qcow2' },
        { target: 'sda', snapshot: 'no' },
      ],
    });
    const c = canon(s);
    expect(c).toEqual(
      canon(`<domainsnapshot><name>snap-1</name><description>a &amp; b</description>
      <memory snapshot="external" file="/m/mem"/><disks>
      <disk name="vda" snapshot="external" type="file"><driver type="qcow2"/><source file="/d/a,b.qcow2"/></disk>
      <disk name="sda" snapshot="no"/></disks></domainsnapshot>`),
    );
  });

  it('rejects documents that are not domain XML with a coded error', () => {
    expect(() => parseDomainXml('<domainsnapshot/>')).toThrow(/expected a <domain> document/);
    expect(() => XmlDoc.parse('just text')).toThrow();
  });

  it('maps virsh failures to stable codes with one-line messages naming the domain', () => {
    const ctx = { uri: 'qemu:///system', domain: 'web1', what: 'cannot start domain' };
    const cases: [string, string][] = [
      [
        "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
        'LIBVIRT_UNAVAILABLE',
      ],
      ["error: failed to get domain 'web1'", 'DOMAIN_NOT_FOUND'],
      ["error: failed to get domain 'web1'\nerror: Domain not found: no domain with matching name 'web1'", 'DOMAIN_NOT_FOUND'],
      ['error: argument unsupported: QEMU guest agent is not configured', 'GUEST_AGENT_UNAVAILABLE'],
      ['error: Guest agent is not responding: QEMU guest agent is not connected', 'GUEST_AGENT_UNAVAILABLE'],
      ['error: Requested operation is not valid: domain is not running', 'DOMAIN_NOT_RUNNING'],
      ["error: Failed to start domain 'web1'\nerror: Requested operation is not valid: domain is already running", 'DOMAIN_RUNNING'],
      ["error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2' (as uid:0, gid:0): No such file or directory", 'LIBVIRT_ERROR'],
    ];
    for (const [stderr, code] of cases) {
      const e = mapVirshError(stderr, ctx);
      expect(e.code, stderr).toBe(code);
      expect(e.message).toMatch(/web1/);
      expect(e.message).not.toMatch(/\n/);
    }
    expect(reasonOf("error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2': No such file or directory")).toBe(
      "Cannot access storage file '/x.qcow2': No such file or directory",
    );
    expect(mapVirshError("error: Failed to start domain 'web1'\nerror: Cannot access storage file '/x.qcow2': No such file", ctx).message).toBe(
      "cannot start domain: Cannot access storage file '/x.qcow2': No such file, domain web1",
    );
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
