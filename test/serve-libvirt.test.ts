/**
 * The Redfish service on a libvirt VM (real daemon): the system's PowerState follows the domain, and a
 * snapshot task runs through the libvirt driver. Skips loudly without a daemon (fails under
 * CLONEBOX_REQUIRE_LIBVIRT=1).
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Clonebox } from '../src/index.js';
import { addAccount, createRedfishApp, type RedfishApp } from '../src/serve/index.js';
import { libvirtSuite, TestDomain, URI, useTestDaemon } from './helpers/libvirt.js';
import { makeTempDir } from './helpers/temp.js';

const BASE = 'clonebox serve on a libvirt VM (real daemon)';
const { suite } = await libvirtSuite(BASE);

describe.skipIf(suite.skip)(suite.title, () => {
  const virsh = useTestDaemon();
  let cb: Clonebox | null = null;
  let svc: RedfishApp | null = null;
  afterAll(async () => {
    await svc?.close();
    await cb?.close();
  });

  it('shows PowerState Off, then On while the domain runs, and snapshots it through a task', async () => {
    const dom = await TestDomain.define(virsh, 'serve');
    const home = path.join(await makeTempDir('clonebox-serve-lv-'), 'home');
    cb = await Clonebox.open({ home });
    await cb.vms.addLibvirt('lv', { domain: dom.name, uri: URI });
    await addAccount(home, 'admin', 'Administrator', 'libvirt password');
    svc = await createRedfishApp(cb);
    const auth = { Authorization: `Basic ${Buffer.from('admin:libvirt password').toString('base64')}` };
    const system = async () => (await (await svc!.app.request('/redfish/v1/Systems/lv', { headers: auth })).json()) as { PowerState?: string };
    expect((await system()).PowerState).toBe('Off');
    await virsh.start(dom.name);
    expect((await system()).PowerState).toBe('On');
    const r = await svc.app.request('/redfish/v1/Systems/lv/Oem/HawkFish/Snapshots', {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ Name: 'live', Quiesce: true }),
    });
    expect(r.status).toBe(202);
    const mon = r.headers.get('Location')!;
    let final: Response;
    for (let i = 0; ; i++) {
      final = await svc.app.request(mon, { headers: auth });
      if (final.status !== 202 || i > 6000) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    expect(final.status, await final.clone().text()).toBe(201);
    const task = (await (await svc.app.request(mon.replace('TaskMonitors', 'Tasks'), { headers: auth })).json()) as { Messages: { MessageId: string }[] };
    // The test domain has no guest agent: the snapshot is taken crash-consistent, with the OEM warning.
    expect(task.Messages.map((m) => m.MessageId)).toContain('HawkFish.1.0.0.QuiesceUnavailable');
    expect((await cb.snapshots.list('lv')).map((s) => s.name)).toEqual(['live']);

    // A full snapshot: the domain's current memory (as `virsh dominfo` reports it) is in the estimate.
    const info = await virsh.run(['dominfo', dom.name], { what: 'cannot read domain info' });
    const kib = Number(/^Used memory:\s*(\d+) KiB$/m.exec(info)?.[1]);
    expect(kib).toBeGreaterThan(0);
    const full = await svc.app.request('/redfish/v1/Systems/lv/Oem/HawkFish/Snapshots', {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ Name: 'full', Memory: true }),
    });
    expect(full.status).toBe(202);
    const fullMon = full.headers.get('Location')!;
    for (let i = 0; ; i++) {
      final = await svc.app.request(fullMon, { headers: auth });
      if (final.status !== 202 || i > 6000) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    expect(final.status, await final.clone().text()).toBe(201);
    expect(((await final.json()) as { Type: string }).Type).toBe('full');
    type Msg = { MessageId: string; MessageArgs: string[] };
    const fullTask = (await (await svc.app.request(fullMon.replace('TaskMonitors', 'Tasks'), { headers: auth })).json()) as { Messages: Msg[] };
    const mem = fullTask.Messages.find((m) => m.MessageId === 'HawkFish.1.0.0.MemoryEstimate');
    expect(mem?.MessageArgs).toEqual(['full', 'lv', String(kib * 1024)]);
    const est = fullTask.Messages.find((m) => m.MessageId === 'HawkFish.1.0.0.StorageEstimate');
    expect(Number(est?.MessageArgs[2])).toBeGreaterThanOrEqual(kib * 1024);
  });
});
