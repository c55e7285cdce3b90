/**
 * `cb.teams`: this workstation's identity, the teams it belongs to, and their invites (the work is in
 * src/sync/teams.ts, identity.ts, invite.ts). An invite is a secret: anyone holding it can join.
 */
import { CloneboxError } from '../errors.js';
import { checkName } from '../names.js';
import type { Session } from './session.js';
import type { TeamCreateOptions, TeamInvite, TeamJoinOptions, TeamView, Workstation } from './types.js';

async function bootstraps(list: string[] | undefined) {
  if (!list || list.length === 0) return {};
  const { parseHostPort } = await import('../sync/hostport.js');
  return { bootstrap: list.map((b) => parseHostPort(b)) };
}

export class Teams {
  constructor(private readonly s: Session) {}

  /** Makes a new team; returns its invite. */
  create(team: string, opts: TeamCreateOptions = {}): Promise<TeamInvite> {
    return this.s.run(async () => {
      checkName('team', team);
      if (opts.name !== undefined) checkName('workstation', opts.name);
      const bootstrap = await bootstraps(opts.bootstrap);
      const { ensureIdentity, loadIdentity } = await import('../sync/identity.js');
      const { createTeam } = await import('../sync/teams.js');
      await loadIdentity(this.s.home); // a damaged identity fails before anything is written
      const { invite } = await createTeam(this.s.home, team, bootstrap);
      await ensureIdentity(this.s.home, opts.name); // named only once the team exists
      return { team, invite };
    });
  }

  /** Joins a team with an invite from a teammate (joining again with the same invite changes nothing). */
  join(team: string, opts: TeamJoinOptions): Promise<TeamView> {
    return this.s.run(async () => {
      checkName('team', team);
      if (opts.name !== undefined) checkName('workstation', opts.name);
      const bootstrap = await bootstraps(opts.bootstrap);
      const { decodeInvite, readInvite } = await import('../sync/invite.js');
      if ((opts.invite === undefined) === (opts.inviteFrom === undefined)) {
        throw CloneboxError.USAGE('give the invite either as text or from a file or stdin, not both', { hint: 'e.g. `--invite-file FILE` or `--invite -`' });
      }
      const invite = opts.invite ?? (await readInvite(opts.inviteFrom!));
      decodeInvite(invite); // a bad invite fails before the identity or anything else is written
      const { ensureIdentity, loadIdentity } = await import('../sync/identity.js');
      const { joinTeam, teamView } = await import('../sync/teams.js');
      await loadIdentity(this.s.home); // a damaged identity fails before anything is written
      const { record } = await joinTeam(this.s.home, team, invite, bootstrap);
      const id = await ensureIdentity(this.s.home, opts.name); // named only once the team is stored
      return teamView(record, id);
    });
  }

  /**
   * Leaves a team: removes its record (the secret: joining again needs an invite) and its sync state.
   * VMs and snapshots pulled from it stay. SYNC_BUSY while a sync runs in this home.
   */
  leave(team: string): Promise<{ team: string; left: true }> {
    return this.s.run(async () => {
      checkName('team', team);
      const { leaveTeam } = await import('../sync/teams.js');
      return leaveTeam(this.s.home, team);
    });
  }

  /** The team's invite again (a secret). */
  invite(team: string): Promise<TeamInvite> {
    return this.s.run(async () => {
      checkName('team', team);
      const { loadTeam, teamInvite } = await import('../sync/teams.js');
      return { team, invite: teamInvite(await loadTeam(this.s.home, team)) };
    });
  }

  /** Names of the teams this workstation belongs to. */
  list(): Promise<string[]> {
    return this.s.run(async () => (await import('../sync/teams.js')).listTeams(this.s.home));
  }

  /** This workstation's identity and the members seen so far. */
  show(team: string): Promise<TeamView> {
    return this.s.run(async () => {
      checkName('team', team);
      const { ensureIdentity } = await import('../sync/identity.js');
      const { loadTeam, teamView } = await import('../sync/teams.js');
      const rec = await loadTeam(this.s.home, team);
      return teamView(rec, await ensureIdentity(this.s.home));
    });
  }

  /** This workstation's name and public key (made on first use). */
  self(): Promise<Workstation> {
    return this.s.run(async () => {
      const { ensureIdentity, publicKeyHex } = await import('../sync/identity.js');
      const id = await ensureIdentity(this.s.home);
      return { name: id.name, public_key: publicKeyHex(id) };
    });
  }
}
