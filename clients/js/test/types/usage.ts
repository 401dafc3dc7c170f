// Compiled by `npm run typecheck` (never run): the declarations describe a usable API.
import { connect, type GatewayEvent, type Client } from '../../src/index.js';

const client: Client = connect({
  url: ['https://a.example', 'https://b.example'],
  token: async ({ refresh }) => (refresh ? 'fresh-jwt' : 'cached-jwt'),
  on: {
    message: (e) => {
      const text: string = e.data.text;
      const by: number = e.data.by.id;
      void [text, by, e.rawData];
    },
    'new-conversation': (e) => void e.data.participants.map((p) => p.username),
    notification: (e) => void e.data.user.username,
    'video-ready': (e) => void [e.location, e.data['id']],
    post: (e) => void e.type,
  },
  onEvent: (e: GatewayEvent) => void e.type,
  onResync: (e) => void e.data.reason,
  onStateChange: ({ state, transport }) => void [state, transport],
  transports: ['sse', 'poll'],
  backoff: { baseMs: 100 },
});
const gleepost = connect({ url: 'http://127.0.0.1:8080', token: () => ({ id: 9, token: 't' }) });
void [client.lastEventId, client.close(), gleepost.transport];

connect({
  url: 'http://127.0.0.1:8080',
  token: () => 'jwt',
  on: {
    // @ts-expect-error a message's data has no `participants`
    message: (e) => void e.data.participants,
  },
});
// @ts-expect-error the token provider is required
connect({ url: 'http://127.0.0.1:8080' });
// @ts-expect-error unknown transport name
connect({ url: 'http://x', token: () => 'jwt', transports: ['carrier-pigeon'] });
