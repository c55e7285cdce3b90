/**
 * TaskService: the Tasks collection, each Task, and the task monitors that `Location` names after a
 * create, revert or delete (202 and the Task while it runs, then the operation's own response).
 */
import type { Hono } from 'hono';
import type { Env } from '../context.js';
import { notFound } from '../errors.js';
import { collection, json, resource } from '../http.js';
import { ROOT, TASK_MONITORS, TASKS, taskUri } from '../uris.js';

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
  });
}
