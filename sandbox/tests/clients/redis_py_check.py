"""redis-py against a Pivot proxy: what applications do with it, checked end to end.

Run by sandbox/tests/clients.rs with the proxy's port; exits non-zero on the first
failure, with the check's name. Replica reads are on (the proxy's default policy).

With --user NAME --password PASS the proxy must require them: a connection without
credentials gets NOAUTH, wrong ones get WRONGPASS, and every other check runs
authenticated.
"""

import argparse
import sys
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {name}")


def error_text(e):
    """The server's error line: redis-py moves a known code (NOAUTH, WRONGPASS) to status_code."""
    code = getattr(e, "status_code", None)
    return f"{code} {e}" if code else str(e)


def check_refused(name, code, **opts):
    """A client with `opts` (no retries) has its first command refused with `code`."""
    try:
        got = redis.Redis(retry=Retry(NoBackoff(), 0), **opts).get("auth:probe")
        check(name, False, f"no error, got {got!r}")
    except redis.RedisError as e:
        check(name, code in error_text(e), error_text(e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")
    opts = dict(host="127.0.0.1", port=args.port, socket_timeout=10, decode_responses=True)
    if args.user is not None:
        # Without credentials (redis-py's default handshake is HELLO 3), and with RESP2.
        check_refused("noauth", "NOAUTH", **opts)
        check_refused("noauth (RESP2)", "NOAUTH", protocol=2, **opts)
        check_refused("wrongpass", "WRONGPASS", username=args.user, password=args.password + "-wrong", **opts)
        check_refused(
            "wrongpass (RESP2)", "WRONGPASS", protocol=2, username=args.user, password=args.password + "-wrong", **opts
        )
        opts.update(username=args.user, password=args.password)
    r = redis.Redis(**opts)

    # Plain commands and a pipeline without a transaction.
    r.flushall()
    check("ping", r.ping() is True)
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p:{i}", i)
        pipe.incr("p:count")
    results = pipe.execute()
    check("pipeline replies", results[1::2] == list(range(1, 501)), results[:6])
    check("pipeline read back", r.mget([f"p:{i}" for i in range(0, 500, 50)]) == [str(i) for i in range(0, 500, 50)])

    # A transaction with WATCH, retried on conflict, as the redis-py docs show it.
    r.set("balance", 100)
    conflicts = 0

    def transfer(pipe):
        nonlocal conflicts
        balance = int(pipe.get("balance"))
        if conflicts == 0:
            # Another client changes the key between WATCH and EXEC, once.
            redis.Redis(**opts).incr("balance", 5)
            conflicts += 1
        pipe.multi()
        pipe.set("balance", balance - 10)

    r.transaction(transfer, "balance")
    check("watch conflict retried", conflicts == 1 and r.get("balance") == "95", r.get("balance"))
    with r.pipeline(transaction=True) as tx:
        tx.incr("tx:a").incr("tx:a").get("tx:a")
        check("multi/exec", tx.execute() == [1, 2, "2"])
    try:
        with r.pipeline(transaction=True) as tx:
            tx.set("tx:b", "x").lpush("tx:b", "y")
            tx.execute()
        check("runtime error inside EXEC", False, "no error raised")
    except redis.ResponseError as e:
        check("runtime error inside EXEC", "WRONGTYPE" in str(e), str(e))

    # Blocking pops: a timeout, and a pop woken by another client.
    started = time.monotonic()
    check("blpop timeout", r.blpop("empty", timeout=0.3) is None)
    check("blpop waited", time.monotonic() - started >= 0.29)
    pusher = threading.Timer(0.2, lambda: redis.Redis(**opts).rpush("jobs", "job-1"))
    pusher.start()
    check("blpop woken", r.blpop("jobs", timeout=5) == ("jobs", "job-1"))
    pusher.join()
    r.rpush("src", "a", "b")
    check("blmove", r.blmove("src", "dst", 1, "LEFT", "RIGHT") == "a")

    # Pub/Sub with channels and patterns.
    p = r.pubsub()
    p.subscribe("news")
    p.psubscribe("alerts.*")
    confirmations = [p.get_message(timeout=5) for _ in range(2)]
    check("subscribe confirmations", [m["type"] for m in confirmations] == ["subscribe", "psubscribe"], confirmations)
    publisher = redis.Redis(**opts)
    # The subscriber may be on a replica: publish until it is counted there.
    deadline = time.monotonic() + 10
    got = None
    while got is None and time.monotonic() < deadline:
        publisher.publish("news", "hello")
        got = p.get_message(timeout=0.2)
    check("message", got is not None and got["type"] == "message" and got["data"] == "hello", got)
    publisher.publish("alerts.disk", "full")
    m = p.get_message(timeout=5)
    while m is not None and m["type"] == "message":  # extra warm-up copies
        m = p.get_message(timeout=5)
    check("pmessage", m is not None and m["type"] == "pmessage" and m["channel"] == "alerts.disk", m)
    p.punsubscribe()
    p.unsubscribe()
    p.close()

    # RESP3.
    r3 = redis.Redis(protocol=3, **opts)
    r3.hset("h3", mapping={"f": "v"})
    check("resp3 map", r3.hgetall("h3") == {"f": "v"})
    check("resp3 null", r3.get("missing") is None)
    with r3.pipeline(transaction=True) as tx:
        tx.set("r3:a", 1).incr("r3:a")
        check("resp3 transaction", tx.execute() == [True, 2])
    p3 = r3.pubsub()
    p3.subscribe("r3chan")
    first = p3.get_message(timeout=5)
    check("resp3 subscribe", first is not None and first["type"] == "subscribe", first)
    deadline = time.monotonic() + 10
    got = None
    while got is None and time.monotonic() < deadline:
        publisher.publish("r3chan", "hi")
        got = p3.get_message(timeout=0.2)
    check("resp3 message", got is not None and got["data"] == "hi", got)
    p3.close()

    # SELECT through a pool of connections bound to a database.
    r5 = redis.Redis(db=5, **opts)
    r5.set("in5", "yes")
    check("select", r5.get("in5") == "yes" and r.get("in5") is None)
    print("all redis-py checks passed")


if __name__ == "__main__":
    main()
