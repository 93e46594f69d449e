"""AdaIN training step: nst-jax's jitted train step against pytorch-AdaIN's step in plain PyTorch (CPU).

Both sides get the same random VGG19 (AdaIN's vgg_normalised identity: 1x1 preprocessing conv, reflection
padding, ceil-mode pools; activations kept O(1) as the released weights' are), the same decoder initialisation
and the same batch (8 content + 8 style images at 256 px by default, the recipe's). One step is the whole of
it: encode content and style, AdaIN, decode, encode the output, the content and style losses, the backward
pass and an Adam update (pytorch-AdaIN's train.py loop body; ours is `nst_jax.train.make_train_step`, with its
donated state and non-finite guard). Data loading is not timed.

Each contender runs in its own worker process (so one framework's idle, spinning thread pool never competes
with the other's step), all under the same allocator settings (benchmarks/common.py's environment plus
`nst_jax.runtime.tune_allocator()`, which train.py applies on CPU), driven round-robin one step at a time.
PyTorch runs NCHW (pytorch-AdaIN's layout) and channels_last; the ratio is taken against the faster of the two
in each round. Our compile time and every contender's first step are reported apart. The LAST line is the
median over rounds of (ours / best PyTorch) step time.

    python benchmarks/train.py                       # batch 8, 256 px, 5 rounds
    python benchmarks/train.py --batch 2 --size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the plain-PyTorch reference network lives with the tests

from benchmarks.common import (  # noqa: E402
    ALLOCATOR_ENV,
    SubprocessTimer,
    allocator_note,
    interleave_subprocesses,
    machine_note,
    reexec_with_allocator_env,
    serve_timer,
    summarize,
)


def step_flops(size: int, batch: int) -> float:
    """FLOPs of one training step: forward 3 encoder passes + decoder, backward ~1 encoder + 2 decoders."""
    from nst_jax.models.adain import flops
    from nst_jax.vgg import SPECS

    spec = SPECS["adain"]
    both, one = flops(size, size, spec, True), flops(size, size, spec, False)
    enc = both - one
    dec = one - enc
    return batch * (4 * enc + 3 * dec)


def _models():
    """The shared random weights: pytorch-AdaIN's modules and the same numbers as nst-jax trees."""
    import numpy as np
    import torch

    import adain_reference as R
    from nst_jax import vgg
    from nst_jax.models import decoder

    vgg_t, dec_t = R.random_models(seed=0)
    with torch.no_grad():
        vgg_t[0].weight /= 255.0  # O(1) activations, as the released vgg_normalised (and no denormals)
        vgg_t[0].bias /= 255.0
    encoder = R.encoder_to_relu4_1(vgg_t)
    convs = [m for m in encoder if isinstance(m, torch.nn.Conv2d)]
    names = ["conv0"] + [n for n, _, _ in vgg.CONVS][: len(convs) - 1]

    def to_np(conv):
        return {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
                "bias": conv.bias.detach().numpy().copy()}

    vgg_params = {n: to_np(m) for n, m in zip(names, convs, strict=True)}
    dec_params = {n: to_np(dec_t[i]) for n, i in decoder.TORCH_INDEX.items()}
    return encoder, dec_t, vgg_params, dec_params, np


def _batch(np, b: int, s: int):
    rng = np.random.default_rng(0)
    return rng.random((b, s, s, 3), dtype=np.float32), rng.random((b, s, s, 3), dtype=np.float32)


