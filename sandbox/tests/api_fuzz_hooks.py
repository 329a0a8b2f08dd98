"""schemathesis hooks for sandbox/tests/api_fuzz.rs.

Registering a service (POST /api/v1/services, PATCH /api/v1/services/{name}) makes the
control plane connect to the Sentinel addresses it names. The fuzzer must only ever make
it connect to this machine, so every generated Sentinel address the control plane would
accept (and so dial) is moved to 127.0.0.1 before the request is sent, whatever the phase.
Addresses it would refuse are left alone: they exercise its validation and go nowhere.
"""

import ipaddress

import schemathesis


def _node_addr(value):
    """(host, port) for anything that might pass as HOST:PORT: looser than the control
    plane on purpose (any host text), since a wider match only moves more to loopback."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        return None
    host = host.lstrip("[").rstrip("]")
    try:
        port = int(port)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return host, port


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _confine(value):
    if isinstance(value, str):
        addr = _node_addr(value)
        if addr is not None and not _is_loopback(addr[0]):
            return f"127.0.0.1:{addr[1]}"
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("sentinels"), list):
        body["sentinels"] = [_confine(v) for v in body["sentinels"]]
