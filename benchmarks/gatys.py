"""Gatys et al. optimisation: nst-jax (Optax L-BFGS, jitted) against the same loss in plain PyTorch (CPU).

Both sides optimise the same objective (`nst_jax.gatys.objective`'s module docstring): content MSE at relu4_2,
Gram/(CHW) MSE at relu1_1..relu5_1 with the torchvision defaults' layer weights, squared TV, all on the image
softclip(z) in [0, 1]; the same random VGG19 weights (copied across; no real weights on this machine); the same
content (skimage astronaut) and style (skimage coffee, resized as `gatys.stylize` resizes it) and the same starts.

1. Time per evaluation (loss + gradient: what one L-BFGS iteration costs when its first trial step is accepted) at
   256 and 512 px: ours = the jitted value-and-gradient of `gatys.solve._objective` (the function the compiled
   loop calls); torch = VGG19 in torch.nn (channels_last, ReLU not in place), autograd backward. Interleaved rounds,
   paired medians.
2. 100 L-BFGS iterations from the same starts (128 px by default, 3 starts): ours (`gatys.stylize`: memory 100,
   torch.optim.LBFGS's direction, the `--linesearches` given, chunks of 10 in `lax.fori_loop`) against
   `torch.optim.LBFGS` (history 100, as neural-style) given as many evaluations as ours made, without a line search
   (neural-style's setting) and with its strong-Wolfe line search: final loss, evaluations, seconds.

The script re-execs itself under the allocator settings of `benchmarks/common.py` (both sides share them). The LAST
line is the median ratio ours / torch of the time per evaluation at 512 px.

    python benchmarks/gatys.py                  # everything (about 6 minutes on a quiet 2-core machine)
    python benchmarks/gatys.py --sizes 256 --iterations 30 --starts 1 --repeats 3   # a quick look
    python benchmarks/gatys.py --sizes 64 --repeats 1 --iteration-size 64 --linesearches armijo none optax-zoom

The floor at this machine's ~430 GFLOP/s f32 peak is ~0.92 s per evaluation at 512 px (~400 GFLOP).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    allocator_note,
    interleave,
    machine_note,
    paired_ratio,
    reexec_with_allocator_env,
    stats,
    summarize,
)

BETA = 100.0


def gflop_per_eval(size: int, last: str = "relu5_1") -> float:
    """GFLOPs of one forward and backward (input gradient only: 2x the forward's convolutions)."""
    from nst_jax import vgg

    # forward + input gradient (the first conv's input gradient is tiny; counted anyway)
    return 2 * vgg.flops(size, size, vgg.SPECS["torchvision"], last) / 1e9


def images(size: int):
    import numpy as np
    from skimage import data

    from nst_jax import image

    content = image.from_uint8(data.astronaut())[None]
    style = image.from_uint8(data.coffee())[None]
    c = image.resize(content, (size, size), "bilinear")
    # longer side = the content's: what `gatys.stylize` resizes a style to (style_scale 1), so both sides see it
    s = image.resize(style, (int(round(size * style.shape[1] / style.shape[2])), size), "bilinear")
    return np.ascontiguousarray(c, np.float32), np.ascontiguousarray(s, np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch side


def torch_vgg(params, last: str):
    """VGG19 (zero padding, max pooling) up to `last` in plain torch.nn, returning a dict of relu taps."""
    import numpy as np
    import torch
    from torch import nn

    from nst_jax import vgg

    names, layers = [], []
    for name in vgg.LAYERS[: vgg.LAYERS.index(last) + 1]:
        if name.startswith("conv"):
            k = np.asarray(params[name]["kernel"])
            conv = nn.Conv2d(k.shape[2], k.shape[3], 3, padding=1)
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(np.asarray(params[name]["bias"]).copy())
            layers.append(conv)
        elif name.startswith("relu"):
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(2, 2))
        names.append(name)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.names = names
            for p in self.parameters():
                p.requires_grad_(False)

        def forward(self, x, taps):
            out = {}
            for n, layer in zip(self.names, self.layers, strict=True):
                x = layer(x)
                if n in taps:
                    out[n] = x
            return out

    return Net()


class TorchObjective:
    """The Gatys objective of `nst_jax.gatys.objective`, written in PyTorch from its formulas."""

    def __init__(self, params, spec, content, style, weights, layer_weights, content_layers, style_layers):
        import torch

        from nst_jax import vgg

        self.torch = torch
        self.cl, self.sl = tuple(content_layers), tuple(style_layers)
        self.taps = set(self.cl) | set(self.sl)
        last = vgg.deepest(tuple(self.taps))
        self.net = torch_vgg(params, last).to(memory_format=torch.channels_last)
        self.mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std).view(1, 3, 1, 1)
        self.cw, self.sw, self.tvw = weights.content, weights.style, weights.tv
        self.lw = [float(w) for w in layer_weights]
        with torch.no_grad():
            fc = self.features(self.to_torch(content))
            fs = self.features(self.to_torch(style))
            self.content_t = {k: fc[k].detach() for k in self.cl}
            self.grams_t = {k: self.gram(fs[k]).detach() for k in self.sl}

    def to_torch(self, x):
        return self.torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(
            memory_format=self.torch.channels_last)

    def features(self, x):
        return self.net((x - self.mean) / self.std, self.taps)

    @staticmethod
    def gram(f):
        n, c, h, w = f.shape
        m = f.reshape(c, h * w)
        return (m @ m.t()) / (c * h * w)

    def softclip(self, z):
        f = self.torch.nn.functional.softplus
        return (f(BETA * z) - f(BETA * (z - 1))) / BETA

    def __call__(self, z):
        # z is a plain NCHW tensor (torch.optim.LBFGS flattens it with .view); the network runs channels_last.
        x = self.softclip(z).contiguous(memory_format=self.torch.channels_last)
        f = self.features(x)
        content = sum(((f[k] - self.content_t[k]) ** 2).mean() for k in self.cl)
        style = sum(w * ((self.gram(f[k]) - self.grams_t[k]) ** 2).mean() for w, k in zip(self.lw, self.sl,
                                                                                            strict=True))
        tv = ((x[:, :, 1:, :] - x[:, :, :-1, :]) ** 2).sum() + ((x[:, :, :, 1:] - x[:, :, :, :-1]) ** 2).sum()
        return self.cw * content + self.sw * style + self.tvw * tv


