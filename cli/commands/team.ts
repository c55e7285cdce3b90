/**
 * `clonebox team ...` (identity, teams, invites) and `clonebox dht bootstrap` (a private DHT).
 * Parsing and rendering only: the work is in src/sync/. Heavy modules (hyperdht) load inside actions.
 */
import type { Command } from 'commander';
import { printJson, printLine, table } from '../output.js';
import { action } from '../run.js';
import { checkName } from '../../src/names.js';
import { usageError } from '../../src/errors.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

async function parseBootstraps(list: string[] | undefined): Promise<import('../../src/sync/hostport.js').HostPort[] | undefined> {
  if (!list || list.length === 0) return undefined;
  const { parseHostPort } = await import('../../src/sync/hostport.js');
  return list.map((b) => parseHostPort(b));
}

export function registerTeam(program: Command): void {
  const team = program.command('team').description('teams of workstations that share snapshot chains');

  team.command('create').argument('<team>').description('make a new team and print its invite (a secret: share it only with teammates)')
    .option('--name <workstation>', 'this workstation\'s name (default: the host name)')
    .option('--bootstrap <host:port>', 'private DHT bootstrap node for this team, repeatable (default: the public DHT)', collect)
    .option('--json', 'print JSON')
    .action(action(async (ctx, name: string, o: { name?: string; bootstrap?: string[] }) => {
      checkName('team', name);
      if (o.name !== undefined) checkName('workstation', o.name);
      const bootstrap = await parseBootstraps(o.bootstrap);
      const { ensureIdentity, loadIdentity } = await import('../../src/sync/identity.js');
      const { createTeam } = await import('../../src/sync/teams.js');
      await loadIdentity(ctx.home); // a damaged identity fails before anything is written
      const { invite } = await createTeam(ctx.home, name, bootstrap ? { bootstrap } : {});
      const id = await ensureIdentity(ctx.home, o.name); // named only once the team exists
      if (ctx.json) return printJson({ team: name, invite });
      printLine(`created team ${name} (this workstation: ${id.name})`);
      printLine('invite (a secret: anyone holding it can join the team):');
      printLine(invite);
      printLine(`teammates run: clonebox team join ${name} --invite ${invite}`);
    }));

  team.command('join').argument('<team>').description('join a team with an invite from a teammate')
    .requiredOption('--invite <invite>', 'the invite printed by `clonebox team create` (or `team invite`)')
    .option('--name <workstation>', 'this workstation\'s name (default: the host name)')
    .option('--bootstrap <host:port>', 'private DHT bootstrap node, repeatable (default: the invite\'s)', collect)
    .option('--json', 'print JSON')
    .action(action(async (ctx, name: string, o: { invite: string; name?: string; bootstrap?: string[] }) => {
      checkName('team', name);
      if (o.name !== undefined) checkName('workstation', o.name);
      const bootstrap = await parseBootstraps(o.bootstrap);
      const { decodeInvite } = await import('../../src/sync/invite.js');
      decodeInvite(o.invite); // a bad invite fails before the identity or anything else is written
      const { ensureIdentity, loadIdentity } = await import('../../src/sync/identity.js');
      const { joinTeam, teamView } = await import('../../src/sync/teams.js');
      await loadIdentity(ctx.home); // a damaged identity fails before anything is written
      const { record, already } = await joinTeam(ctx.home, name, o.invite, bootstrap ? { bootstrap } : {});
      const id = await ensureIdentity(ctx.home, o.name); // named only once the team is stored
      if (ctx.json) return printJson(teamView(record, id));
      printLine(already ? `already a member of team ${name} (this workstation: ${id.name})` : `joined team ${name} as ${id.name}`);
      if (record.bootstrap.length) printLine(`bootstrap: ${record.bootstrap.join(', ')}`);
    }));

  team.command('show').argument('<team>').description('show this workstation\'s identity and the members seen so far')
    .option('--json', 'print JSON')
    .action(action(async (ctx, name: string) => {
      checkName('team', name);
      const { ensureIdentity } = await import('../../src/sync/identity.js');
      const { loadTeam, teamView } = await import('../../src/sync/teams.js');
      const rec = await loadTeam(ctx.home, name);
      const view = teamView(rec, await ensureIdentity(ctx.home));
      if (ctx.json) return printJson(view);
      printLine(`team: ${view.team}`);
      printLine(`this workstation: ${view.self.name} (${view.self.public_key})`);
      printLine(`bootstrap: ${view.bootstrap.length ? view.bootstrap.join(', ') : 'public DHT'}`);
      if (view.members.length === 0) return printLine('members: none seen yet (they appear after a sync)');
      printLine(table(['MEMBER', 'PUBLIC KEY', 'FIRST SEEN', 'LAST SEEN'], view.members.map((m) => [m.name, m.public_key, m.first_seen, m.via ? `never (known through ${m.via})` : m.last_seen])));
    }));

  team.command('invite').argument('<team>').description('print the team\'s invite again (a secret)')
    .option('--json', 'print JSON')
    .action(action(async (ctx, name: string) => {
      checkName('team', name);
      const { loadTeam, teamInvite } = await import('../../src/sync/teams.js');
      const invite = teamInvite(await loadTeam(ctx.home, name));
      if (ctx.json) return printJson({ team: name, invite });
      printLine(invite);
    }));

  team.command('list').description('list the teams this workstation belongs to')
    .option('--json', 'print JSON')
    .action(action(async (ctx) => {
      const { listTeams } = await import('../../src/sync/teams.js');
      const names = await listTeams(ctx.home);
      if (ctx.json) return printJson(names);
      printLine(names.length ? names.join('\n') : 'no teams');
    }));
}

export function registerDht(program: Command): void {
  const dht = program.command('dht').description('private DHT for air-gapped networks and tests');

  dht.command('bootstrap').description('run a private DHT (3 nodes in this process) until interrupted; teammates use --bootstrap HOST:PORT')
    .option('--host <address>', 'IPv4 address to listen on, reachable by teammates', '127.0.0.1')
    .option('--port <port>', 'UDP port of the bootstrap address (0: any free port)', '49737')
    .option('--json', 'print one JSON line with the address once ready')
    .action(action(async (ctx, o: { host: string; port: string }) => {
      if (!/^\d{1,5}$/.test(o.port) || Number(o.port) > 65535) throw usageError(`invalid --port ${JSON.stringify(o.port)}`, 'use a UDP port number, 1-65535 (0: any free port)');
      const { startPrivateDht } = await import('../../src/sync/bootstrap.js');
      const net = await startPrivateDht({
        host: o.host,
        port: Number(o.port),
        onError: (err) => process.stderr.write(`clonebox: warning: DHT node error: ${err.message}\n`),
      });
      const address = `${net.address.host}:${net.address.port}`;
      if (ctx.json) {
        process.stdout.write(`${JSON.stringify({ bootstrap: address, host: net.address.host, port: net.address.port, nodes: net.nodes.length })}\n`);
      } else {
        printLine(`DHT bootstrap running on ${address} (${net.nodes.length} nodes)`);
        printLine(`teammates use: --bootstrap ${address}   (stop with Ctrl-C)`);
      }
      await new Promise<void>((resolve) => {
        const stop = () => {
          process.removeListener('SIGINT', stop);
          process.removeListener('SIGTERM', stop);
          resolve();
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      await net.close();
      if (!ctx.json) process.stderr.write('clonebox: DHT bootstrap stopped\n');
    }));
}
