"""Live server throughput: stylized frames per second delivered end to end over loopback WebSockets.

A `LiveServer` runs in this process (its own event loop thread, as `python serve.py` would), warmed for one
frame size; N clients connect over 127.0.0.1 and each behaves like the page: it keeps W frames in flight (a
new JPEG as soon as a result comes back; the page uses W=1, or 2 when model calls are fast), so the server's
latest-frame-wins slots and per-tick batching are what is measured. Reported per (W, client count): frames/s
delivered in total and per client, latency (frame sent -> stylized frame received) p50/p95, the mean batch per
model call and the model's time per call; and, for context, the model alone (`stylize_conditions` at batch 1 and
at --max-batch).

The model is AdaIN on random weights unless --vgg/--decoder are given (the cost is AdaIN's either way), or any
model `serve.py --model` takes (`multistyle26`: its table is the gallery; `magenta-arbitrary`: built-in patterns
as styles).

    python benchmarks/serve.py                          # 256x256, W 1 and 2, 1 and 4 clients, 15 s each
    python benchmarks/serve.py --clients 4 --windows 1 --max-batch 4     # batching on the CPU
    python benchmarks/serve.py --clients 1 2 4 8 --seconds 30 --max-batch 8
    python benchmarks/serve.py --model multistyle26 --clients 1     # the CIN network, real weights
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
    p.add_argument("--windows", type=int, nargs="+", default=[1, 2],
                   help="frames in flight per client (the page keeps 1, or 2 when model calls take < 30 ms; "
                        "default 1 2)")
    p.add_argument("--model", help="a model as serve.py --model takes it (default: AdaIN)")
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
                except asyncio.TimeoutError:
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


def main() -> None:
    args = parse_args()
    reexec_with_allocator_env(args.allocator == "tuned")
    import numpy as np

    from nst_jax.serve.app import LiveServer, ServerConfig
    from nst_jax.serve.batcher import stack_conditions
    from nst_jax.serve.cli import random_stylizer
    from nst_jax.serve.styles import StyleLibrary, builtin_patterns, fill_library, fill_table
    from nst_jax.serve.testing import ServerThread, jpeg

    print(machine_note())
    print(allocator_note())
    from nst_jax.stylize import Stylizer

    if args.model:
        model = Stylizer.load_model(args.model)
        weights = f"model {args.model} ({model.family.name})"
    elif args.vgg or args.decoder:

        model = Stylizer.load(vgg=args.vgg, decoder=args.decoder)
        weights = "given weights"
    else:
        model = random_stylizer(0)
        weights = "random weights (AdaIN's network)"
    library = StyleLibrary()
    if model.caps.style_table:
        fill_table(library, model, args.size)
    else:
        fill_library(library, [(n, "builtin", img) for n, img in builtin_patterns(256)], model.condition)
    from nst_jax.serve.cli import default_max_batch

    args.max_batch = default_max_batch(args.max_batch)
    config = ServerConfig(sizes=(args.size,), size=args.size, style_size=256, max_batch=args.max_batch)
    server = LiveServer(model, library, config)
    t0 = time.perf_counter()
    server.batcher.warm()
    print(f"{weights}; {args.size}x{args.size} frames; max batch {args.max_batch}; "
          f"warm-up compile {time.perf_counter() - t0:.1f} s")

    # The model alone, for context: what the server could deliver if frames cost nothing else.
    condition = library.get(library.first_id()).condition
    model_only = {}
    for b in sorted({1, args.max_batch}):
        x = np.random.default_rng(0).random((b, args.size, args.size, 3), dtype=np.float32)
        batch = stack_conditions([condition], b)
        alpha = np.ones((b,), np.float32)
        times = []
        for _ in range(6):
            t = time.perf_counter()
            np.asarray(model.stylize_conditions(x, batch, alpha))
            times.append(time.perf_counter() - t)
        med = statistics.median(times[1:])
        model_only[b] = {"ms_per_call": 1000 * med, "frames_per_s": b / med}
        print(f"model alone, batch {b}: {1000 * med:.0f} ms per call = {b / med:.2f} frames/s")

    y, xg = np.mgrid[0:args.size, 0:args.size] / args.size
    content = np.stack([xg, y, 0.5 + 0.5 * np.sin(20 * xg * y)], -1).astype(np.float32)
    frame = jpeg(content, quality=85)
    results = []
    with ServerThread(server, port=0) as st_thread:
        url = st_thread.url.replace("http://", "ws://") + "ws"
        print(f"\n{'window':>6}  {'clients':>7}  {'total fps':>9}  {'per client':>15}  {'p50 ms':>7}  "
              f"{'p95 ms':>7}  {'batch':>5}  {'model ms':>8}")
        for window, n in [(w, n) for w in args.windows for n in args.clients]:
            before = st_thread.call(lambda: (server.batcher.stats.frames, server.batcher.stats.calls,
                                             server.batcher.stats.model_seconds))
            t_start = time.perf_counter()
            holder: dict = {}

            def run(n=n, window=window, holder=holder) -> None:
                holder["clients"] = asyncio.run(measure(url, frame, n, window, args.warmup, args.seconds))

            th = threading.Thread(target=run)
            th.start()
            th.join()
            after = st_thread.call(lambda: (server.batcher.stats.frames, server.batcher.stats.calls,
                                            server.batcher.stats.model_seconds))
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
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "max_batch": args.max_batch,
                                               "machine": machine_note(), "allocator": allocator_note(),
                                               "model_only": model_only, "results": results}, indent=2))


if __name__ == "__main__":
    main()