# ---------------------------------------------------------------------------------------------------------------


def setup(size: int):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from nst_jax import gatys, vgg
    from nst_jax.gatys.solve import _objective, _Static

    spec = vgg.SPECS["torchvision"]
    cfg = gatys.GatysConfig(lbfgs_memory=100)
    last = vgg.deepest(cfg.content_layers + cfg.style_layers)
    params = vgg.init_params(jax.random.PRNGKey(0), spec, last)
    weights = cfg.loss_weights(spec)
    content, style = images(size)
    enc = gatys.prepare_vgg(params, last)  # what `gatys.stylize` passes its compiled loops
    targets = gatys.make_targets(enc, spec, content, [style], weights, cfg)
    static = _Static(spec, cfg.content_layers, cfg.style_layers, "lbfgs", None, 100, 20, linesearch=cfg.linesearch)
    z0 = gatys.softclip_inverse(jnp.asarray(content))
    ours_vg = jax.jit(jax.value_and_grad(_objective), static_argnames=("static",))
    lw = gatys.layer_weight_values(weights.layers, cfg.style_layers)
    tobj = TorchObjective(params, spec, content, style, weights, lw, cfg.content_layers, cfg.style_layers)
    zt = torch.from_numpy(np.asarray(z0).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    return dict(spec=spec, cfg=cfg, params=params, content=content, style=style, enc=enc, targets=targets,
                static=static, z0=z0, ours_vg=ours_vg, tobj=tobj, zt=zt)


def time_evaluations(sizes, repeats, budget_s) -> float | None:
    import jax
    import torch

    ratio_512 = None
    for size in sizes:
        s = setup(size)
        ours_vg, static, enc, targets, z0 = s["ours_vg"], s["static"], s["enc"], s["targets"], s["z0"]
        tobj, zt = s["tobj"], s["zt"]

        def ours(f=ours_vg, z0=z0, targets=targets, enc=enc, static=static):
            jax.block_until_ready(f(z0, targets, enc, static=static))

        def theirs(tobj=tobj, zt=zt):
            zt.grad = None
            loss = tobj(zt)
            loss.backward()

        v_ours = float(ours_vg(z0, targets, enc, static=static)[0])
        with torch.no_grad():
            v_torch = float(tobj(zt))
        cpu: dict[str, list[float]] = {}
        times = interleave({"ours (jax)": ours, "torch": theirs}, repeats=repeats, warmup=2, budget_s=budget_s,
                           cpu_times=cpu)
        ratio = paired_ratio(times, "ours (jax)", "torch")
        best = stats(times["ours (jax)"])["min"]
        print(f"\n== one evaluation (loss + gradient), {size}x{size}; loss at the start: ours {v_ours:.6g}, "
              f"torch {v_torch:.6g} (rel. diff {abs(v_ours - v_torch) / abs(v_torch):.1e})")
        print(summarize(times))
        print(f"ours {gflop_per_eval(size) / best:.0f} GFLOP/s at best; ours / torch (paired median): {ratio:.2f}; "
              f"CPU-time ratio {paired_ratio(cpu, 'ours (jax)', 'torch'):.2f}")
        if size == 512:
            ratio_512 = ratio
        del s
        torch.set_grad_enabled(True)
    return ratio_512


def torch_lbfgs(tobj, init, evaluations: int, line_search: str | None) -> tuple[float, float, int, float]:
    """torch.optim.LBFGS (history 100) from `init` with at most `evaluations` loss+gradient evaluations.

    Returns:
      (initial loss, final loss, evaluations made, seconds).
    """
    import numpy as np
    import torch

    from nst_jax import gatys

    z0 = np.asarray(gatys.softclip_inverse(init)).transpose(0, 3, 1, 2)
    z = torch.from_numpy(np.ascontiguousarray(z0)).requires_grad_(True)
    with torch.no_grad():
        initial = float(tobj(z))
    # Without a line search, n iterations make n evaluations (the start, then one after each step but the last;
    # the final loss is not counted, as ours is not); with one, max_eval is the budget.
    if line_search is None:
        max_iter, max_eval = evaluations, evaluations + 1
    else:
        max_iter, max_eval = 100 * evaluations, evaluations
    opt = torch.optim.LBFGS([z], lr=1, max_iter=max_iter, max_eval=max_eval, history_size=100, tolerance_grad=-1,
                            tolerance_change=-1, line_search_fn=line_search)
    evals = [0]

    def closure():
        opt.zero_grad()
        loss = tobj(z)
        loss.backward()
        evals[0] += 1
        return loss

    t0 = time.perf_counter()
    opt.step(closure)
    dt = time.perf_counter() - t0
    with torch.no_grad():
        final = float(tobj(z))
    return initial, final, evals[0], dt


def run_iterations(size: int, iterations: int, starts: int, linesearches: tuple[str, ...] = ("armijo",)) -> dict:
    """L-BFGS by both from the same starts (the content, then the content plus tiny noise), at equal evaluations.

    Ours runs `iterations` iterations with each of `linesearches` (`GatysConfig.linesearch`); torch's L-BFGS then
    gets exactly as many evaluations as ours made (neural-style's: no line search, one evaluation per iteration;
    and with its strong-Wolfe search, the same evaluation budget). One start decides little: trajectories of
    L-BFGS on this non-convex loss drift apart after a few dozen iterations (float32 rounding of the gradient
    differences alone moves them by a few tenths of a percent), so the geometric mean over starts is the comparison.

    Returns:
      {linesearch: {"ratio_none": geometric mean of ours / torch (no line search), "wins": starts with ours
      <= torch, "ratio_wolfe": the same against strong Wolfe}}.
    """
    import math

    import numpy as np

    from nst_jax import gatys

    s = setup(size)
    tobj = s["tobj"]
    rng = np.random.default_rng(0)
    inits = [s["content"]] + [np.clip(s["content"] + 1e-3 * rng.standard_normal(s["content"].shape), 0, 1)
                              .astype(np.float32) for _ in range(starts - 1)]
    print(f"\n== {iterations} L-BFGS iterations at {size}x{size}, memory / history 100, {starts} starts "
          "(the content, then the content + N(0, 1e-3)); torch gets as many evaluations as ours made")
    print(f"{'start':>5} {'':46} {'initial':>10} {'final loss':>11} {'evals':>6} {'seconds':>8} {'s/eval':>7}")
    summary = {}
    for ls in linesearches:
        cfg = s["cfg"].replace(iterations=iterations, linesearch=ls)
        gatys.stylize(s["content"], [s["style"]], s["params"], s["spec"], cfg.replace(iterations=2))  # compile
        finals: dict[str, list[float]] = {"ours": [], "none": [], "wolfe": []}
        for k, init in enumerate(inits):
            t0 = time.perf_counter()
            res = gatys.stylize(s["content"], [s["style"]], s["params"], s["spec"], cfg, init_image=init)
            rows = [(f"ours: linesearch={ls}", res.initial_losses["total"], res.losses["total"], res.evaluations,
                     time.perf_counter() - t0)]
            for key, name, lsf in (("none", "torch LBFGS, no line search (neural-style)", None),
                                   ("wolfe", "torch LBFGS, strong Wolfe", "strong_wolfe")):
                initial, final, evals, dt = torch_lbfgs(tobj, init, res.evaluations, lsf)
                rows.append((name, initial, final, evals, dt))
                finals[key].append(final)
            finals["ours"].append(res.losses["total"])
            for name, initial, final, evals, dt in rows:
                print(f"{k:5d} {name:46} {initial:10.6g} {final:11.6g} {evals:6d} {dt:8.1f} "
                      f"{dt / max(evals, 1):7.3f}")
        out = {}
        for key in ("none", "wolfe"):
            ratio = math.exp(np.mean(np.log(np.array(finals["ours"]) / np.array(finals[key]))))
            wins = sum(a <= b for a, b in zip(finals["ours"], finals[key], strict=True))
            out[f"ratio_{key}"], out[f"wins_{key}"] = ratio, wins
            print(f"linesearch={ls}: ours / torch ({key}) at equal evaluations: geometric mean of final-loss "
                  f"ratios {ratio:.4f} ({'no worse' if ratio <= 1.0 else 'WORSE'}; ours lower or equal in {wins} "
                  f"of {starts} starts)")
        summary[ls] = out
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of timing per size, at most")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--iteration-size", type=int, default=128)
    ap.add_argument("--starts", type=int, default=3, help="starts of the iteration comparison")
    ap.add_argument("--linesearches", nargs="+", default=["armijo"],
                    choices=("armijo", "none", "zoom", "optax-zoom"), help="ours: GatysConfig.linesearch values")
    ap.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    args = ap.parse_args()
    reexec_with_allocator_env(args.allocator == "tuned")

    import jax
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # one pinned core (taskset): one thread
    print(f"{machine_note()}; {allocator_note()}; jax {jax.__version__}, torch {torch.__version__}")
    if args.iterations > 0:
        run_iterations(args.iteration_size, args.iterations, args.starts, tuple(args.linesearches))
    ratio = time_evaluations(args.sizes, args.repeats, args.budget)
    print(f"\n{machine_note()}")
    if ratio is None:
        print("median ratio ours / torch per evaluation: (512 px not measured)")
    else:
        print(f"median ratio ours / torch per evaluation at 512 px: {ratio:.2f}")


if __name__ == "__main__":
    main()
