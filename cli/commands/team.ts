/**
 * `clonebox team ...` (identity, teams, invites) and `clonebox dht bootstrap` (a private DHT).
 * Parsing and rendering only: the work is in the library's teams and dht namespaces.
 */
import { type Command, Option } from 'commander';
import { confirm } from '../confirm.js';
import { note, printJson, printLine, printWarning, table, usage } from '../output.js';
import { action } from '../run.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

export function registerTeam(program: Command): void {
  const team = program.command('team').description('teams of workstations that share snapshot chains');

  team
    .command('create')
    .argument('<team>', 'the team name')
    .description('make a new team and print its invite (a secret: share it only with teammates)')
    .addOption(new Option('--name <workstation>', "this workstation's name").default(undefined, 'the host name'))
    .addOption(
      new Option('--bootstrap <host:port>', 'private DHT bootstrap node for this team, repeatable').default(undefined, 'the public DHT').argParser(collect),
    )
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { name?: string; bootstrap?: string[] }) => {
        const r = await ctx.cb.teams.create(name, { ...(o.name !== undefined ? { name: o.name } : {}), ...(o.bootstrap ? { bootstrap: o.bootstrap } : {}) });
        if (ctx.json) return printJson(r);
        const { invite } = r;
        printLine(`created team ${name} (this workstation: ${(await ctx.cb.teams.self()).name})`);
        printLine('invite (a secret: anyone holding it can join the team):');
        printLine(invite);
        // Never inside a command line: pasted into a shell, it would sit in the history and in `ps`.
        printLine(`teammates save it in a file and run: clonebox team join ${name} --invite-file FILE (or --invite - and paste it)`);
      }),
    );

  team
    .command('join')
    .argument('<team>', 'the team name')
    .description('join a team with an invite from a teammate')
    .option('--invite-file <file>', 'read the invite printed by `clonebox team create` (or `team invite`) from FILE (- for stdin)')
    .option('--invite <invite>', 'the invite itself, or - to read it from stdin (as text it is visible to other users: prefer --invite-file)')
    .addOption(new Option('--name <workstation>', "this workstation's name").default(undefined, 'the host name'))
    .addOption(new Option('--bootstrap <host:port>', 'private DHT bootstrap node, repeatable').default(undefined, "the invite's").argParser(collect))
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { invite?: string; inviteFile?: string; name?: string; bootstrap?: string[] }) => {
        if ((o.invite === undefined) === (o.inviteFile === undefined)) {
          throw usage('give the invite with --invite-file FILE (or --invite -, from stdin)', 'see `clonebox team join --help`');
        }
        const from = o.inviteFile ?? (o.invite === '-' ? '-' : undefined);
        // Only the text says whether this workstation was already a member.
        const already = !ctx.json && (await ctx.cb.teams.list()).includes(name);
        const view = await ctx.cb.teams.join(name, {
          ...(from === undefined ? { invite: o.invite! } : { inviteFrom: from === '-' ? process.stdin : from }),
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.bootstrap ? { bootstrap: o.bootstrap } : {}),
        });
        // Said once the join worked (a failure prints its error alone): next time, keep it off argv.
        if (o.invite !== undefined && o.invite !== '-') {
          printWarning({
            code: 'WARNING',
            message: 'an invite on the command line is visible to other users of this machine (ps, shell history): use --invite-file FILE or --invite -',
          });
        }
        if (ctx.json) return printJson(view);
        printLine(already ? `already a member of team ${name} (this workstation: ${view.self.name})` : `joined team ${name} as ${view.self.name}`);
        if (view.bootstrap.length) printLine(`bootstrap: ${view.bootstrap.join(', ')}`);
      }),
    );

  team
    .command('show')
    .argument('<team>', 'the team name')
    .description("show this workstation's identity and the members seen so far")
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const view = await ctx.cb.teams.show(name);
        if (ctx.json) return printJson(view);
        printLine(`team: ${view.team}`);
        printLine(`this workstation: ${view.self.name} (${view.self.public_key})`);
        printLine(`bootstrap: ${view.bootstrap.length ? view.bootstrap.join(', ') : 'public DHT'}`);
        if (view.members.length === 0) return printLine('members: none seen yet (they appear after a sync)');
        printLine(
          table(
            ['MEMBER', 'PUBLIC KEY', 'FIRST SEEN', 'LAST SEEN'],
            view.members.map((m) => [m.name, m.public_key, m.first_seen, m.via ? `never (known through ${m.via})` : m.last_seen]),
          ),
        );
      }),
    );

  team
    .command('leave')
    .argument('<team>', 'the team name')
    .description('leave a team: forget its secret and sync state (pulled VMs stay)')
    .option('--yes', 'do not ask for confirmation')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string, o: { yes?: boolean }) => {
        await confirm(`Leave team ${name}? Joining again needs an invite`, Boolean(o.yes));
        const r = await ctx.cb.teams.leave(name);
        if (ctx.json) return printJson(r);
        printLine(`left team ${name} (VMs pulled from it stay)`);
      }),
    );

  team
    .command('invite')
    .argument('<team>', 'the team name')
    .description("print the team's invite again (a secret)")
    .option('--json', 'print JSON')
    .action(
      action(async (ctx, name: string) => {
        const r = await ctx.cb.teams.invite(name);
        if (ctx.json) return printJson(r);
        printLine(r.invite);
      }),
    );

  team
    .command('list')
    .description('list the teams this workstation belongs to')
    .option('--json', 'print JSON')
    .action(
      action(async (ctx) => {
        const names = await ctx.cb.teams.list();
        if (ctx.json) return printJson(names);
        printLine(names.length ? names.join('\n') : 'no teams');
      }),
    );
}

export function registerDht(program: Command): void {
  const dht = program.command('dht').description('private DHT for air-gapped networks and tests');

  dht
    .command('bootstrap')
    .description('run a private DHT (3 nodes in this process) until interrupted; teammates use --bootstrap HOST:PORT')
    .option('--host <address>', 'IPv4 address to listen on, reachable by teammates', '127.0.0.1')
    .option('--port <port>', 'UDP port of the bootstrap address (0: any free port)', '49737')
    .option('--json', 'print one JSON line with the address once ready')
    .action(
      action(async (ctx, o: { host: string; port: string }) => {
        if (!/^\d{1,5}$/.test(o.port) || Number(o.port) > 65535)
          throw usage(`invalid --port ${JSON.stringify(o.port)}`, 'use a UDP port number, 1-65535 (0: any free port)');
        const net = await ctx.cb.dht.bootstrap({ host: o.host, port: Number(o.port) });
        const address = net.bootstrap;
        if (ctx.json) {
          process.stdout.write(`${JSON.stringify({ bootstrap: address, host: net.host, port: net.port, nodes: net.nodes })}\n`);
        } else {
          printLine(`DHT bootstrap running on ${address} (${net.nodes} nodes)`);
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
        if (!ctx.json) note('DHT bootstrap stopped');
      }),
    );
}
