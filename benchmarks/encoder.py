"""VGG19 encoder to relu4_1: nst-jax's jitted encoder against the same network in plain PyTorch (CPU).

Both sides get the same random weights (copied across) and the same input; batch 1; both padding identities:
- zero: torchvision's VGG19 (zero padding, floor-mode max pooling, mean/std input normalisation);
- reflect: pytorch-AdaIN's vgg_normalised (1x1 preprocessing conv, ReflectionPad2d before every 3x3 conv,
  ceil-mode max pooling).
PyTorch runs in channels_last and NCHW. Runs are interleaved (one call of each per round) and summarised by
medians; the script re-execs itself under the allocator settings of `benchmarks/common.py` so both sides run
under the same malloc configuration (`--allocator default` to measure glibc's defaults instead).

Modes:
  python benchmarks/encoder.py                     # the comparison; the LAST line is the median ratio
  python benchmarks/encoder.py --explore           # alternative implementations of the reflect-padded encoder
  python benchmarks/encoder.py --xla-flags         # XLA flags / precision settings, one worker process each

The floor at this machine's ~430 GFLOP/s f32 peak is 0.29 s for relu4_1 at 512 px (126.5 GFLOP).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    SubprocessTimer,
    allocator_note,
    interleave,
    interleave_subprocesses,
    machine_note,
    paired_ratio,
    reexec_with_allocator_env,
    stats,
    summarize,
)

TAP = "relu4_1"
SPEC_FOR = {"zero": "torchvision", "reflect": "adain"}


def gflop(size: int) -> float:
    """Multiply-adds x 2 of VGG19 up to relu4_1 on a size x size image."""
    from nst_jax import vgg

    total, h, w = 0, size, size
    for name in vgg.LAYERS[: vgg.LAYERS.index(TAP) + 1]:
        if name.startswith("conv"):
            _, cin, cout = next(c for c in vgg.CONVS if c[0] == name)
            total += 2 * h * w * 9 * cin * cout
        elif name.startswith("pool"):
            h, w = -(-h // 2), -(-w // 2)
    return total / 1e9


def make_params(padding: str, seed: int = 0):
    """Random weights for the identity; AdaIN's conv0 is the real preprocessing (x255, RGB->BGR, -mean)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import vgg

    spec = vgg.SPECS[SPEC_FOR[padding]]
    params = vgg.init_params(jax.random.key(seed), spec, TAP)
    if spec.preconv:
        params["conv0"] = {"kernel": jnp.asarray(np.eye(3)[::-1].reshape(1, 1, 3, 3) * 255.0, jnp.float32),
                           "bias": jnp.asarray([-103.939, -116.779, -123.68], jnp.float32)}
        params["conv1_1"] = {"kernel": params["conv1_1"]["kernel"] / 255.0, "bias": params["conv1_1"]["bias"]}
    return params, spec


def torch_encoder(params, spec):
    """The same network as an nn.Sequential, written as torchvision / pytorch-AdaIN write it."""
    import numpy as np
    import torch
    from torch import nn

    from nst_jax import vgg

    def conv(name, pad):
        k = np.asarray(params[name]["kernel"])
        m = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], padding=pad)
        m.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        m.bias.data = torch.from_numpy(np.array(params[name]["bias"]))
        return m

    layers: list[nn.Module] = []
    if spec.preconv:
        layers.append(conv("conv0", 0))
    for name in vgg.LAYERS[: vgg.LAYERS.index(TAP) + 1]:
        if name.startswith("conv"):
            if spec.padding == "reflect":
                layers += [nn.ReflectionPad2d(1), conv(name, 0)]
            else:
                layers.append(conv(name, 1))
        elif name.startswith("relu"):
            layers.append(nn.ReLU())
        else:
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=spec.ceil_mode))
    net = nn.Sequential(*layers).eval()
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    normalise = any(spec.mean) or any(s != 1.0 for s in spec.std)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            if normalise:
                x = (x - mean) / std
            return self.net(x)

    return Encoder().eval()


