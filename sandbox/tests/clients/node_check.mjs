// ioredis against a Pivot proxy: what Node.js applications do with it, checked end to end.
//
// Run by sandbox/tests/clients.rs with the proxy's port (after `npm ci` in this directory);
// exits non-zero on the first failure, naming the check. Replica reads are on (the
// proxy's default policy), so a connection's reads go to a replica until it has written.
//
//   node node_check.mjs --port PORT [--host HOST] [--user NAME --password PASS]
//
// With --user/--password the proxy must require them: a connection without credentials
// gets NOAUTH, wrong ones get WRONGPASS, and every other check runs authenticated.
//
// The checks run twice: with RESP2 (`protocol: 2`, what ioredis 5 and most deployed
// clients speak) and with ioredis 6's default (`HELLO 3`, replies in RESP2 shapes); then
// RESP3 replies proper (`replyMapping: "resp3"`: maps, doubles, push messages).

import { isDeepStrictEqual, parseArgs, inspect } from "node:util";
import { Redis } from "ioredis";

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    user: { type: "string" },
    password: { type: "string" },
  },
});
if (!args.port || (args.user === undefined) !== (args.password === undefined)) {
  console.error("usage: node node_check.mjs --port PORT [--host HOST] [--user NAME --password PASS]");
  process.exit(2);
}
const PORT = Number(args.port);
const AUTH = args.user !== undefined ? { username: args.user, password: args.password } : {};
// Unique keys per run: the checks never depend on what an earlier run left behind.
const RUN = `node:${process.pid}:${Date.now()}`;

// Failing fast and loudly.
function fail(name, detail) {
  console.error(`FAIL ${name}: ${detail}`);
  process.exit(1);
}
function check(name, cond, detail = "") {
  if (!cond) fail(name, detail);
  console.log(`ok   ${name}`);
}
function checkEq(name, got, want) {
  check(name, isDeepStrictEqual(got, want), `got ${show(got)}, expected ${show(want)}`);
}
function show(v) {
  return inspect(v, { depth: 6, breakLength: Infinity, maxArrayLength: 20 });
}
process.on("unhandledRejection", (e) => fail("unhandled rejection", e?.stack ?? e));
// The whole run is bounded; clients.rs also bounds it from outside.
setTimeout(() => fail("overall", "checks did not finish within 100 s"), 100_000).unref();

/** `promise`, or a failure of check `name` after `ms` without a result. */
async function within(name, promise, ms = 5000) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } catch (e) {
    fail(name, e?.message ?? e);
  } finally {
    clearTimeout(timer);
  }
}

/** The error `promise` rejects with (a failure of `name` if it resolves or hangs). */
async function rejection(name, promise, ms = 5000) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ hung: true }), ms);
  });
  const outcome = await Promise.race([
    promise.then((value) => ({ value }), (error) => ({ error })),
    timeout,
  ]);
  clearTimeout(timer);
  if (outcome.hung) fail(name, `no answer within ${ms} ms`);
  if (!("error" in outcome)) fail(name, `expected an error, got ${show(outcome.value)}`);
  return outcome.error;
}

const clients = [];

/**
 * A connected client. No reconnection and no retries: a dropped connection fails the
 * check that was using it instead of being papered over.
 */
async function connect(name, options = {}) {
  const c = new Redis({
    host: args.host,
    port: PORT,
    lazyConnect: true,
    connectTimeout: 5000,
    commandTimeout: 10_000,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    ...AUTH,
    ...options,
  });
  c.errors = [];
  c.on("error", (e) => c.errors.push(e));
  clients.push(c);
  // The cause of a refused connection (NOAUTH, ...) reaches the "error" listeners.
  const connected = c.connect().catch((e) => {
    throw new Error(`${e.message} (client errors: ${show(c.errors.map((x) => x.message))})`);
  });
  await within(`${name}: connect`, connected);
  return c;
}

/** A client whose connection must fail with an error containing `code` (NOAUTH, ...). */
async function connectRefused(name, code, options) {
  const c = new Redis({
    host: args.host,
    port: PORT,
    lazyConnect: true,
    connectTimeout: 5000,
    commandTimeout: 5000,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    ...options,
  });
  c.errors = [];
  c.on("error", (e) => c.errors.push(e));
  const err = await rejection(name, c.connect());
  const seen = [err, ...c.errors].map((e) => String(e?.message ?? e));
  check(name, seen.some((m) => m.includes(code)), `errors seen: ${show(seen)}`);
  c.disconnect();
}