def worker_ours(b: int, s: int) -> None:
    """Serve our jitted train step (compiled first; the compile time goes into the ready note)."""
    from nst_jax.runtime import tune_allocator

    tune_allocator()
    import dataclasses

    import jax
    import jax.numpy as jnp

    from configs import adain as adain_config
    from nst_jax import train, training, vgg
    from nst_jax.models import adain

    _, _, vgg_params, dec_params, np = _models()
    content, style = _batch(np, b, s)
    config = adain_config.get_config()
    tx = train.make_optimizer(config)
    mesh = train.make_mesh()
    lc = dataclasses.replace(adain.LossConfig.from_config(config), spec=vgg.SPECS["adain"])
    step = train.make_train_step(tx, adain.loss_fn, lc, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    dec_params = jax.tree.map(jnp.asarray, dec_params)
    state = jax.device_put(train.TrainState(jnp.zeros((), jnp.int32), dec_params, tx.init(dec_params)),
                           replicated)
    frozen = {"vgg": jax.device_put(jax.tree.map(jnp.asarray, vgg_params), replicated)}
    batch = {"content": jax.device_put(content, batch_sh), "style": jax.device_put(style, batch_sh)}
    t0 = time.perf_counter()
    compiled = step.lower(state, frozen, batch, None).compile(compiler_options=training.compiler_options())
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        new, metrics = compiled(holder["state"], frozen, batch, None)
        holder["state"] = new
        jax.block_until_ready((new, metrics))

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    serve_timer(run, f"compile {compile_s:.1f} s, first step {first:.1f} s, jax {jax.__version__}")


def worker_torch(b: int, s: int, fmt: str) -> None:
    """Serve pytorch-AdaIN's train.py loop body (net.Net forward, losses, backward, Adam with lr decay)."""
    import torch
    from torch.nn import functional as F

    import adain_reference as R
    from configs import adain as adain_config

    torch.set_num_threads(os.cpu_count() or 1)
    encoder, dec_t, _, _, np = _models()
    content, style = _batch(np, b, s)
    config = adain_config.get_config()
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    layers = list(encoder.children())
    enc = [torch.nn.Sequential(*p).to(memory_format=mf)
           for p in (layers[:4], layers[4:11], layers[11:18], layers[18:31])]
    for e in enc:
        for p in e.parameters():
            p.requires_grad = False
    dec = dec_t.train().to(memory_format=mf)
    opt = torch.optim.Adam(dec.parameters(), lr=config.learning_rate)
    ct = torch.from_numpy(content.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=mf)
    st = torch.from_numpy(style.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=mf)
    it = {"i": 0}

    def feats(x):
        out = []
        for e in enc:
            x = e(x)
            out.append(x)
        return out

    def style_loss(x, y):
        xm, xs = R.calc_mean_std(x)
        ym, ys = R.calc_mean_std(y)
        return F.mse_loss(xm, ym) + F.mse_loss(xs, ys)

    def run():
        for group in opt.param_groups:
            group["lr"] = config.learning_rate / (1.0 + config.lr_decay * it["i"])
        style_feats = feats(st)
        content_feat = feats(ct)[-1]
        t = R.adaptive_instance_normalization(content_feat, style_feats[-1])
        g_feats = feats(dec(t))
        loss_c = F.mse_loss(g_feats[-1], t)
        loss_s = sum(style_loss(g, y) for g, y in zip(g_feats, style_feats, strict=True))
        loss = config.content_weight * loss_c + config.style_weight * loss_s
        opt.zero_grad()
        loss.backward()
        opt.step()
        it["i"] += 1

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    serve_timer(run, f"first step {first:.1f} s, torch {torch.__version__}, {torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--budget-s", type=float, default=900.0, help="stop after this long (>= 3 rounds)")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    parser.add_argument("--torch-formats", nargs="+", choices=("nchw", "channels_last"),
                        default=["nchw", "channels_last"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    b, s = args.batch, args.size
    if args.worker:
        if args.worker == "ours":
            worker_ours(b, s)
        else:
            worker_torch(b, s, args.worker.removeprefix("torch-"))
        return
    reexec_with_allocator_env(args.allocator == "tuned")
    print(machine_note())
    print(allocator_note() + (" + nst_jax.runtime.tune_allocator() in our worker"
                              if args.allocator == "tuned" else ""))
    print(f"AdaIN training step: batch {b} content + {b} style at {s} px, Adam; "
          f"~{step_flops(s, b) / 1e9:.0f} GFLOP per step; each contender in its own process")
    env = dict(os.environ)
    if args.allocator == "default":
        env["NST_JAX_MALLOC"] = "default"
        for k in ALLOCATOR_ENV:
            env.pop(k, None)
    base = [sys.executable, str(Path(__file__).resolve()), "--batch", str(b), "--size", str(s), "--worker"]
    names = ["ours"] + [f"torch {f}" for f in args.torch_formats]
    timers = {}
    try:
        for name in names:
            timers[name] = SubprocessTimer(base + [name.replace(" ", "-")], env)
            print(f"{name}: {timers[name].note}", flush=True)
        cpu: dict[str, list[float]] = {}
        times = interleave_subprocesses(timers, repeats=args.repeats, warmup=0, budget_s=args.budget_s,
                                        cpu_times=cpu)
    finally:
        for t in timers.values():
            t.close()
    print(summarize(times, unit=1.0, unit_name="s "))
    flops = step_flops(s, b)
    for name, xs in times.items():
        med = statistics.median(xs)
        print(f"{name:20s} {1 / med:6.3f} steps/s  {b / med:6.2f} images/s  "
              f"{flops / med / 1e9:6.1f} GFLOP/s  (CPU time {statistics.median(cpu[name]):.1f} s per step)")
    torch_names = [n for n in times if n != "ours"]
    best = [min(times[n][i] for n in torch_names) for i in range(len(times["ours"]))]
    ratio = statistics.median(o / t for o, t in zip(times["ours"], best, strict=True))
    print(f"median ratio ours / best PyTorch (step time, batch {b}, {s} px): {ratio:.3f}")


if __name__ == "__main__":
    main()
