/**
 * TaskService: the Tasks collection, each Task, and the task monitors that `Location` names after a
 * create, revert or delete (202 and the Task while it runs, then the operation's own response).
 */
import type { Context, Hono } from 'hono';
import type { Env } from '../context.js';
import { notFound, RedfishError } from '../errors.js';
import { collection, json, need, resource } from '../http.js';
import { CANCEL_WAIT_MS } from '../limits.js';
import { oemMessage } from '../messages.js';
import { monitorUri, ROOT, TASK_MONITORS, TASKS, taskUri } from '../uris.js';

/**
 * DELETE of a task or its monitor cancels it (DSP0266 lets a client cancel through the monitor): 204
 * once cancelled, nothing changed; 409 TaskNotCancellable when it had ended, or completed before the
 * cancel could take effect; 202 with the monitor when it has not stopped within CANCEL_WAIT_MS (a
 * task queued behind another one on the same system).
 */
async function cancel(c: Context<Env>, type: 'Task' | 'TaskMonitor'): Promise<Response> {
  need(c, 'Operator');
  const { tasks } = c.get('service');
  const id = c.req.param('tid') ?? '';
  const outcome = await tasks.cancel(id, CANCEL_WAIT_MS);
  switch (outcome) {
    case 'unknown':
      throw notFound(type, id.slice(0, 64));
    case 'cancelled':
      return json(null, 204);
    case 'pending':
      return json(null, 202, { Location: monitorUri(id) });
    default:
      throw new RedfishError(409, [oemMessage('TaskNotCancellable', [id, tasks.state(id) ?? 'Completed'])]);
  }
}

export function taskRoutes(app: Hono<Env>): void {
  resource(app, `${ROOT}/TaskService`, {
    GET: () =>
      json({
        '@odata.type': '#TaskService.v1_2_1.TaskService',
        '@odata.id': `${ROOT}/TaskService`,
        Id: 'TaskService',
        Name: 'Task Service',
        ServiceEnabled: true,
        CompletedTaskOverWritePolicy: 'Oldest',
        LifeCycleEventOnTaskStateChange: true,
        Tasks: { '@odata.id': TASKS },
      }),
  });
  resource(app, TASKS, {
    GET: (c) => json(collection(TASKS, '#TaskCollection.TaskCollection', 'Task Collection', c.get('service').tasks.ids().map(taskUri))),
  });
  resource(app, `${TASKS}/:tid`, {
    GET: (c) => {
      const v = c.get('service').tasks.view(c.req.param('tid') ?? '');
      if (!v) throw notFound('Task', (c.req.param('tid') ?? '').slice(0, 64));
      return json(v);
    },
    DELETE: (c) => cancel(c, 'Task'),
  });
  resource(app, `${TASK_MONITORS}/:tid`, {
    GET: (c) => {
      const { tasks } = c.get('service');
      const id = c.req.param('tid') ?? '';
      if (!tasks.has(id)) throw notFound('TaskMonitor', id.slice(0, 64));
      const final = tasks.final(id);
      if (!final) return json(tasks.view(id), 202);
      return json(final.body, final.status, final.headers);
    },
    DELETE: (c) => cancel(c, 'TaskMonitor'),
  });
}