def compare(sizes, paddings, repeats, budget_s) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from nst_jax import vgg

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# {machine_note()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"jax {jax.__version__}; {allocator_note()}", flush=True)
    ratios = []
    for padding in paddings:
        params, spec = make_params(padding)
        ours_fn = vgg.make_encoder(params, spec, (TAP,))
        net = torch_encoder(params, spec)
        net_cl = torch_encoder(params, spec).to(memory_format=torch.channels_last)
        for size in sizes:
            x = np.random.default_rng(size).random((1, size, size, 3), dtype=np.float32)
            xj = jnp.asarray(x)
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
            xt_cl = xt.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                ref = net(xt).numpy().transpose(0, 2, 3, 1)
                ref_cl = net_cl(xt_cl).numpy().transpose(0, 2, 3, 1)
            out = np.asarray(ours_fn(xj)[TAP])
            scale = float(np.abs(ref).max())
            err = float(np.abs(out - ref).max()) / scale
            err_cl = float(np.abs(ref_cl - ref).max()) / scale
            assert err < 1e-4, f"ours differs from torch by {err:.2e} (relative to the max)"

            def ours(fn=ours_fn, a=xj):
                jax.block_until_ready(fn(a))

            def torch_cl(fn=net_cl, a=xt_cl):
                with torch.inference_mode():
                    fn(a)

            def torch_nchw(fn=net, a=xt):
                with torch.inference_mode():
                    fn(a)

            cpu: dict[str, list[float]] = {}
            calls = {"ours (jax)": ours, "torch channels_last": torch_cl, "torch NCHW": torch_nchw}
            times = interleave(calls, repeats, warmup=2, budget_s=budget_s, cpu_times=cpu)
            ratio = paired_ratio(times, "ours (jax)", "torch channels_last")
            cpu_ratio = paired_ratio(cpu, "ours (jax)", "torch channels_last")
            ratios.append(ratio)
            best = stats(times["ours (jax)"])["median"]
            print(f"\n## {padding} padding ({spec.source}), {size} px, batch 1: {gflop(size):.1f} GFLOP; "
                  f"max |ours - torch| / max = {err:.1e} (torch CL vs NCHW {err_cl:.1e})")
            print("wall time:\n" + summarize(times))
            print("CPU time of this process per call (all threads):\n" + summarize(cpu))
            print(f"ours: {gflop(size) / best:.0f} GFLOP/s; ours / torch channels_last (paired median): "
                  f"wall {ratio:.2f}, CPU time {cpu_ratio:.2f}; load now {os.getloadavg()[0]:.2f}",
                  flush=True)
    print(f"\nmedian ratio ours / torch channels_last: {statistics.median(ratios):.2f}")


# ----------------------------------------------------------------------------------------------------
# Alternative implementations of the reflect-padded encoder (all must equal the reference)


