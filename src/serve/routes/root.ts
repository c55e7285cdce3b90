/**
 * The service root and the documents a client reads before it authenticates: `/redfish` (protocol
 * versions), `/redfish/v1/` (the service root, with `Tasks` as DSP0266 names it), the OData service
 * document and the CSDL `$metadata`.
 */
import type { Hono } from 'hono';
import type { Env } from '../context.js';
import { json, resource } from '../http.js';
import { ACCOUNTS, EVENT_SERVICE, ROOT, SESSIONS, SYSTEMS } from '../uris.js';

const METADATA = `<?xml version="1.0" encoding="UTF-8"?>
<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/ServiceRoot_v1.xml"><edmx:Include Namespace="ServiceRoot"/><edmx:Include Namespace="ServiceRoot.v1_15_0"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/ComputerSystemCollection_v1.xml"><edmx:Include Namespace="ComputerSystemCollection"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/ComputerSystem_v1.xml"><edmx:Include Namespace="ComputerSystem"/><edmx:Include Namespace="ComputerSystem.v1_20_0"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/SessionService_v1.xml"><edmx:Include Namespace="SessionService"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/Session_v1.xml"><edmx:Include Namespace="Session"/><edmx:Include Namespace="Session.v1_7_0"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/TaskService_v1.xml"><edmx:Include Namespace="TaskService"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/Task_v1.xml"><edmx:Include Namespace="Task"/><edmx:Include Namespace="Task.v1_7_3"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/EventService_v1.xml"><edmx:Include Namespace="EventService"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/Event_v1.xml"><edmx:Include Namespace="Event"/><edmx:Include Namespace="Event.v1_7_0"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/AccountService_v1.xml"><edmx:Include Namespace="AccountService"/></edmx:Reference>
  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/Message_v1.xml"><edmx:Include Namespace="Message"/></edmx:Reference>
  <edmx:DataServices>
    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">
      <EntityContainer Name="Service" Extends="ServiceRoot.v1_15_0.ServiceContainer"/>
    </Schema>
  </edmx:DataServices>
</edmx:Edmx>
`;

export function rootRoutes(app: Hono<Env>): void {
  resource(app, '/redfish', { GET: () => json({ v1: `${ROOT}/` }) });
  resource(app, ROOT, {
    GET: (c) =>
      json({
        '@odata.type': '#ServiceRoot.v1_15_0.ServiceRoot',
        '@odata.id': `${ROOT}/`,
        Id: 'RootService',
        Name: 'clonebox snapshot service',
        RedfishVersion: '1.17.0',
        UUID: c.get('service').uuid,
        Vendor: 'clonebox',
        Systems: { '@odata.id': SYSTEMS },
        SessionService: { '@odata.id': `${ROOT}/SessionService` },
        AccountService: { '@odata.id': `${ROOT}/AccountService` },
        Tasks: { '@odata.id': `${ROOT}/TaskService` },
        EventService: { '@odata.id': EVENT_SERVICE },
        Links: { Sessions: { '@odata.id': SESSIONS } },
      }),
  });
  resource(app, `${ROOT}/odata`, {
    GET: () =>
      json({
        '@odata.context': `${ROOT}/$metadata`,
        value: [
          { name: 'Service', kind: 'Singleton', url: `${ROOT}/` },
          { name: 'Systems', kind: 'Singleton', url: SYSTEMS },
          { name: 'SessionService', kind: 'Singleton', url: `${ROOT}/SessionService` },
          { name: 'Sessions', kind: 'Singleton', url: SESSIONS },
          { name: 'AccountService', kind: 'Singleton', url: `${ROOT}/AccountService` },
          { name: 'Accounts', kind: 'Singleton', url: ACCOUNTS },
          { name: 'Tasks', kind: 'Singleton', url: `${ROOT}/TaskService` },
          { name: 'EventService', kind: 'Singleton', url: EVENT_SERVICE },
        ],
      }),
  });
  resource(app, `${ROOT}/$metadata`, {
    GET: () => new Response(METADATA, { status: 200, headers: { 'Content-Type': 'application/xml' } }),
  });
}
