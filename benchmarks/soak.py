"""Soak test of the live server: N clients streaming for a long time; memory growth and latency over time.

A `LiveServer` runs in this process (its own event loop thread, as `python serve.py` would) with AdaIN on random
weights (the cost of the real network) or any model `serve.py --model` takes; N clients connect over loopback,
each like the page: one frame in flight, a new JPEG as soon as its result comes back. Every `--interval`
seconds the script records the process's resident memory (RSS, from /proc/self/statm), and per interval the
p50/p95 latency (frame sent -> stylized frame received) and frames delivered per client. At the end it prints
the CPU model and a markdown table: one row per interval, then the totals (RSS growth from the end of the
first interval, which excludes warm-up allocations, to the end; frames per client min/max; errors).

    python benchmarks/soak.py                        # 8 clients, 10 minutes, 256 px
    python benchmarks/soak.py --clients 8 --minutes 10 --interval 60 --json soak.json
    python benchmarks/soak.py --minutes 0.33 --interval 5      # a 20-second smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import allocator_note, machine_note, reexec_with_allocator_env  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per table row (default 60)")
    p.add_argument("--size", type=int, default=256, help="frame side (default 256)")
    p.add_argument("--max-batch", type=int, default=None, help="server --max-batch (default as serve.py)")
    p.add_argument("--model", help="a model as serve.py --model takes it (default: AdaIN, random weights)")
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                   help="glibc settings (benchmarks/common.py); default: tuned")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)]


class SoakClient:
    """One frame in flight; records (time received, latency) of every result and counts errors."""

    def __init__(self, session, url: str, frame: bytes):
        self.session, self.url, self.frame = session, url, frame
        self.done: list[tuple[float, float]] = []
        self.errors = 0
        self.disconnects = 0

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        from nst_jax.serve import protocol

        while not stop.is_set():
            try:
                async with self.session.ws_connect(self.url, max_msg_size=0) as ws:
                    seq = 0
                    while not stop.is_set():
                        seq += 1
                        sent = time.perf_counter()
                        await ws.send_bytes(protocol.pack_frame(seq, self.frame))
                        while True:
                            msg = await ws.receive()
                            if msg.type == aiohttp.WSMsgType.BINARY:
                                now = time.perf_counter()
                                self.done.append((now, now - sent))
                                break
                            if msg.type == aiohttp.WSMsgType.TEXT:
                                if json.loads(msg.data).get("type") == "error":
                                    self.errors += 1
                                    break
                                continue
                            raise ConnectionError(f"socket closed: {msg.type}")
            except (ConnectionError, aiohttp.ClientError, TimeoutError):
                self.disconnects += 1
                await asyncio.sleep(0.5)


def main() -> None:
    args = parse_args()
    reexec_with_allocator_env(args.allocator == "tuned")
    import numpy as np

    from nst_jax.serve.app import LiveServer, ServerConfig
    from nst_jax.serve.cli import default_max_batch, random_stylizer
    from nst_jax.serve.styles import StyleLibrary, builtin_patterns, fill_library, fill_table
    from nst_jax.serve.testing import ServerThread, jpeg
    from nst_jax.stylize import Stylizer

    cpu = machine_note()
    print(cpu)
    print(allocator_note())
    model = Stylizer.load_model(args.model) if args.model else random_stylizer(0)
    library = StyleLibrary()
    if model.caps.style_table:
        fill_table(library, model, args.size)
    else:
        fill_library(library, [(n, "builtin", img) for n, img in builtin_patterns(256)], model.condition)
    max_batch = default_max_batch(args.max_batch)
    config = ServerConfig(sizes=(args.size,), size=args.size, style_size=256, max_batch=max_batch,
                          max_clients=max(32, args.clients + 1))
    server = LiveServer(model, library, config)
    server.batcher.warm()
    y, x = np.mgrid[0:args.size, 0:args.size] / args.size
    frames = [jpeg(np.stack([x, y, 0.5 + 0.5 * np.sin((10 + i) * x * y)], -1).astype(np.float32), 85)
              for i in range(args.clients)]
    seconds = args.minutes * 60.0
    rows: list[dict] = []
    print(f"{args.clients} clients, {args.size}x{args.size}, max batch {max_batch}, {args.minutes:g} min, "
          f"rows every {args.interval:g} s; RSS at start {rss_mb():.0f} MB")

    with ServerThread(server, port=0) as st:
        url = st.url.replace("http://", "ws://") + "ws"
        holder: dict = {}

        def clients_thread() -> None:
            async def run() -> None:
                import aiohttp

                stop = asyncio.Event()
                holder["stop"], holder["loop"] = stop, asyncio.get_running_loop()
                async with aiohttp.ClientSession() as session:
                    cs = [SoakClient(session, url, f) for f in frames]
                    holder["clients"] = cs
                    await asyncio.gather(*(c.run(stop) for c in cs))

            asyncio.run(run())

        th = threading.Thread(target=clients_thread, daemon=True)
        t0 = time.perf_counter()
        th.start()
        edge = t0
        while edge - t0 < seconds - 1e-6:
            nxt = min(edge + args.interval, t0 + seconds)
            time.sleep(max(nxt - time.perf_counter(), 0.0))
            cs = holder.get("clients", [])
            lats = [lat for c in cs for (t, lat) in c.done if edge <= t < nxt]
            per_client = [sum(1 for (t, _) in c.done if edge <= t < nxt) for c in cs]
            rows.append({"t_end_s": round(nxt - t0, 1), "rss_mb": round(rss_mb(), 1),
                         "p50_ms": round(1000 * percentile(lats, 0.5), 1),
                         "p95_ms": round(1000 * percentile(lats, 0.95), 1),
                         "fps_total": round(len(lats) / (nxt - edge), 2),
                         "frames_min": min(per_client, default=0), "frames_max": max(per_client, default=0)})
            r = rows[-1]
            print(f"  {r['t_end_s']:7.1f} s  RSS {r['rss_mb']:7.1f} MB  p50 {r['p50_ms']:7.1f} ms  "
                  f"p95 {r['p95_ms']:7.1f} ms  {r['fps_total']:6.2f} fps", flush=True)
            edge = nxt
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        th.join(30)
        cs = holder["clients"]
        snapshot = st.call(server.snapshot)

    per_client = [len(c.done) for c in cs]
    growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"] if len(rows) > 1 else 0.0
    totals = {"clients": args.clients, "size": args.size, "minutes": args.minutes, "max_batch": max_batch,
              "cpu": cpu, "rss_growth_mb": round(growth, 1), "frames_per_client_min": min(per_client),
              "frames_per_client_max": max(per_client), "errors": sum(c.errors for c in cs),
              "disconnects": sum(c.disconnects for c in cs), "server_frames": snapshot["frames"],
              "server_failures": snapshot["failures"]}
    print(f"\n{cpu}\n")
    print("| t (s) | RSS (MB) | p50 (ms) | p95 (ms) | fps (all clients) | frames per client (min-max) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['t_end_s']:.0f} | {r['rss_mb']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['fps_total']:.2f} | {r['frames_min']}-{r['frames_max']} |")
    print(f"\n{args.clients} clients x {args.minutes:g} min at {args.size} px: RSS growth after the first "
          f"interval {growth:+.1f} MB; frames per client {min(per_client)}-{max(per_client)}; "
          f"errors {totals['errors']}, reconnects {totals['disconnects']}, server failures "
          f"{totals['server_failures']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"totals": totals, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
