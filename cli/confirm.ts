/** Asks yes/no on the terminal. Without a TTY (scripts, CI) it refuses unless --yes was given. */
import { CloneboxError } from '../src/index.js';

export async function confirm(question: string, yes: boolean): Promise<void> {
  if (yes) return;
  if (!process.stdin.isTTY) {
    throw new CloneboxError('NEEDS_CONFIRMATION', `${question.replace(/\?$/, '')}: refusing without confirmation, no terminal`, {
      hint: 'pass --yes to confirm',
    });
  }
  // readline loads only when a question is really asked (it is most of a command's start-up otherwise).
  const { createInterface } = await import('node:readline/promises');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = (await rl.question(`${question} [y/N] `)).trim().toLowerCase();
    if (answer !== 'y' && answer !== 'yes') throw new CloneboxError('ABORTED', 'aborted by the user');
  } finally {
    rl.close();
  }
}
