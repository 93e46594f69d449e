"""Live server throughput: stylized frames per second delivered end to end over loopback WebSockets.

A `LiveServer` runs in this process (its own event loop thread, as `python serve.py` would), warmed for one
frame size; N clients connect over 127.0.0.1 and each behaves like the page: it keeps W frames in flight (a
new JPEG as soon as a result comes back; the page uses W=1, or 2 when model calls are fast), so the server's
latest-frame-wins slots and per-tick batching are what is measured. Reported per (W, client count): frames/s
delivered in total and per client, latency (frame sent -> stylized frame received) p50/p95, the mean batch per
model call and the model's time per call; and, for context, the model alone (`stylize_conditions` at batch 1 and
at --max-batch).

The model is AdaIN on random weights unless --vgg/--decoder are given (the cost is AdaIN's either way), or any
models `serve.py --model` takes, comma-separated, each measured in turn (`multistyle26`: its table is the gallery;
`magenta-arbitrary`: built-in patterns as styles; `adain`: random weights unless pytorch-AdaIN's are cached). For
each model the summary line gives the page's frames per second over the model's own (one client, the page's
window) and the page's median latency in model periods: the live page's goal is >= 95% and < 2.

    python benchmarks/serve.py                          # 256x256, W 1 and 2, 1 and 4 clients, 15 s each
    python benchmarks/serve.py --clients 4 --windows 1 --max-batch 4     # batching on the CPU
    python benchmarks/serve.py --clients 1 2 4 8 --seconds 30 --max-batch 8
    python benchmarks/serve.py --model magenta-arbitrary,multistyle26,adain --clients 1   # the page-vs-model table
    python benchmarks/serve.py --model magenta-arbitrary,multistyle26,adain --quick       # smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import allocator_note, machine_note, reexec_with_allocator_env  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="frame side (default 256)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4],
                   help="client counts to measure (default 1 4)")
    p.add_argument("--seconds", type=float, default=15.0,
                   help="measured seconds per client count (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="server --max-batch (default as serve.py: 1 on CPU, 8 on GPU/TPU)")
    p.add_argument("--windows", type=int, nargs="+", default=None,
                   help="frames in flight per client (default: what the page keeps, 2)")
    p.add_argument("--model", help="models as serve.py --model takes them, comma-separated, each measured in "
                                   "turn (default: AdaIN, random weights)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 client, 3 s measured after 1 s, the page's window")
    p.add_argument("--vgg", help="VGG19 weights (default: random weights, same cost)")
    p.add_argument("--decoder", help="AdaIN decoder (default: random weights, same cost)")
    p.add_argument("--allocator", choices=("tuned", "default"), default="tuned",
                   help="glibc settings (benchmarks/common.py); default: tuned")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args()


class Client:
    """Keeps `window` frames in flight and records each result's latency."""

    def __init__(self, session, url: str, frame: bytes, window: int):
        self.session, self.url, self.frame, self.window = session, url, frame, window
        self.sent: dict[int, float] = {}
        self.latencies: list[tuple[float, float]] = []  # (time received, latency)
        self.errors = 0
        self.forgotten: set[int] = set()
        self.forget_after = 30.0

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        from nst_jax.serve import protocol

        ws = await self.session.ws_connect(self.url, max_msg_size=1 << 24)
        seq = 0

        async def send_one() -> None:
            nonlocal seq
            seq += 1
            self.sent[seq] = time.perf_counter()
            await ws.send_bytes(protocol.pack_frame(seq, self.frame))

        try:
            for _ in range(self.window):
                await send_one()
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=self.forget_after)
                except TimeoutError:
                    # A safety net only: a result answers its frame and every older one (latest frame wins
                    # on the server), so the window refills itself unless a frame was lost entirely.
                    self.forgotten = set(self.sent)
                    for _ in range(self.window):
                        await send_one()
                    continue
                now = time.perf_counter()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    _, rseq, _, _ = protocol.unpack_result(msg.data)
                    t0 = self.sent.get(rseq)
                    if t0 is not None:
                        self.latencies.append((now, now - t0))
                    for s in [s for s in self.sent if s <= rseq]:
                        del self.sent[s]
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    obj = json.loads(msg.data)
                    if obj["type"] == "error":
                        self.errors += 1
                        self.sent.pop(obj.get("seq"), None)
                    else:
                        continue
                else:
                    break
                while len(set(self.sent) - self.forgotten) < self.window:
                    await send_one()
        finally:
            await ws.close()