def reflect_variants():
    """name -> conv(x, kernel): alternative 3x3 stride-1 reflect-padded convolutions."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")

    def rp(x):
        return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")

    def conv(x, k, pad):
        return lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=dn)

    def pad_same_crop(x, k):
        return conv(rp(x), k, "SAME")[:, 1:-1, 1:-1]

    def valid(x, k):
        return conv(rp(x), k, "VALID")

    def border_fix(x, k):
        # interior from the zero-padded SAME conv; border rows and columns from thin convs of reflected strips
        y = conv(x, k, "SAME")
        xp = rp(x)
        h, w = x.shape[1], x.shape[2]
        y = y.at[:, :, :1].set(conv(xp[:, :, :3], k, "VALID"))
        y = y.at[:, :, w - 1:].set(conv(xp[:, :, w - 1:], k, "VALID"))
        return y.at[:, :1].set(conv(xp[:, :3], k, "VALID")).at[:, h - 1:].set(conv(xp[:, h - 1:], k, "VALID"))

    def take_pad(x):
        # the reflection as one gather per axis: XLA fuses both (and the producer's bias + ReLU) in one pass,
        # where jnp.pad(mode="reflect") lowers to two concatenations run as two passes
        def idx(n):
            i = np.abs(np.arange(-1, n + 1))
            return np.where(i > n - 1, 2 * (n - 1) - i, i)

        return jnp.take(jnp.take(x, idx(x.shape[1]), axis=1), idx(x.shape[2]), axis=2)

    def gather_same_crop(x, k):
        return conv(take_pad(x), k, "SAME")[:, 1:-1, 1:-1]

    def gather_valid(x, k):
        return conv(take_pad(x), k, "VALID")

    def rows_valid(x, k):
        # rows need no zero padding (VALID), columns SAME then cropped: half the border overhead
        return conv(take_pad(x), k, ((0, 0), (1, 1)))[:, :, 1:-1]

    def cols_valid(x, k):
        return conv(take_pad(x), k, ((1, 1), (0, 0)))[:, 1:-1]

    def nchw(x, k):
        xp = rp(x).transpose(0, 3, 1, 2)
        y = lax.conv_general_dilated(xp, k, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW"))
        return y[:, :, 1:-1, 1:-1].transpose(0, 2, 3, 1)

    return {"pad_same_crop": pad_same_crop, "valid": valid, "border_fix": border_fix, "nchw": nchw,
            "gather_same_crop": gather_same_crop, "gather_valid": gather_valid, "rows_valid": rows_valid,
            "cols_valid": cols_valid}


def _encoder_with(conv_fn, spec, padded_carry: bool = False, pool=None):
    """VGG19 to relu4_1 (AdaIN identity) with a given conv; padded_carry keeps activations reflect-padded."""
    import jax
    from jax import lax

    from nst_jax import ops, vgg

    dn = ("NHWC", "HWIO", "NHWC")

    def refill(y):
        # re-reflect the 1-pixel border of a padded activation from its interior (rows first, then columns,
        # which fills the corners as ReflectionPad2d does)
        y = y.at[:, :1].set(y[:, 2:3]).at[:, -1:].set(y[:, -3:-2])
        return y.at[:, :, :1].set(y[:, :, 2:3]).at[:, :, -1:].set(y[:, :, -3:-2])

    def enc(params, x):
        h = vgg.preprocess(x, spec)
        h = lax.conv_general_dilated(h, params["conv0"]["kernel"], (1, 1), "VALID", dimension_numbers=dn)
        h = h + params["conv0"]["bias"]
        if padded_carry:
            h = ops.reflect_pad(h)
        for name in vgg.LAYERS[: vgg.LAYERS.index(TAP) + 1]:
            if name.startswith("conv"):
                p = params[name]
                if padded_carry:
                    h = lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME", dimension_numbers=dn)
                    h = h + p["bias"]
                else:
                    h = conv_fn(h, p["kernel"]) + p["bias"]
            elif name.startswith("relu"):
                h = jax.nn.relu(h)
                if padded_carry:
                    h = refill(h)
            else:
                if padded_carry:
                    h = h[:, 1:-1, 1:-1]
                h = (pool or reduce_window_max_pool)(h, spec.ceil_mode)
                if padded_carry:
                    h = ops.reflect_pad(h)
        return h[:, 1:-1, 1:-1] if padded_carry else h

    return jax.jit(enc)


def _nchw_encoder(spec):
    """The whole network in NCHW (one transpose in, one out), for either padding; pools as in `ops`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from nst_jax import vgg

    dn = ("NCHW", "HWIO", "NCHW")

    def idx(n):
        i = np.abs(np.arange(-1, n + 1))
        return np.where(i > n - 1, 2 * (n - 1) - i, i)

    def pool(h):
        pads = [(0, 0), (0, 0)]
        for n in h.shape[2:]:
            out = -(-(n - 2) // 2) + 1 if spec.ceil_mode else (n - 2) // 2 + 1
            pads.append((0, max((out - 1) * 2 + 2 - n, 0)))
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), pads)

    def enc(params, x):
        h = vgg.preprocess(x, spec).transpose(0, 3, 1, 2)
        if spec.preconv:
            h = lax.conv_general_dilated(h, params["conv0"]["kernel"], (1, 1), "VALID", dimension_numbers=dn)
            h = h + params["conv0"]["bias"][:, None, None]
        for name in vgg.LAYERS[: vgg.LAYERS.index(TAP) + 1]:
            if name.startswith("conv"):
                p = params[name]
                if spec.padding == "reflect":
                    hp = jnp.take(jnp.take(h, idx(h.shape[2]), axis=2), idx(h.shape[3]), axis=3)
                    h = lax.conv_general_dilated(hp, p["kernel"], (1, 1), "SAME", dimension_numbers=dn)
                    h = h[:, :, 1:-1, 1:-1]
                else:
                    h = lax.conv_general_dilated(h, p["kernel"], (1, 1), "SAME", dimension_numbers=dn)
                h = h + p["bias"][:, None, None]
            elif name.startswith("relu"):
                h = jax.nn.relu(h)
            else:
                h = pool(h)
        return h.transpose(0, 2, 3, 1)

    return jax.jit(enc)


