"""AdaIN training step: nst-jax's jitted train step against pytorch-AdaIN's step in plain PyTorch (CPU).

Both sides get the same random VGG19 (AdaIN's vgg_normalised identity: 1x1 preprocessing conv, reflection
padding, ceil-mode pools; activations kept O(1) as the released weights' are), the same decoder initialisation
and the same batch (8 content + 8 style images at 256 px by default, the recipe's). One step is the whole of
it: encode content and style, AdaIN, decode, encode the output, the content and style losses, the backward
pass and an Adam update (pytorch-AdaIN's train.py loop body; ours is `nst_jax.train.make_train_step`, with its
donated state and non-finite guard). Data loading is not timed.

Contenders run interleaved, one step each per round, under the same allocator settings (the script re-execs
itself with benchmarks/common.py's environment and applies `nst_jax.stylize.tune_allocator()`). PyTorch runs
NCHW (pytorch-AdaIN's layout) and channels_last; the ratio is taken against the faster of the two in each
round. Compile time (ours) and the first step (PyTorch's warm-up) are reported
apart. The LAST line is the median over rounds of (ours / best PyTorch) step time.

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
    allocator_note,
    interleave,
    machine_note,
    reexec_with_allocator_env,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--budget-s", type=float, default=900.0,
                        help="stop after this many seconds (>= 3 rounds)")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    parser.add_argument("--torch-formats", nargs="+", choices=("nchw", "channels_last"),
                        default=["nchw", "channels_last"])
    args = parser.parse_args()
    reexec_with_allocator_env(args.allocator == "tuned")

    from nst_jax.stylize import tune_allocator

    tuned = args.allocator == "tuned" and tune_allocator()

    import adain_reference as R
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from torch.nn import functional as F

    from configs import adain as adain_config
    from nst_jax import train, vgg
    from nst_jax.models import decoder

    torch.set_num_threads(os.cpu_count() or 1)
    print(machine_note())
    print(allocator_note() + (" + nst_jax.stylize.tune_allocator() (one arena)" if tuned else ""))
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device(s)), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    b, s = args.batch, args.size
    print(f"AdaIN training step: batch {b} content + {b} style at {s} px, Adam; "
          f"~{step_flops(s, b) / 1e9:.0f} GFLOP per step")

    # Same weights on both sides.
    vgg_t, dec_t = R.random_models(seed=0)
    with torch.no_grad():
        vgg_t[0].weight /= 255.0  # O(1) activations, as the released vgg_normalised (and no denormals)
        vgg_t[0].bias /= 255.0
    encoder = R.encoder_to_relu4_1(vgg_t)
    convs = [m for m in encoder if isinstance(m, torch.nn.Conv2d)]
    names = ["conv0"] + [n for n, _, _ in vgg.CONVS][: len(convs) - 1]
    def to_jax(conv):
        return {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
                "bias": jnp.asarray(conv.bias.detach().numpy())}

    vgg_params = {n: to_jax(m) for n, m in zip(names, convs, strict=True)}
    dec_params = {n: to_jax(dec_t[i]) for n, i in decoder.TORCH_INDEX.items()}
    rng = np.random.default_rng(0)
    content = rng.random((b, s, s, 3), dtype=np.float32)
    style = rng.random((b, s, s, 3), dtype=np.float32)

    # Ours: the jitted, donated step that train.py runs.
    config = adain_config.get_config()
    tx = train.make_optimizer(config)
    lc = train.LossConfig.from_config(config)
    spec = vgg.SPECS["adain"]
    mesh = train.make_mesh()
    step = train.make_train_step(tx, spec, lc, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = train.TrainState(jnp.zeros((), jnp.int32), dec_params, tx.init(dec_params))
    state = jax.device_put(state, replicated)
    vgg_params = jax.device_put(vgg_params, replicated)
    c_j, s_j = jax.device_put(content, batch_sh), jax.device_put(style, batch_sh)
    t0 = time.perf_counter()
    compiled = step.lower(state, vgg_params, c_j, s_j).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def ours():
        new, metrics = compiled(holder["state"], vgg_params, c_j, s_j)
        holder["state"] = new
        jax.block_until_ready((new, metrics))

    # PyTorch: pytorch-AdaIN's net.Net (encoder split at relu1_1..relu4_1) and train.py's loop body.
    layers = list(encoder.children())
    pieces = [layers[:4], layers[4:11], layers[11:18], layers[18:31]]

    def make_torch(fmt: str):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        enc = [torch.nn.Sequential(*p).to(memory_format=mf) for p in pieces]
        for e in enc:
            for p in e.parameters():
                p.requires_grad = False
        dec = R.make_decoder()
        dec.load_state_dict(dec_t.state_dict())
        dec = dec.train().to(memory_format=mf)
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

        def torch_step():
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
            return float(loss.detach())

        return torch_step

    contenders = {"ours": ours}
    warm = {}
    for fmt in args.torch_formats:
        fn = make_torch(fmt)
        t0 = time.perf_counter()
        fn()
        warm[f"torch {fmt}"] = time.perf_counter() - t0
        contenders[f"torch {fmt}"] = fn
    t0 = time.perf_counter()
    ours()
    warm["ours"] = time.perf_counter() - t0
    print(f"ours: compile {compile_s:.1f} s, first step {warm['ours']:.2f} s; "
          + ", ".join(f"{k} first step {v:.2f} s" for k, v in warm.items() if k != "ours"))

    cpu: dict[str, list[float]] = {}
    times = interleave(contenders, repeats=args.repeats, warmup=0, budget_s=args.budget_s, cpu_times=cpu)
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