async def measure(url: str, frame: bytes, n: int, window: int, warmup: float, seconds: float) -> list[Client]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        clients = [Client(session, url, frame, window) for _ in range(n)]
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(c.run(stop)) for c in clients]
        await asyncio.sleep(warmup + seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return clients


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)] if s else float("nan")


def load(name: str | None, args: argparse.Namespace):
    """(model, what it is) for one entry of --model."""
    from nst_jax.models.open import DEFAULT, default_weights_at_hand
    from nst_jax.serve.cli import random_stylizer
    from nst_jax.stylize import Stylizer

    if name == DEFAULT and not (args.vgg or args.decoder) and not default_weights_at_hand():
        return random_stylizer(0), "adain (random weights: AdaIN's are not cached; same cost)"
    if name:
        model = Stylizer.load_model(name)
        return model, f"model {name} ({model.family.name})"
    if args.vgg or args.decoder:
        return Stylizer.load(vgg=args.vgg, decoder=args.decoder), "given weights"
    return random_stylizer(0), "random weights (AdaIN's network)"


def bench(name: str | None, args: argparse.Namespace) -> dict:
    """Measure one model: alone, then through the server; returns its results."""
    import numpy as np

    from nst_jax.serve.app import LiveServer, ServerConfig
    from nst_jax.serve.batcher import stack_conditions
    from nst_jax.serve.cli import default_max_batch
    from nst_jax.serve.styles import StyleLibrary, builtin_patterns, fill_library, fill_table
    from nst_jax.serve.testing import ServerThread, jpeg

    model, weights = load(name, args)
    library = StyleLibrary()
    if model.caps.style_table:
        fill_table(library, model, args.size)
    else:
        fill_library(library, [(n, "builtin", img) for n, img in builtin_patterns(256)], model.condition)
    max_batch = default_max_batch(args.max_batch)
    config = ServerConfig(sizes=(args.size,), size=args.size, style_size=256, max_batch=max_batch)
    server = LiveServer(model, library, config)
    t0 = time.perf_counter()
    server.batcher.warm()
    print(f"\n{weights}; {args.size}x{args.size} frames; max batch {max_batch}; "
          f"warm-up compile {time.perf_counter() - t0:.1f} s")

    # The model alone: what the server could deliver if frames cost nothing else (the program the server runs).
    condition = library.get(library.first_id()).condition
    model_only = {}
    for b in sorted({1, max_batch}):
        x = np.random.default_rng(0).random((b, args.size, args.size, 3), dtype=np.float32)
        batch = stack_conditions([condition], b)
        alpha = np.ones((b,), np.float32)
        times = []
        for _ in range(4 if args.quick else 8):
            t = time.perf_counter()
            np.asarray(server.batcher._program(x, batch, alpha))
            times.append(time.perf_counter() - t)
        med = statistics.median(times[1:])
        model_only[b] = {"ms_per_call": 1000 * med, "frames_per_s": b / med}
        print(f"model alone, batch {b}: {1000 * med:.1f} ms per call = {b / med:.2f} frames/s")

    page_window = FRAMES_IN_FLIGHT
    windows = args.windows or [page_window]
    y, xg = np.mgrid[0:args.size, 0:args.size] / args.size
    content = np.stack([xg, y, 0.5 + 0.5 * np.sin(20 * xg * y)], -1).astype(np.float32)
    frame = jpeg(content, quality=85)
    results = []
    with ServerThread(server, port=0) as st_thread:
        url = st_thread.url.replace("http://", "ws://") + "ws"
        print(f"{'window':>6}  {'clients':>7}  {'total fps':>9}  {'per client':>15}  {'p50 ms':>7}  "
              f"{'p95 ms':>7}  {'batch':>5}  {'model ms':>8}")
        for window, n in [(w, n) for w in windows for n in args.clients]:
            counters = lambda: (server.batcher.stats.frames, server.batcher.stats.calls,  # noqa: E731
                                server.batcher.stats.model_seconds)
            before = st_thread.call(counters)
            t_start = time.perf_counter()
            holder: dict = {}

            def run(n=n, window=window, holder=holder) -> None:
                holder["clients"] = asyncio.run(measure(url, frame, n, window, args.warmup, args.seconds))

            th = threading.Thread(target=run)
            th.start()
            th.join()
            after = st_thread.call(counters)
            t_measure = t_start + args.warmup
            per_client = []
            lats = []
            for c in holder["clients"]:
                done = [(t, lat) for t, lat in c.latencies if t >= t_measure]
                per_client.append(len(done) / args.seconds)
                lats += [lat for _, lat in done]
            calls = after[1] - before[1]
            frames = after[0] - before[0]
            row = {"window": window, "clients": n, "total_fps": sum(per_client), "per_client_fps": per_client,
                   "latency_p50_ms": 1000 * percentile(lats, 0.5),
                   "latency_p95_ms": 1000 * percentile(lats, 0.95),
                   "mean_batch": frames / calls if calls else 0.0,
                   "model_ms_per_call": 1000 * (after[2] - before[2]) / calls if calls else 0.0,
                   "errors": sum(c.errors for c in holder["clients"])}
            results.append(row)
            print(f"{window:6d}  {n:7d}  {row['total_fps']:9.2f}  "
                  f"{min(per_client):6.2f} - {max(per_client):6.2f}  {row['latency_p50_ms']:7.0f}  "
                  f"{row['latency_p95_ms']:7.0f}  {row['mean_batch']:5.2f}  {row['model_ms_per_call']:8.0f}")
    out = {"model": name or "adain", "weights": weights, "max_batch": max_batch, "model_only": model_only,
           "results": results}
    page = next((r for r in results if r["clients"] == 1 and r["window"] == page_window), None)
    if page is not None:
        alone = model_only[1]
        out["page_ratio"] = page["total_fps"] / alone["frames_per_s"]
        out["latency_periods"] = page["latency_p50_ms"] / alone["ms_per_call"]
        print(f"page vs model ({name or 'adain'}, 1 client, window {page_window}): {page['total_fps']:.1f} / "
              f"{alone['frames_per_s']:.1f} frames/s = {100 * out['page_ratio']:.0f}%, latency p50 "
              f"{page['latency_p50_ms']:.0f} ms = {out['latency_periods']:.2f} model periods")
    return out


# The page keeps two frames in flight (static/app.js, FRAMES_IN_FLIGHT).
FRAMES_IN_FLIGHT = 2


def main() -> None:
    args = parse_args()
    if args.quick:
        args.clients, args.seconds, args.warmup = [1], 3.0, 1.0
    reexec_with_allocator_env(args.allocator == "tuned")
    print(machine_note())
    print(allocator_note())
    names = [n.strip() for n in args.model.split(",")] if args.model else [None]
    runs = [bench(name, args) for name in names]
    print(f"\n{machine_note()}")
    for r in runs:
        if "page_ratio" in r:
            print(f"  {r['model']:>18}: page {100 * r['page_ratio']:.0f}% of the model's frames/s, latency "
                  f"{r['latency_periods']:.2f} model periods")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "machine": machine_note(),
                                               "allocator": allocator_note(), "models": runs}, indent=2))


if __name__ == "__main__":
    main()