def reduce_window_max_pool(x, ceil_mode: bool):
    """2x2/2 max pooling as lax.reduce_window: what nst_jax.ops.max_pool did before it used strided slices."""
    import jax.numpy as jnp
    from jax import lax

    from nst_jax import ops

    pads = ops._pool_padding(x, 2, 2, ceil_mode)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pads)


def _encoder_zero(spec, pool):
    """The zero-padded encoder with a given pooling function (pool(h, ceil_mode))."""
    import jax

    from nst_jax import ops, vgg

    def enc(params, x):
        h = vgg.preprocess(x, spec)
        for name in vgg.LAYERS[: vgg.LAYERS.index(TAP) + 1]:
            if name.startswith("conv"):
                h = ops.conv2d(h, params[name]["kernel"], params[name]["bias"], spec.padding)
            elif name.startswith("relu"):
                h = jax.nn.relu(h)
            else:
                h = pool(h, spec.ceil_mode)
        return h

    return jax.jit(enc)


def explore(sizes, repeats, budget_s, names=None) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import ops, vgg

    print(f"# {machine_note()}; {allocator_note()}", flush=True)
    params, spec = make_params("reflect")
    zparams, zspec = make_params("zero")
    # every variant below pools with reduce_window (as nst_jax did before), except "gather_slice_pool"
    fns = {name: _encoder_with(f, spec) for name, f in reflect_variants().items()}
    fns["gather_slice_pool"] = _encoder_with(reflect_variants()["gather_same_crop"], spec,
                                             pool=lambda h, c: ops.max_pool(h, 2, 2, c))
    fns["padded_carry"] = _encoder_with(None, spec, padded_carry=True)
    fns["nchw_net"] = _nchw_encoder(spec)
    plain = jax.jit(lambda p, x: vgg.encode(p, x, spec, (TAP,), conv=ops.conv_plain)[TAP])
    fns["direct_convolutions"] = plain  # no Winograd: conv_plain everywhere
    zplain = jax.jit(lambda p, x: vgg.encode(p, x, zspec, (TAP,), conv=ops.conv_plain)[TAP])
    zero_fns = {"nchw_net_zero": _nchw_encoder(zspec), "direct_convolutions_zero": zplain,
                "reduce_window_pool_zero": _encoder_zero(zspec, reduce_window_max_pool)}
    if names:
        fns = {n: f for n, f in fns.items() if n in names}
        zero_fns = {n: f for n, f in zero_fns.items() if n in names}
    current = vgg.make_encoder(params, spec, (TAP,))
    zero = vgg.make_encoder(zparams, zspec, (TAP,))
    for size in sizes:
        x = jnp.asarray(np.random.default_rng(size).random((1, size, size, 3), dtype=np.float32))
        ref = np.asarray(current(x)[TAP])
        zref = np.asarray(zero(x)[TAP])
        calls = {"current (nst_jax.vgg)": lambda x=x: jax.block_until_ready(current(x)),
                 "zero padding (torchvision)": lambda x=x: jax.block_until_ready(zero(x))}
        print(f"\n## reflect-padded VGG19 to {TAP}, {size} px")
        for name, fn in zero_fns.items():
            zdiff = float(np.abs(np.asarray(fn(zparams, x)) - zref).max())
            print(f"{name}: max |diff| vs zero-padding encoder = {zdiff:.3g}")
            calls[name] = lambda fn=fn, x=x: jax.block_until_ready(fn(zparams, x))
        for name, fn in fns.items():
            out = np.asarray(fn(params, x))
            diff = float(np.abs(out - ref).max())
            print(f"{name}: max |diff| vs current = {diff:.3g} (features up to {np.abs(ref).max():.3g})")
            calls[name] = lambda fn=fn, x=x: jax.block_until_ready(fn(params, x))
        cpu: dict[str, list[float]] = {}
        times = interleave(calls, repeats, warmup=1, budget_s=budget_s, cpu_times=cpu)
        print("wall time:\n" + summarize(times))
        print("CPU time of this process per call:\n" + summarize(cpu))
        print(f"load now {os.getloadavg()[0]:.2f}", flush=True)


