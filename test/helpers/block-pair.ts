/**
 * Two members of one team, each a TeamSwarm on a private DHT on 127.0.0.1, joined by a block channel:
 * the sharer serves blocks, the receiver gets the fetching end. For the in-process tests of the block
 * protocol (sync-blocks, sync-limits), which differ only in what each end is attached with.
 */
import path from 'node:path';
import { resolveHome } from '../../src/store/home.js';
import { BlockChannel } from '../../src/sync/blocks.js';
import { type PrivateDht, startPrivateDht } from '../../src/sync/bootstrap.js';
import { ensureIdentity } from '../../src/sync/identity.js';
import { BLOCKS_PROTOCOL } from '../../src/sync/messages.js';
import { type TeamPeer, TeamSwarm } from '../../src/sync/swarm.js';
import { createTeam, joinTeam, loadTeam } from '../../src/sync/teams.js';
import { makeTempDir } from './temp.js';

type AttachOptions = NonNullable<Parameters<typeof BlockChannel.attach>[1]>;

export interface BlockPair {
  sharer: TeamSwarm;
  receiver: TeamSwarm;
  /** The receiver's end of the block channel. */
  fetcher: BlockChannel;
  close(): Promise<void>;
}

export async function openBlockPair(prefix: string, ends: { serve: AttachOptions; fetch?: AttachOptions }): Promise<BlockPair> {
  const net: PrivateDht = await startPrivateDht({ host: '127.0.0.1', port: 0 });
  const root = await makeTempDir(prefix);
  const a = resolveHome(path.join(root, 'a'));
  const b = resolveHome(path.join(root, 'b'));
  const ida = await ensureIdentity(a, 'sharer');
  const idb = await ensureIdentity(b, 'receiver');
  const { invite } = await createTeam(a, 'crew');
  await joinTeam(b, 'crew', invite);
  const deadline = Date.now() + 10_000;
  const sharer = await TeamSwarm.open({
    home: a,
    team: await loadTeam(a, 'crew'),
    identity: ida,
    bootstrap: [net.address],
    deadline,
    services: {
      [BLOCKS_PROTOCOL]: (peer: TeamPeer) => {
        BlockChannel.attach(peer.mux, ends.serve);
      },
    },
  });
  let attached!: (bc: BlockChannel) => void;
  const ready = new Promise<BlockChannel>((res) => {
    attached = res;
  });
  const receiver = await TeamSwarm.open({
    home: b,
    team: await loadTeam(b, 'crew'),
    identity: idb,
    bootstrap: [net.address],
    deadline,
    services: { [BLOCKS_PROTOCOL]: (peer: TeamPeer) => attached(BlockChannel.attach(peer.mux, ends.fetch ?? {})) },
  });
  const fetcher = await ready;
  return {
    sharer,
    receiver,
    fetcher,
    close: async () => {
      await receiver.close();
      await sharer.close();
      await net.close();
    },
  };
}
