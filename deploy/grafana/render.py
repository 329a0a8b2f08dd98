#!/usr/bin/env python3
"""Renders deploy/grafana/pivot.json to a PNG from a real Prometheus, without Grafana.

Every panel's queries are evaluated with Prometheus's HTTP API (`/api/v1/query_range`)
over a time window, with Grafana's `$__rate_interval` and `$__range` filled in, and drawn
where the panel's `gridPos` puts it (24 columns; a row of height 1 is about 30 px in
Grafana). Time series panels become line charts with their legend formats, stat panels
show their last value. It is a rendering of the dashboard's queries, not a Grafana
screenshot: colours, fonts and units are approximations.

docs/img/grafana-dashboard.png was made like this (see docs/operations.md):

    cargo build --release -p pivot-sandbox -p pivot-control-plane
    # the local stack on spare ports: proxies 16379/16380 (admin 19121/19122),
    # control plane 18080 (HTTP) / 15051 (gRPC)
    pivot-sandbox --http-listen 127.0.0.1:18080 --grpc-listen 127.0.0.1:15051 \\
        --proxy-listen 127.0.0.1:16379,127.0.0.1:16380 \\
        --proxy-admin-listen 127.0.0.1:19121,127.0.0.1:19122 --data-dir /tmp/render/data
    # Prometheus (Debian's package, 2.42) scraping it every 2 s, with the jobs named as in
    # deploy/prometheus/: job pivot-control-plane -> 127.0.0.1:18080, job pivot-proxy ->
    # 127.0.0.1:19121 and 127.0.0.1:19122 (static_configs)
    prometheus --config.file=/tmp/render/prom.yml --storage.tsdb.path=/tmp/render/prom-data \\
        --web.listen-address=127.0.0.1:19090
    # load through both proxies
    redis-benchmark -p 16379 -t set,get -n 100000000 -c 8 -q -l -r 10000 &
    redis-benchmark -p 16380 -t get,incr -n 100000000 -c 4 -q -l -r 10000 &
    # a policy change (a new config version), then, a minute later, a failover:
    curl -H "Authorization: Bearer $TOKEN" -X PATCH -H 'Content-Type: application/json' \\
        -d '{"read_policy":"all"}' http://127.0.0.1:18080/api/v1/services/mymaster/policy
    kill -STOP <master pid>; sleep 8; kill -CONT <master pid>
    # (the first redis-benchmark exits on the error of its write in flight at the
    # freeze, I4; it was started again after the failover), and a second failover with
    # new clients writing meanwhile, so that some writes are held:
    kill -STOP <new master pid>; sleep 0.6
    for i in $(seq 20); do redis-cli -p 16380 set held-$i v & sleep 0.25; done
    sleep 6; kill -CONT <new master pid>
    deploy/grafana/render.py --prometheus http://127.0.0.1:19090 --minutes 5 \\
        --out docs/img/grafana-dashboard.png

Needs matplotlib (pip install matplotlib==3.9.2).
"""

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT_PX = 30  # Grafana's height of one grid row
COLUMN_PX = 56  # width of one of the 24 columns, for a 1344 px wide dashboard


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def fill(expr, rate_interval, range_):
    return expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)


def fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1000:.2f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "ops":
        return f"{v / 1000:.1f} k/s" if v >= 1000 else f"{v:.3g}/s"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=str(ROOT / "deploy/grafana/pivot.json"))
    ap.add_argument("--minutes", type=float, default=10, help="window ending now")
    ap.add_argument("--end", type=float, help="window end (Unix time; default now)")
    ap.add_argument("--step", default="2s")
    ap.add_argument("--rate-interval", default="10s", help="what $__rate_interval becomes")
    ap.add_argument("--out", default=str(ROOT / "docs/img/grafana-dashboard.png"))
    args = ap.parse_args()

    dash = json.loads(Path(args.dashboard).read_text())
    end = args.end or time.time()
    start = end - args.minutes * 60
    range_ = f"{int(args.minutes * 60)}s"
    panels = dash["panels"]
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_px, height_px = 24 * COLUMN_PX, height_units * UNIT_PX + 40
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="#111217")
    window = (f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M:%S} to "
              f"{datetime.fromtimestamp(end, timezone.utc):%H:%M:%S} UTC")
    fig.text(0.005, 1 - 14 / height_px,
             f"{dash['title']}: the dashboard's queries rendered from Prometheus "
             f"(not a Grafana screenshot), {window}",
             color="#ccccdc", fontsize=10, va="center")
    top = 40

    def rect(g, left=4, right=4, top_=4, bottom=4):
        """Figure coordinates of a panel's box, shrunk by margins in pixels."""
        x0 = (g["x"] * COLUMN_PX + left) / width_px
        w = (g["w"] * COLUMN_PX - left - right) / width_px
        y1 = (top + g["y"] * UNIT_PX + top_) / height_px
        h = (g["h"] * UNIT_PX - top_ - bottom) / height_px
        return [x0, 1 - y1 - h, w, h]

    t0 = datetime.fromtimestamp(start, timezone.utc)
    t1 = datetime.fromtimestamp(end, timezone.utc)
    empty = []
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            r = rect(g)
            fig.text(r[0], r[1] + r[3] / 2, p["title"], color="#ccccdc",
                     fontsize=11, weight="bold", va="center")
            continue
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        # The panel: a frame with its title inside, then the plot inside the frame.
        frame = fig.add_axes(rect(g), facecolor="#181b1f")
        frame.set_xticks([])
        frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color("#2c3235")
        frame.text(0.01, 1 - 6 / (g["h"] * UNIT_PX), p["title"], color="#ccccdc",
                   fontsize=9, va="top", ha="left", transform=frame.transAxes)
        series = []
        for t in p["targets"]:
            for r in query_range(args.prometheus, fill(t["expr"], args.rate_interval, range_),
                                 start, end, args.step):
                xs = [datetime.fromtimestamp(float(ts), timezone.utc) for ts, _ in r["values"]]
                ys = [float(v) for _, v in r["values"]]
                series.append((legend(t.get("legendFormat"), r["metric"]), xs, ys))
        if not any(any(y == y for y in ys) for _, _, ys in series):  # all NaN counts as none
            empty.append(p["title"])
        if p["type"] == "stat":
            ax = fig.add_axes(rect(g, top_=24), facecolor="none")
            ax.axis("off")
            last = series[0][2][-1] if series and series[0][2] else None
            ax.text(0.5, 0.55, fmt_value(last, unit), color="#73bf69", fontsize=20,
                    ha="center", va="center", transform=ax.transAxes, weight="bold")
            if series:
                ax2 = ax.inset_axes([0, 0, 1, 0.3])
                ax2.plot(series[0][1], series[0][2], color="#73bf69", linewidth=1, alpha=0.6)
                ax2.set_xlim(t0, t1)
                ax2.axis("off")
            continue
        ax = fig.add_axes(rect(g, left=52, right=10, top_=24, bottom=22), facecolor="#181b1f")
        for s in ax.spines.values():
            s.set_color("#2c3235")
        ax.tick_params(colors="#8e8e9e", labelsize=7)
        for name, xs, ys in series:
            ax.plot(xs, ys, linewidth=1.1, label=name)
        ax.set_xlim(t0, t1)
        locator = mdates.AutoDateLocator(minticks=4, maxticks=8, tz=timezone.utc)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.DateFormatter(
            "%H:%M:%S" if args.minutes <= 15 else "%H:%M", tz=timezone.utc))
        ax.grid(color="#2c3235", linewidth=0.5)
        if unit in ("s", "ops"):
            ax.yaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda v, _, u=unit: fmt_value(v, u)))
        if series:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235",
                      labelcolor="#ccccdc", ncol=2 if len(series) > 4 else 1, framealpha=0.8)
        if p["title"] in empty:
            ax.text(0.5, 0.5, "no data in this window", color="#8e8e9e", ha="center",
                    va="center", transform=ax.transAxes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=dpi, facecolor=fig.get_facecolor())
    print(f"wrote {args.out} ({width_px}x{height_px}); panels without data: {empty or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