# ----------------------------------------------------------------------------------------------------
# XLA flags and precision: each setting is a separate worker process (flags are read at start-up)

FLAG_SETTINGS = {
    "default": "",
    # convolutions go to YNNPACK by default in jax 0.10 ("ynn_fusion"); these move them elsewhere or fuse more
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "eigen_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "single_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}


def worker(padding: str, size: int, precision: str | None) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import serve_timer
    from nst_jax import vgg

    if precision:
        jax.config.update("jax_default_matmul_precision", precision)
    params, spec = make_params(padding)
    fn = vgg.make_encoder(params, spec, (TAP,))
    x = jnp.asarray(np.random.default_rng(size).random((1, size, size, 3), dtype=np.float32))
    out = np.asarray(fn(x)[TAP])
    checksum = float(np.abs(out).sum())
    serve_timer(lambda: jax.block_until_ready(fn(x)), f"checksum={checksum:.6g}")


def xla_flags(sizes, paddings, repeats, budget_s, settings) -> None:
    print(f"# {machine_note()}; {allocator_note()}", flush=True)
    for padding in paddings:
        for size in sizes:
            timers = {}
            for name in settings:
                env = dict(os.environ)
                precision = None
                if name.startswith("precision="):
                    precision = name.split("=", 1)[1]
                else:
                    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + FLAG_SETTINGS[name]).strip()
                cmd = [sys.executable, __file__, "--worker", "--padding", padding, "--sizes", str(size)]
                if precision:
                    cmd += ["--precision", precision]
                try:
                    timers[name] = SubprocessTimer(cmd, env)
                except RuntimeError as e:
                    print(f"{name}: could not start ({e})")
            try:
                cpu: dict[str, list[float]] = {}
                times = interleave_subprocesses(timers, repeats, warmup=1, budget_s=budget_s, cpu_times=cpu)
            finally:
                for t in timers.values():
                    t.close()
            print(f"\n## {padding} padding, {size} px (checksums: "
                  + ", ".join(f"{n} {t.note}" for n, t in timers.items()) + ")")
            print("wall time:\n" + summarize(times))
            print("CPU time of the worker per call:\n" + summarize(cpu))
            print(f"load now {os.getloadavg()[0]:.2f}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--paddings", nargs="+", choices=["zero", "reflect"], default=["zero", "reflect"])
    ap.add_argument("--padding", choices=["zero", "reflect"], default="reflect", help="(worker)")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--budget", type=float, default=45.0, help="seconds of timing per configuration at most")
    ap.add_argument("--allocator", choices=["tuned", "default"], default="tuned")
    ap.add_argument("--explore", action="store_true", help="time alternative reflect-padded encoders")
    ap.add_argument("--variants", nargs="+", default=None, help="for --explore: variants to time (all)")
    ap.add_argument("--xla-flags", action="store_true", help="time XLA flag settings in worker processes")
    ap.add_argument("--settings", nargs="+", default=list(FLAG_SETTINGS) + ["precision=highest"],
                    help="for --xla-flags: FLAG_SETTINGS names or precision=<jax_default_matmul_precision>")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reexec_with_allocator_env(args.allocator == "tuned" and not args.worker)
    if args.worker:
        worker(args.padding, args.sizes[0], args.precision)
    elif args.explore:
        explore(args.sizes, args.repeats, args.budget, args.variants)
    elif args.xla_flags:
        xla_flags(args.sizes, args.paddings, args.repeats, args.budget, args.settings)
    else:
        compare(args.sizes, args.paddings, args.repeats, args.budget)


if __name__ == "__main__":
    main()