/** Messages delivered to a subscriber, awaited one at a time with a deadline. */
class Inbox {
  constructor(client) {
    this.items = [];
    this.waiters = [];
    client.on("message", (channel, message) => this.push({ kind: "message", channel, message }));
    client.on("pmessage", (pattern, channel, message) =>
      this.push({ kind: "pmessage", pattern, channel, message }),
    );
  }
  push(m) {
    const w = this.waiters.shift();
    if (w) w(m);
    else this.items.push(m);
  }
  next(name, ms = 5000) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return within(name, new Promise((resolve) => this.waiters.push(resolve)), ms);
  }
}

/** Polls `probe` every 20 ms until it returns a truthy value, failing `name` at the deadline. */
async function waitFor(name, probe, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() >= deadline) fail(name, `condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// ---------------------------------------------------------------------------------------
// Authentication (only with --user/--password).

async function authChecks() {
  const user = args.user;
  const { password } = args;
  // (a) No credentials: the first command is refused with NOAUTH. RESP2 without the ready
  // check or CLIENT SETINFO, so that the GET below really is the first command.
  const anon = await connect("noauth: connect", {
    username: undefined,
    password: undefined,
    protocol: 2,
    enableReadyCheck: false,
    disableClientInfo: true,
  });
  const e1 = await rejection("noauth: first command", anon.get(`${RUN}:noauth`));
  check("noauth: first command refused with NOAUTH", String(e1.message).includes("NOAUTH"), e1.message);
  // The same connection then authenticates with AUTH, wrong and right.
  const e2 = await rejection("wrongpass: AUTH command", anon.call("AUTH", user, `${password}-wrong`));
  check("wrongpass: AUTH command refused with WRONGPASS", String(e2.message).includes("WRONGPASS"), e2.message);
  checkEq("auth: AUTH command with the right password", await within("auth: AUTH", anon.call("AUTH", user, password)), "OK");
  checkEq("auth: command after AUTH", await within("auth: PING", anon.ping()), "PONG");
  anon.disconnect();
  // ioredis 6's default handshake without credentials: HELLO 3 is refused with NOAUTH.
  await connectRefused("noauth: HELLO 3 without credentials", "NOAUTH", { protocol: 3 });
  // (b) Wrong credentials, through both handshakes (AUTH, and HELLO 3 AUTH).
  await connectRefused("wrongpass: AUTH handshake (RESP2)", "WRONGPASS", {
    protocol: 2,
    username: user,
    password: `${password}-wrong`,
  });
  await connectRefused("wrongpass: HELLO 3 AUTH handshake", "WRONGPASS", {
    protocol: 3,
    username: user,
    password: `${password}-wrong`,
  });
}

// ---------------------------------------------------------------------------------------
// The checks, run once per protocol.

async function basics(label, opts) {
  const k = `${RUN}:${label}:basic`;
  const c = await connect(`${label} basics`, opts);
  checkEq(`${label} ping`, await within(`${label} ping`, c.ping()), "PONG");
  checkEq(`${label} echo`, await within(`${label} echo`, c.echo("hé llo\r\n")), "hé llo\r\n");
  checkEq(`${label} get missing (replica)`, await within(`${label} get missing`, c.get(`${k}:missing`)), null);
  checkEq(`${label} set`, await within(`${label} set`, c.set(`${k}:s`, "v1")), "OK");
  // Read-your-writes: this connection has written, its reads must see it.
  checkEq(`${label} get after set`, await within(`${label} get`, c.get(`${k}:s`)), "v1");
  checkEq(`${label} set NX on existing`, await within(`${label} set nx`, c.set(`${k}:s`, "v2", "NX")), null);
  checkEq(`${label} set GET`, await within(`${label} set get`, c.set(`${k}:s`, "v3", "GET")), "v1");
  checkEq(`${label} append + strlen`, [await c.append(`${k}:s`, "!"), await c.strlen(`${k}:s`)], [3, 3]);
  checkEq(`${label} incr`, [await c.incr(`${k}:n`), await c.incr(`${k}:n`), await c.incrby(`${k}:n`, 40)], [1, 2, 42]);
  checkEq(`${label} incrbyfloat`, await c.incrbyfloat(`${k}:n`, 0.5), "42.5");
  checkEq(`${label} mset/mget`, [await c.mset(`${k}:m1`, "a", `${k}:m2`, "b"), await c.mget(`${k}:m1`, `${k}:missing`, `${k}:m2`)], ["OK", ["a", null, "b"]]);
  checkEq(`${label} hset`, await c.hset(`${k}:h`, { f1: "1", f2: "two", "f 3": "" }), 3);
  checkEq(`${label} hgetall`, await c.hgetall(`${k}:h`), { f1: "1", f2: "two", "f 3": "" });
  checkEq(`${label} hget/hincrby/hdel`, [await c.hget(`${k}:h`, "f2"), await c.hincrby(`${k}:h`, "f1", 9), await c.hdel(`${k}:h`, "f2", "nope")], ["two", 10, 1]);
  checkEq(`${label} hgetall missing`, await c.hgetall(`${k}:missing`), {});
  checkEq(`${label} lpush`, await c.lpush(`${k}:l`, "a", "b", "c"), 3);
  checkEq(`${label} lrange`, await c.lrange(`${k}:l`, 0, -1), ["c", "b", "a"]);
  checkEq(`${label} rpop/llen`, [await c.rpop(`${k}:l`), await c.llen(`${k}:l`)], ["a", 2]);
  checkEq(`${label} sadd/smembers`, [await c.sadd(`${k}:set`, "x", "y", "x"), (await c.smembers(`${k}:set`)).sort()], [2, ["x", "y"]]);
  checkEq(`${label} zadd`, await c.zadd(`${k}:z`, 1, "one", 2.5, "two", -3, "minus"), 3);
  checkEq(`${label} zrange withscores`, await c.zrange(`${k}:z`, 0, -1, "WITHSCORES"), ["minus", "-3", "one", "1", "two", "2.5"]);
  checkEq(`${label} zscore/zrank`, [await c.zscore(`${k}:z`, "two"), await c.zrank(`${k}:z`, "one")], ["2.5", 1]);
  const id = await c.xadd(`${k}:x`, "*", "field", "value");
  checkEq(`${label} xadd/xrange`, await c.xrange(`${k}:x`, "-", "+"), [[id, ["field", "value"]]]);
  const [expired, ttl] = [await c.expire(`${k}:s`, 100), await c.ttl(`${k}:s`)];
  check(`${label} expire/ttl`, expired === 1 && ttl >= 98 && ttl <= 100, show([expired, ttl]));
  checkEq(`${label} type/exists/del`, [await c.type(`${k}:h`), await c.exists(`${k}:h`, `${k}:missing`), await c.del(`${k}:h`), await c.exists(`${k}:h`)], ["hash", 1, 1, 0]);
  const err = await rejection(`${label} wrong type`, c.lpush(`${k}:n`, "x"));
  check(`${label} wrong type error`, String(err.message).startsWith("WRONGTYPE"), err.message);
  // A binary-safe value round trip.
  const bin = Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x80]);
  await c.set(`${k}:bin`, bin);
  checkEq(`${label} binary value`, await c.getBuffer(`${k}:bin`), bin);
  // Scripts as ioredis defines them: EVALSHA first, EVAL when the script is not loaded.
  c.defineCommand("pivotAddTo", { numberOfKeys: 1, lua: "return redis.call('INCRBY', KEYS[1], ARGV[1])" });
  checkEq(`${label} defineCommand (EVALSHA, then EVAL)`, [await c.pivotAddTo(`${k}:lua`, 5), await c.pivotAddTo(`${k}:lua`, 6)], [5, 11]);
  checkEq(`${label} eval`, await c.eval("return {KEYS[1], ARGV[1]}", 1, "key", "arg"), ["key", "arg"]);
  // A connection bound to database 3 through the connection options (SELECT at connect).
  const c3 = await connect(`${label} db 3`, { ...opts, db: 3 });
  checkEq(`${label} select db: set`, await within(`${label} db 3 set`, c3.set(`${k}:db`, "in-3")), "OK");
  checkEq(`${label} select db: get`, await within(`${label} db 3 get`, c3.get(`${k}:db`)), "in-3");
  checkEq(`${label} select db: not in db 0`, await within(`${label} db 0 get`, c.get(`${k}:db`)), null);
  c3.disconnect();
  return c;
}

/**
 * Read-your-writes on fresh connections: before its first write a connection reads from
 * replicas; its own reads right after its write (pipelined with it, or awaited) must see it.
 */
async function readYourWrites(label, opts) {
  const k = `${RUN}:${label}:ryw`;
  for (let i = 0; i < 12; i++) {
    const c = await connect(`${label} read-your-writes ${i}`, opts);
    const v = `value-${i}-${Math.random()}`;
    let got;
    if (i % 3 === 0) {
      // Same batch: the read leaves the client in the same write as the SET.
      got = await within(`${label} ryw ${i}`, Promise.all([c.set(`${k}:${i}`, v), c.get(`${k}:${i}`)]));
      got = got[1];
    } else if (i % 3 === 1) {
      await within(`${label} ryw ${i} set`, c.set(`${k}:${i}`, v));
      got = await within(`${label} ryw ${i} get`, c.get(`${k}:${i}`));
    } else {
      const res = await within(`${label} ryw ${i}`, c.pipeline().hset(`${k}:${i}`, "f", v).hgetall(`${k}:${i}`).exec());
      got = res[1][1]?.f;
    }
    checkEq(`${label} read-your-writes, connection ${i}`, got, v);
    c.disconnect();
  }
  // A connection that never wrote reads from replicas: it sees the write once replicated.
  const writer = await connect(`${label} replicated writer`, opts);
  const v = `replicated-${Math.random()}`;
  await within(`${label} replicated set`, writer.set(`${k}:replicated`, v));
  const reader = await connect(`${label} replica reader`, opts);
  await waitFor(`${label} replica read sees the write`, async () => (await within(`${label} replica get`, reader.get(`${k}:replicated`))) === v);
  check(`${label} replica read sees the write`, true);
  writer.disconnect();
  reader.disconnect();
}

/** Pipelines of a few hundred commands, reads and writes mixed, replies in order. */
async function pipelines(label, opts) {
  const k = `${RUN}:${label}:pipe`;
  // A fresh connection: its leading reads go to replicas, then writes to the master.
  const c = await connect(`${label} pipeline`, opts);
  const p = c.pipeline();
  const want = [];
  for (let i = 0; i < 40; i++) {
    p.get(`${k}:missing:${i}`);
    want.push(null);
    p.echo(`e${i}`);
    want.push(`e${i}`);
  }
  for (let i = 0; i < 60; i++) {
    p.set(`${k}:${i}`, `v${i}`);
    want.push("OK");
    p.incr(`${k}:count`);
    want.push(i + 1);
    p.get(`${k}:${i}`);
    want.push(`v${i}`);
    if (i % 10 === 0) {
      p.rpush(`${k}:list`, i);
      want.push(i / 10 + 1);
      p.lrange(`${k}:list`, 0, -1);
      want.push(Array.from({ length: i / 10 + 1 }, (_, j) => String(j * 10)));
    }
  }
  p.lpush(`${k}:0`, "wrong type"); // an error reply in the middle
  const errIndex = want.length;
  want.push(undefined);
  p.mget(`${k}:0`, `${k}:59`, `${k}:missing`);
  want.push(["v0", "v59", null]);
  const res = await within(`${label} pipeline of ${want.length}`, p.exec(), 10_000);
  check(`${label} pipeline reply count`, res.length === want.length, `${res.length} replies for ${want.length} commands`);
  for (let i = 0; i < want.length; i++) {
    const [err, value] = res[i];
    if (i === errIndex) {
      check(`${label} pipeline error reply in place`, err && String(err.message).startsWith("WRONGTYPE"), show(res[i]));
      continue;
    }
    if (err || !isDeepStrictEqual(value, want[i])) {
      fail(`${label} pipeline reply ${i}`, `got ${show(res[i])}, expected ${show(want[i])}`);
    }
  }
  check(`${label} pipeline of ${want.length} commands, replies in order`, true);
  // Many commands in flight without an explicit pipeline (one write from ioredis).
  const many = await within(`${label} concurrent`, Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? c.get(`${k}:${i % 60}`) : c.strlen(`${k}:${i % 60}`)))));
  const wantMany = Array.from({ length: 200 }, (_, i) => (i % 2 ? `v${i % 60}` : `v${i % 60}`.length));
  checkEq(`${label} 200 concurrent commands`, many, wantMany);
  c.disconnect();
}

/** MULTI/EXEC, errors inside them, and WATCH. */
async function transactions(label, opts) {
  const k = `${RUN}:${label}:tx`;
  const c1 = await connect(`${label} tx client 1`, opts);
  const c2 = await connect(`${label} tx client 2`, opts);
  checkEq(
    `${label} multi/exec`,
    await within(`${label} multi/exec`, c1.multi().set(`${k}:a`, "1").incr(`${k}:a`).get(`${k}:a`).exec()),
    [[null, "OK"], [null, 2], [null, "2"]],
  );
  const res = await within(`${label} runtime error in exec`, c1.multi().set(`${k}:b`, "x").lpush(`${k}:b`, "y").get(`${k}:b`).exec());
  check(
    `${label} runtime error inside EXEC`,
    res?.length === 3 && res[0][1] === "OK" && String(res[1][0]?.message).startsWith("WRONGTYPE") && res[2][1] === "x",
    show(res),
  );
  const abort = await rejection(`${label} execabort`, c1.multi().set(`${k}:c`, "1").call("SET", `${k}:c`).exec());
  check(`${label} EXECABORT after a queueing error`, String(abort.message).includes("EXECABORT"), abort.message);
  checkEq(`${label} nothing ran after EXECABORT`, await c1.exists(`${k}:c`), 0);
  // DISCARD with an explicit MULTI.
  await within(`${label} multi`, c1.multi({ pipeline: false }));
  checkEq(`${label} queued`, await within(`${label} queued`, c1.set(`${k}:d`, "1")), "QUEUED");
  checkEq(`${label} discard`, await within(`${label} discard`, c1.discard()), "OK");
  checkEq(`${label} nothing ran after DISCARD`, await c1.exists(`${k}:d`), 0);

  // WATCH: another client changes the key between WATCH and EXEC: EXEC answers null.
  await c1.set(`${k}:balance`, "100");
  checkEq(`${label} watch`, await within(`${label} watch`, c1.watch(`${k}:balance`)), "OK");
  const balance = Number(await within(`${label} watched get`, c1.get(`${k}:balance`)));
  checkEq(`${label} read under watch`, balance, 100);
  checkEq(`${label} concurrent change`, await within(`${label} concurrent change`, c2.incrby(`${k}:balance`, 5)), 105);
  checkEq(`${label} watch conflict: EXEC is null`, await within(`${label} watched exec`, c1.multi().set(`${k}:balance`, String(balance - 10)).exec()), null);
  checkEq(`${label} watch conflict: nothing written`, await c2.get(`${k}:balance`), "105");
  // The same flow without a conflict commits.
  await within(`${label} watch again`, c1.watch(`${k}:balance`));
  const b2 = Number(await c1.get(`${k}:balance`));
  checkEq(
    `${label} watch, no conflict: EXEC commits`,
    await within(`${label} watched exec 2`, c1.multi().set(`${k}:balance`, String(b2 - 10)).get(`${k}:balance`).exec()),
    [[null, "OK"], [null, "95"]],
  );
  checkEq(`${label} committed value seen by another client`, await c2.get(`${k}:balance`), "95");
  // UNWATCH forgets the watched key: a later change does not abort.
  await c1.watch(`${k}:balance`);
  checkEq(`${label} unwatch`, await c1.unwatch(), "OK");
  await c2.set(`${k}:balance`, "7");
  checkEq(`${label} exec after unwatch commits`, await within(`${label} exec after unwatch`, c1.multi().incr(`${k}:balance`).exec()), [[null, 8]]);
  c1.disconnect();
  c2.disconnect();
}

/** SUBSCRIBE and PSUBSCRIBE on a dedicated connection, PUBLISH from another. */
async function pubsub(label, opts) {
  const chan = `${RUN}:${label}:news`;
  const pat = `${RUN}:${label}:alerts.*`;
  const sub = await connect(`${label} subscriber`, opts);
  const pub = await connect(`${label} publisher`, opts);
  const inbox = new Inbox(sub);
  checkEq(`${label} subscribe`, await within(`${label} subscribe`, sub.subscribe(chan)), 1);
  checkEq(`${label} psubscribe`, await within(`${label} psubscribe`, sub.psubscribe(pat)), 2);
  // The subscriber's connection is on a replica: PUBLISH on the master reaches it through
  // replication. PUBLISH's count is the master's subscribers only, so it is not checked.
  await within(`${label} publish`, pub.publish(chan, "hello"));
  checkEq(`${label} message`, await inbox.next(`${label} message`), { kind: "message", channel: chan, message: "hello" });
  await within(`${label} publish to pattern`, pub.publish(`${RUN}:${label}:alerts.disk`, "full"));
  checkEq(`${label} pmessage`, await inbox.next(`${label} pmessage`), {
    kind: "pmessage",
    pattern: pat,
    channel: `${RUN}:${label}:alerts.disk`,
    message: "full",
  });
  // Two more, to the channel and to the pattern: each delivered once, in publish order.
  await pub.publish(chan, "second");
  await pub.publish(`${RUN}:${label}:alerts.cpu`, "hot");
  checkEq(`${label} messages in publish order`, [await inbox.next(`${label} second`), await inbox.next(`${label} third`)], [
    { kind: "message", channel: chan, message: "second" },
    { kind: "pmessage", pattern: pat, channel: `${RUN}:${label}:alerts.cpu`, message: "hot" },
  ]);
  checkEq(`${label} unsubscribe`, await within(`${label} unsubscribe`, sub.unsubscribe(chan)), 1);
  checkEq(`${label} punsubscribe`, await within(`${label} punsubscribe`, sub.punsubscribe(pat)), 0);
  // Out of subscriber mode: an ordinary command works again on the same connection.
  checkEq(`${label} command after unsubscribing`, await within(`${label} ping after`, sub.ping()), "PONG");
  checkEq(`${label} no stray messages`, inbox.items, []);
  sub.disconnect();
  pub.disconnect();
}

/** Blocking pops: a timeout, and a pop woken by another client's push. */
async function blocking(label, opts) {
  const k = `${RUN}:${label}:block`;
  const c = await connect(`${label} blocking`, opts);
  let t0 = performance.now();
  const none = await within(`${label} blpop timeout`, c.blpop(`${k}:empty`, 0.2));
  let elapsed = (performance.now() - t0) / 1000;
  checkEq(`${label} blpop timeout answers null`, none, null);
  check(`${label} blpop timeout waited about 0.2 s`, elapsed >= 0.15 && elapsed <= 2, `${elapsed.toFixed(3)} s`);

  const name = `pivot-blocker-${label}-${process.pid}`;
  const blocker = await connect(`${label} blocker`, { ...opts, connectionName: name });
  const pusher = await connect(`${label} pusher`, opts);
  t0 = performance.now();
  const popped = blocker.blpop(`${k}:jobs`, 5);
  // Push once the proxy lists the blocker as blocked (flag b), so that the push wakes it.
  await waitFor(`${label} blocker listed as blocked`, async () => {
    const list = await within(`${label} client list`, pusher.client("LIST"));
    return String(list)
      .split("\n")
      .some((line) => line.includes(` name=${name} `) && /\bflags=\S*b/.test(line));
  });
  checkEq(`${label} lpush to the blocked key`, await within(`${label} lpush`, pusher.lpush(`${k}:jobs`, "job-1")), 1);
  checkEq(`${label} blpop woken by another client`, await within(`${label} blpop woken`, popped, 7000), [`${k}:jobs`, "job-1"]);
  elapsed = (performance.now() - t0) / 1000;
  check(`${label} blpop woken before its timeout`, elapsed < 4.5, `${elapsed.toFixed(3)} s`);
  checkEq(`${label} pushed value consumed`, await pusher.llen(`${k}:jobs`), 0);

  // A blocking pop with data already there, and BLMOVE.
  await c.rpush(`${k}:src`, "a", "b");
  checkEq(`${label} brpop with data`, await within(`${label} brpop`, c.brpop(`${k}:empty`, `${k}:src`, 1)), [`${k}:src`, "b"]);
  checkEq(`${label} blmove`, await within(`${label} blmove`, c.blmove(`${k}:src`, `${k}:dst`, "LEFT", "RIGHT", 1)), "a");
  checkEq(`${label} blmove result`, await c.lrange(`${k}:dst`, 0, -1), ["a"]);
  // The connection is usable after blocking commands.
  checkEq(`${label} command after blocking`, await within(`${label} ping after blocking`, c.ping()), "PONG");
  for (const x of [c, blocker, pusher]) x.disconnect();
}

/** RESP3 replies as RESP3: maps, doubles, and pub/sub messages as push frames. */
async function resp3() {
  const label = "resp3";
  const k = `${RUN}:${label}`;
  const opts = { protocol: 3, replyMapping: "resp3" };
  const c = await connect(`${label} client`, opts);
  const hello = await within(`${label} hello`, c.call("HELLO", "3"));
  check(`${label} HELLO 3 answers a map with proto 3`, !Array.isArray(hello) && hello?.proto === 3, show(hello));
  await c.hset(`${k}:h`, { f: "v", g: "w" });
  // A map reply: a plain object with resp3 mapping (with RESP2 it would be a flat array).
  const map = await within(`${label} hgetall`, c.call("HGETALL", `${k}:h`));
  check(`${label} map reply (HGETALL)`, !Array.isArray(map) && isDeepStrictEqual({ ...map }, { f: "v", g: "w" }), show(map));
  await c.zadd(`${k}:z`, 1.5, "m");
  checkEq(`${label} double reply (ZSCORE)`, await within(`${label} zscore`, c.zscore(`${k}:z`, "m")), 1.5);
  checkEq(`${label} null reply`, await within(`${label} get missing`, c.get(`${k}:missing`)), null);
  checkEq(`${label} transaction`, await within(`${label} multi`, c.multi().set(`${k}:a`, "1").incr(`${k}:a`).exec()), [[null, "OK"], [null, 2]]);

  const sub = await connect(`${label} subscriber`, opts);
  const inbox = new Inbox(sub);
  checkEq(`${label} subscribe`, await within(`${label} subscribe`, sub.subscribe(`${k}:chan`)), 1);
  checkEq(`${label} psubscribe`, await within(`${label} psubscribe`, sub.psubscribe(`${k}:p.*`)), 2);
  await within(`${label} publish`, c.publish(`${k}:chan`, "pushed"));
  checkEq(`${label} push message`, await inbox.next(`${label} push message`), { kind: "message", channel: `${k}:chan`, message: "pushed" });
  await within(`${label} publish to pattern`, c.publish(`${k}:p.x`, "p-pushed"));
  checkEq(`${label} push pmessage`, await inbox.next(`${label} push pmessage`), { kind: "pmessage", pattern: `${k}:p.*`, channel: `${k}:p.x`, message: "p-pushed" });
  // RESP3 allows ordinary commands on a subscribed connection.
  await c.set(`${k}:seen-by-sub`, "yes");
  await waitFor(`${label} command while subscribed`, async () => (await within(`${label} get while subscribed`, sub.get(`${k}:seen-by-sub`))) === "yes");
  check(`${label} command while subscribed`, true);
  checkEq(`${label} unsubscribe`, await within(`${label} unsubscribe`, sub.unsubscribe(`${k}:chan`)), 1);
  checkEq(`${label} punsubscribe`, await within(`${label} punsubscribe`, sub.punsubscribe(`${k}:p.*`)), 0);
  checkEq(`${label} no stray messages`, inbox.items, []);
  sub.disconnect();
  c.disconnect();
}

// ---------------------------------------------------------------------------------------

if (args.user !== undefined) await authChecks();
for (const [label, opts] of [
  ["resp2", { protocol: 2 }],
  ["hello3", {}], // ioredis 6's default: HELLO 3, replies in RESP2 shapes
]) {
  const c = await basics(label, opts);
  // HELLO without a version reports the connection's protocol (a flat array: RESP2 shapes).
  const hello = await within(`${label} hello`, c.call("HELLO"));
  const proto = Array.isArray(hello) ? hello[hello.indexOf("proto") + 1] : undefined;
  checkEq(`${label} protocol in use`, proto, label === "resp2" ? 2 : 3);
  c.disconnect();
  await readYourWrites(label, opts);
  await pipelines(label, opts);
  await transactions(label, opts);
  await pubsub(label, opts);
  await blocking(label, opts);
}
await resp3();

for (const c of clients) c.disconnect();
const errors = clients.flatMap((c) => c.errors).filter((e) => !String(e?.message).includes("Connection is closed"));
check("no unexpected client errors", errors.length === 0, show(errors.map((e) => e.message)));
console.log("all ioredis checks passed");
process.exit(0);
