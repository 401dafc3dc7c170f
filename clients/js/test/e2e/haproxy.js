// A real HAProxy (Debian's `haproxy`) in front of two gateway nodes, running the configuration
// docs/operations.md recommends: `docs/haproxy.cfg` itself, unchanged. That file takes its
// addresses from the environment (HAProxy expands "${VAR}"), as tests/src/haproxy.rs fills them
// in for the Rust tests: the documented text cannot drift from the tested one.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { eventually, freePort, ROOT, track } from './harness.js';

/** Server names of the nodes in the backend `gateway`, in the order `startHaproxy` takes them. */
export const NODES = ['node1', 'node2'];
const BACKEND = 'gateway';
const CONFIG = join(ROOT, 'docs/haproxy.cfg');

/**
 * `haproxy -f docs/haproxy.cfg -db` on a free loopback port in front of `nodes` (two gateways
 * of `startGateway`, `node1` and `node2`); resolves once both are UP behind it (their /readyz
 * passed the health checks). `url` is where clients connect.
 */
export async function startHaproxy(nodes) {
  let last;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const lb = await spawnOnce(nodes);
      try {
        await lb.waitStatus(NODES, 'UP');
      } catch (error) {
        await lb.stop();
        throw error;
      }
      return lb;
    } catch (error) {
      if (error.code === 'ENOENT') throw error; // not installed: no other port will help
      last = error;
    }
  }
  throw last;
}

async function spawnOnce(nodes) {
  const listen = `127.0.0.1:${await freePort()}`;
  const dir = mkdtempSync(join(tmpdir(), 'gp-js-haproxy-'));
  const socket = join(dir, 'admin.sock');
  const env = { PATH: process.env.PATH, GP_LISTEN: listen, GP_STATS_SOCKET: socket };
  nodes.forEach((gw, i) => {
    env[`GP_NODE${i + 1}`] = new URL(gw.url).host;
    env[`GP_NODE${i + 1}_ADMIN_PORT`] = new URL(gw.admin).port;
  });
  const child = track(spawn('haproxy', ['-f', CONFIG, '-db'], { env, stdio: ['ignore', 'pipe', 'pipe'] }));
  const logs = [];
  for (const pipe of [child.stdout, child.stderr]) {
    createInterface({ input: pipe }).on('line', (line) => {
      logs.push(line);
      if (process.env.GP_E2E_LOG) process.stderr.write(`[haproxy] ${line}\n`);
    });
  }
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (e) => {
      rmSync(dir, { recursive: true, force: true });
      const error = new Error(`could not run haproxy (${e.message}); install it: apt-get install -y --no-install-recommends haproxy (.ci/run does)`);
      error.code = e.code;
      reject(error);
    });
  });
  const lb = {
    url: `http://${listen}`,
    /** HAProxy's output so far (a log line per request or tunnel, and its alerts). */
    logs: () => logs.slice(),
    /** Every server of the backend as `show stat` reports it: {name, status, checkStatus, checkCode, sessions}. */
    async stats() {
      const csv = await runtime(socket, 'show stat');
      const [header, ...rows] = csv.split('\n');
      if (!header.startsWith('# ')) throw new Error(`unexpected "show stat" output: ${csv.slice(0, 200)}`);
      const columns = header.slice(2).split(',');
      const col = (name) => columns.indexOf(name);
      return rows
        .map((row) => row.split(','))
        .filter((f) => f[col('pxname')] === BACKEND && !['BACKEND', 'FRONTEND'].includes(f[col('svname')]))
        .map((f) => ({
          name: f[col('svname')],
          status: f[col('status')],
          checkStatus: f[col('check_status')].replace(/^\*/, ''),
          checkCode: f[col('check_code')],
          sessions: Number(f[col('scur')]),
        }));
    },
    /** The stat of server `name` (`node1`, `node2`). */
    async server(name) {
      const stat = (await lb.stats()).find((s) => s.name === name);
      if (!stat) throw new Error(`no server ${name} in ${BACKEND}`);
      return stat;
    },
    /** Wait until every server in `names` has `status` (`UP`, `DOWN`). */
    async waitStatus(names, status, ms = 20_000) {
      await eventually(async () => {
        const stats = await lb.stats();
        return names.every((n) => stats.some((s) => s.name === n && s.status === status));
      }, `${names.join(', ')} ${status} behind haproxy`, ms);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await child.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const exited = child.exited.then((status) => {
    throw new Error(`exited (${JSON.stringify(status)})`);
  });
  exited.catch(() => {}); // only the race below looks at it
  try {
    await Promise.race([exited, eventually(() => lb.stats(), 'the haproxy runtime API', 20_000)]);
  } catch (error) {
    await lb.stop();
    throw new Error(`haproxy did not start (${error.message}); its output:\n${logs.join('\n')}`);
  }
  return lb;
}

/** One command to HAProxy's runtime API (the `stats socket`); its answer. */
function runtime(path, command) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const s = net.connect(path, () => s.write(`${command}\n`));
    s.setTimeout(5000, () => s.destroy(new Error(`haproxy runtime API: "${command}" timed out`)));
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => resolve(Buffer.concat(chunks).toString()));
    s.on('error', reject);
  });
}
