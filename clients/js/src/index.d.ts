// Type declarations of @gleepost/realtime (hand-written; `npm run typecheck` checks them).

/** A Gleepost user as embedded in events. */
export interface User {
  id: number;
  username: string;
  profile_image: string;
}

/** `data` of a `message` event: the message object, as in `/conversations/<id>/messages`. */
export interface Message {
  id: number;
  by: User;
  text: string;
  timestamp: string;
  seen: boolean;
}

/** The conversation object (`new-conversation`, `ended-conversation`, `changed-conversation`). */
export interface Conversation {
  id: number;
  lastActivity: string;
  participants: User[];
  expiry?: { time: string; ended: boolean };
}

/** `data` of a `notification` event. */
export interface Notification {
  id: number;
  type: string;
  time: string;
  user: User;
}

/** `data` of a `read` event. */
export interface Read {
  conversation: number;
  user: number;
  last_read: number;
}

/** `data` of a `typing` event. */
export interface Typing {
  conversation: number;
  user: number;
  typing: boolean;
}

/** `data` of a `presence` event. */
export interface Presence {
  user: number;
  status: string;
}

/** What every delivered event carries besides its parsed members. */
export interface Envelope<T extends string, D> {
  type: T;
  /** URI of the resource that changed; absent when there is none. */
  location?: string;
  /** The payload, parsed. */
  data: D;
  /** The event id (events stored in history); the client resumes after the last one. */
  id?: string;
  /** The event's JSON text exactly as received. */
  raw: string;
  /** The text of `data` exactly as the backend published it (byte-exact). */
  rawData: string | undefined;
}

/** Known event types and their payloads (docs/protocol.md, "Event types"). */
export interface EventMap {
  message: Envelope<'message', Message>;
  'new-conversation': Envelope<'new-conversation', Conversation>;
  'ended-conversation': Envelope<'ended-conversation', Conversation>;
  'changed-conversation': Envelope<'changed-conversation', Conversation>;
  notification: Envelope<'notification', Notification>;
  read: Envelope<'read', Read>;
  typing: Envelope<'typing', Typing>;
  presence: Envelope<'presence', Presence>;
  /** The video object (docs/protocol.md lists its members as the REST API's). */
  'video-ready': Envelope<'video-ready', Record<string, unknown>>;
  /** `views`, `vote`, `comment`, `post`: the resource object at the event's location. */
  views: Envelope<'views', Record<string, unknown>>;
  vote: Envelope<'vote', Record<string, unknown>>;
  comment: Envelope<'comment', Record<string, unknown>>;
  post: Envelope<'post', Record<string, unknown>>;
}

/** An event of a type this client version does not know (new types will appear). */
export type OtherEvent = Envelope<string, unknown>;

/** Any event but `resync` (which goes to `onResync`). */
export type GatewayEvent = EventMap[keyof EventMap] | OtherEvent;

/** The `resync` control event: refetch canonical state over REST. */
export type ResyncEvent = Envelope<'resync', { reason: string }>;

/** A JWT, or a Gleepost token (Redis deployments). */
export type Credentials = string | { id: number | string; token: string };

/** What the token provider is told. */
export interface TokenRequest {
  /** true after a 401, a close 4001 (expired) or 4003 (session ended): return fresh credentials. */
  refresh: boolean;
  /** Why it is asked: `connect`, `http 401`, `close 4001`, `close 4003`, … */
  reason: string;
}

export type TransportName = 'websocket' | 'sse' | 'poll';

/** Reported on every change of the connection's state. */
export interface StateChange {
  state: 'connecting' | 'open' | 'waiting' | 'closed';
  transport: TransportName;
  url: string;
  /** `waiting`: milliseconds until the next attempt. */
  delay?: number;
  /** `waiting`: what ended the last attempt (`close 1001`, `http 503`, `websocket refused`, …). */
  reason?: string;
}

export interface ConnectOptions {
  /** Base URL of the gateway's public port (`https://rt.example.com`), or several (tried in turn). */
  url: string | string[];
  /** Credentials provider; called before each attempt (return a cached token unless `refresh`). */
  token: (request: TokenRequest) => Credentials | Promise<Credentials>;
  /** Every event but `resync`. */
  onEvent?: (event: GatewayEvent) => void;
  /** Handlers by known type. */
  on?: { [K in keyof EventMap]?: (event: EventMap[K]) => void };
  /** The server cannot prove completeness after the last id: refetch state over REST. */
  onResync?: (event: ResyncEvent) => void;
  onStateChange?: (change: StateChange) => void;
  /** The client moved to the next transport (see README, "Transport fallback"). */
  onFallback?: (change: { from: TransportName; to: TransportName }) => void;
  /** Errors of handlers and of the token provider (the client keeps going). */
  onError?: (error: unknown) => void;
  /** Resume after this id (e.g. kept in storage from a previous session). */
  lastEventId?: string;
  /** Transports in fallback order; default `['websocket', 'sse', 'poll']`. */
  transports?: TransportName[];
  /** Consecutive attempts that cannot get through before falling back; default 2. */
  fallbackAfter?: number;
  /** Full-jitter backoff: delay = random(0, min(maxMs, baseMs·2^attempt)); default 500 ms / 30 s. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** Longest wait for a stream to open (and for a probe); default 10 s. */
  openTimeoutMs?: number;
  /** SSE: longest silence (no event, no `: ping`) before reconnecting; default 65 s. */
  heartbeatTimeoutMs?: number;
  /** Long-poll: the `timeout` asked of the server; default 25 s. */
  pollTimeoutMs?: number;
  /** WebSocket constructor (default: the global one; Node 20 needs one injected, e.g. `ws`). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** fetch (default: the global one). */
  fetch?: typeof fetch;
  /** Random source of the backoff jitter, in [0, 1); default Math.random. */
  random?: () => number;
}

/** The subset of the WebSocket API the client uses. */
export interface WebSocketLike {
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  close(code?: number): void;
}

export interface Client {
  /** Id of the last event processed (resume point). */
  readonly lastEventId: string | undefined;
  readonly state: StateChange['state'];
  readonly transport: TransportName;
  readonly url: string;
  /** Stop for good; resolves once the client has stopped. */
  close(): Promise<void>;
}

export function connect(options: ConnectOptions): Client;

/** Full-jitter backoff delay in ms for `attempt` (0-based). */
export function backoffDelay(
  attempt: number,
  settings: { baseMs: number; maxMs: number },
  random: () => number,
): number;

/** The exact text of a top-level member of a JSON object. */
export function rawMember(text: string, name: string): string | undefined;

/** The exact texts of the elements of a JSON array. */
export function rawElements(text: string): string[];

export const defaults: Readonly<{
  transports: readonly TransportName[];
  fallbackAfter: number;
  backoff: Readonly<{ baseMs: number; maxMs: number }>;
  openTimeoutMs: number;
  heartbeatTimeoutMs: number;
  pollTimeoutMs: number;
}>;
