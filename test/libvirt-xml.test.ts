/**
 * Domain XML from a real libvirtd: round trips of `virsh dumpxml` output and edits fed back to the
 * daemon. The same code on sample documents, without a daemon: libvirt-xml.unit.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../src/drivers/libvirt/domain-xml.js';
import { libvirtSuite, qcow2, TestDomain, useTestDaemon } from './helpers/libvirt.js';
import { canon } from './helpers/xml.js';

const { suite } = await libvirtSuite('domain XML against a real daemon');

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();

  it('round-trips real `virsh dumpxml` output (live and inactive), and libvirt reads it back unchanged', async () => {
    const d = await TestDomain.define(virsh, 'xml', {
      disks: [
        { target: 'vda', sizeMiB: 16 },
        { target: 'vdb', sizeMiB: 16 },
      ],
      agentChannel: true,
    });
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
