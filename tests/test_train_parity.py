"""One training step against a plain-PyTorch reference of pytorch-AdaIN's step (net.Net.forward + Adam).

Same VGG weights (AdaIN's vgg_normalised identity: 1x1 preprocessing conv, reflection padding, ceil-mode
pools), same decoder initialisation, same batch. In float64 on both sides the loss, every gradient and the
parameters after the Adam step agree within 1e-4 (norm-wise relative), which pins down the semantics. In
float32 the loss agrees within 1e-4 too, but the gradients at a fresh initialisation are ill-conditioned
(feature stds near sqrt(eps) amplify rounding): PyTorch's own float32 gradients are ~1e-3 away from its
float64 ones, and Adam's first step, g / (|g| + eps), carries that into the parameters. There the test asks
our gradients and parameters to be as close to the float64 truth as PyTorch's float32 ones are (within
1e-4, or a factor 2 of PyTorch's distance).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adain_reference import (  # noqa: E402, I001
    adaptive_instance_normalization,
    calc_mean_std,
    encoder_to_relu4_1,
    random_models,
)

from nst_jax import ops, train, vgg  # noqa: E402
from nst_jax.models import adain, decoder  # noqa: E402


class _Config(dict):
    __getattr__ = dict.__getitem__


CONFIG = _Config(learning_rate=1e-4, lr_decay=5e-5, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
                 content_weight=1.0, style_weight=10.0,
                 style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"),
                 style_layer_weights=(1.0, 1.0, 1.0, 1.0), dtype="float32")


class TorchNet(nn.Module):
    """pytorch-AdaIN's `net.Net`: the encoder split at relu1_1..relu4_1, its loss terms."""

    def __init__(self, encoder: nn.Sequential, dec: nn.Sequential):
        super().__init__()
        layers = list(encoder.children())
        self.enc = nn.ModuleList([nn.Sequential(*layers[:4]), nn.Sequential(*layers[4:11]),
                                  nn.Sequential(*layers[11:18]), nn.Sequential(*layers[18:31])])
        self.decoder = dec
        for p in self.enc.parameters():
            p.requires_grad = False

    def encode_with_intermediate(self, x):
        out = [x]
        for f in self.enc:
            out.append(f(out[-1]))
        return out[1:]

    def encode(self, x):
        for f in self.enc:
            x = f(x)
        return x

    @staticmethod
    def style_loss(x, target):
        xm, xs = calc_mean_std(x)
        tm, ts = calc_mean_std(target)
        return F.mse_loss(xm, tm) + F.mse_loss(xs, ts)

    def forward(self, content, style):
        style_feats = self.encode_with_intermediate(style)
        content_feat = self.encode(content)
        t = adaptive_instance_normalization(content_feat, style_feats[-1])
        g_t = self.decoder(t)
        g_t_feats = self.encode_with_intermediate(g_t)
        loss_c = F.mse_loss(g_t_feats[-1], t)
        loss_s = sum(self.style_loss(g, s) for g, s in zip(g_t_feats, style_feats, strict=True))
        return loss_c, loss_s


def _vgg_to_jax(encoder: nn.Sequential) -> dict:
    convs = [m for m in encoder if isinstance(m, nn.Conv2d)]
    names = ["conv0"] + [name for name, _, _ in vgg.CONVS][: len(convs) - 1]
    return {n: {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 1, 0)),
                "bias": jnp.asarray(m.bias.detach().numpy())} for n, m in zip(names, convs, strict=True)}


def _decoder_to_torch(params: dict, dec: nn.Sequential) -> None:
    with torch.no_grad():
        for name, idx in decoder.TORCH_INDEX.items():
            kernel = np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1).copy()
            dec[idx].weight.copy_(torch.from_numpy(kernel))
            dec[idx].bias.copy_(torch.from_numpy(np.array(params[name]["bias"])))


def _images(seed: int, n: int = 2, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy - seed), np.sin(4 * (xx + yy))], -1) * 0.35 + 0.5
    return np.clip(base[None] + 0.15 * rng.standard_normal((n, size, size, 3)), 0, 1).astype(np.float32)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def setup():
    vgg_t, dec_t = random_models(seed=0)
    with torch.no_grad():
        # The released vgg_normalised is rescaled so that activations are O(1); a random VGG fed x255 input
        # would give a style loss of ~1e5 instead of ~4.
        vgg_t[0].weight /= 255.0
        vgg_t[0].bias /= 255.0
    encoder = encoder_to_relu4_1(vgg_t)
    vgg_params = _vgg_to_jax(encoder)
    vgg.check_vgg_params(vgg_params, vgg.SPECS["adain"], "relu4_1")
    params = jax.tree.map(np.asarray, jax.jit(decoder.init_params)(jax.random.PRNGKey(0)))  # training's init
    _decoder_to_torch(params, dec_t)
    return encoder, dec_t.train(), vgg_params, params, _images(1), _images(2)


def _torch_step(setup, dtype) -> dict:
    """pytorch-AdaIN's train.py loop body for iteration 0, in `dtype`."""
    encoder, dec_t, *_, content, style = setup
    encoder, dec_t = copy.deepcopy(encoder).to(dtype), copy.deepcopy(dec_t).to(dtype)
    net = TorchNet(encoder, dec_t)
    lr = CONFIG.learning_rate / (1.0 + CONFIG.lr_decay * 0)
    optimizer = torch.optim.Adam(net.decoder.parameters(), lr=lr)
    to_t = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)  # noqa: E731
    loss_c, loss_s = net(to_t(content), to_t(style))
    loss = CONFIG.content_weight * loss_c + CONFIG.style_weight * loss_s
    optimizer.zero_grad()
    loss.backward()
    out = {"loss": loss.item(), "loss_content": loss_c.item(),
           "loss_style": CONFIG.style_weight * loss_s.item()}
    out["grads"] = {n: {"kernel": dec_t[i].weight.grad.double().numpy().transpose(2, 3, 1, 0),
                        "bias": dec_t[i].bias.grad.double().numpy()} for n, i in decoder.TORCH_INDEX.items()}
    optimizer.step()
    out["params"] = {n: {"kernel": dec_t[i].weight.detach().double().numpy().transpose(2, 3, 1, 0),
                         "bias": dec_t[i].bias.detach().double().numpy()}
                     for n, i in decoder.TORCH_INDEX.items()}
    return out


def _jax_step(setup, dtype: str) -> dict:
    """Our jitted `train_step` from the same state; the gradients are read back from Adam's first moment."""
    *_, vgg_params, params, content, style = setup
    tx = train.make_optimizer(CONFIG)
    lc = dataclasses.replace(adain.LossConfig.from_config(_Config(CONFIG, dtype="float32")),
                             spec=vgg.SPECS["adain"])
    if dtype == "float64":
        lc = dataclasses.replace(lc, dtype="float64")
    cast = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)  # noqa: E731
    p = cast(params)
    state = train.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))
    step = jax.jit(lambda s, v, c, st: train.train_step(s, {"vgg": v}, {"content": c, "style": st}, tx=tx,
                                                        loss_fn=adain.loss_fn, static=lc))
    new, metrics = step(state, cast(vgg_params), cast(content), cast(style))
    # After one step Adam's first moment is (1 - b1) * gradient (optax starts it at zero).
    mu = new.opt_state[0].mu
    f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
    return {"loss": float(metrics["loss"]), "loss_content": float(metrics["loss_content"]),
            "loss_style": float(metrics["loss_style"]), "finite": bool(metrics["finite"]),
            "step": int(new.step),
            "grads": jax.tree.map(lambda m: m / (1.0 - CONFIG.adam_b1), f64(mu)), "params": f64(new.params)}


def _layers(tree):
    return [(n, leaf) for n in decoder.TORCH_INDEX for leaf in ("kernel", "bias")]


def test_one_train_step_matches_pytorch_adain_in_float64(setup):
    # 16 px crops: float64 convolutions are slow on XLA's CPU backend; the semantics do not depend on size.
    small = (*setup[:4], setup[4][:, :16, :16], setup[5][:, :16, :16])
    ref = _torch_step(small, torch.float64)
    with jax.enable_x64(True):
        ours = _jax_step(small, "float64")
    assert ours["finite"] and ours["step"] == 1
    for key in ("loss", "loss_content", "loss_style"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4), key
    before = setup[3]
    for n, leaf in _layers(ref["grads"]):
        assert _rel(ours["grads"][n][leaf], ref["grads"][n][leaf]) < 1e-4, (n, leaf)
        assert _rel(ours["params"][n][leaf], ref["params"][n][leaf]) < 1e-4, (n, leaf)
        # and the step moved the parameters the same way, not merely a little
        moved = ours["params"][n][leaf] - before[n][leaf]
        assert _rel(moved, ref["params"][n][leaf] - before[n][leaf]) < 1e-4, (n, leaf)


def test_one_train_step_matches_pytorch_adain_in_float32(setup):
    truth = _torch_step(setup, torch.float64)
    ref = _torch_step(setup, torch.float32)
    ours = _jax_step(setup, "float32")
    for key in ("loss", "loss_content", "loss_style"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-4), key
    for n, leaf in _layers(ref["grads"]):
        g_true = truth["grads"][n][leaf]
        # Adam's first step moves each element by about lr * sign(g): where the true gradient is within float32's
        # gradient error of zero, its sign, and so the step's direction, is a coin toss for any float32
        # implementation (PyTorch's own float32 step flips such elements too, on some CPUs). Elements whose sign
        # flipped that way are left out of the parameter comparison; they must stay rare.
        g_ours = ours["grads"][n][leaf]
        noise = np.maximum(np.abs(g_ours - g_true), np.abs(ref["grads"][n][leaf] - g_true))
        flipped = (np.sign(g_ours) != np.sign(g_true)) & (np.abs(g_true) <= 2 * noise)
        assert flipped.mean() < 0.01, (n, leaf, flipped.mean())
        for what in ("grads", "params"):
            keep = ~flipped if what == "params" else np.ones_like(flipped)
            ours_err = _rel(ours[what][n][leaf][keep], truth[what][n][leaf][keep])
            torch_err = _rel(ref[what][n][leaf][keep], truth[what][n][leaf][keep])
            # within 1e-4 of the truth, or at worst twice as far as PyTorch's own float32 step is
            assert ours_err < max(1e-4, 2 * torch_err), (what, n, leaf, ours_err, torch_err)


@pytest.mark.slow
def test_nonfinite_loss_leaves_the_state_unchanged(setup):
    # A NaN weight makes the loss NaN for certain. (A NaN pixel is not a reliable trigger on XLA's CPU
    # backend: its max-pooling can drop NaNs, so the loss may come out finite.)
    *_, vgg_params, params, content, style = setup
    content, style = content[:, :16, :16], style[:, :16, :16]
    tx = train.make_optimizer(CONFIG)
    lc = dataclasses.replace(adain.LossConfig.from_config(CONFIG), content_weight=float("nan"),
                             spec=vgg.SPECS["adain"])
    state = train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step = jax.jit(lambda s, v, c, st: train.train_step(s, {"vgg": v}, {"content": c, "style": st}, tx=tx,
                                                        loss_fn=adain.loss_fn, static=lc))
    new_state, metrics = step(jax.tree.map(jnp.array, state), vgg_params, jnp.asarray(content),
                              jnp.asarray(style))
    assert not bool(metrics["finite"]) and np.isnan(float(metrics["loss"]))
    for a, b in zip(jax.tree.leaves((new_state.params, new_state.opt_state)),
                    jax.tree.leaves((state.params, state.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_bfloat16_compute_stays_close(setup):
    *_, vgg_params, params, content, style = setup
    spec = vgg.SPECS["adain"]
    f32 = adain.LossConfig.from_config(CONFIG)
    bf16 = adain.LossConfig.from_config(_Config(CONFIG, dtype="bfloat16"))
    loss = jax.jit(adain.compute_loss, static_argnums=(4, 5))
    a = float(loss(params, vgg_params, content, style, spec, f32)[0])
    b = float(loss(params, vgg_params, content, style, spec, bf16)[0])
    assert np.isfinite(b) and b == pytest.approx(a, rel=5e-2)


# Every strategy of the one decoder walk against the reference walk (explicit upsampling): the matmul kernel
# gradient forced on, the trainer's strategy (Winograd for the 256-channel layers, matmul kernel gradients on CPU),
# and the fused low-resolution upsample-convolution of inference. Values and gradients agree.
_FORCED_MATMUL = lambda x, layer, padding: ops.conv_matmul_weight_grad(x, layer, padding)  # noqa: E731


@pytest.mark.parametrize("strategy", [
    # op by op, test_ops.py's every-strategy test covers it in the fast tier
    pytest.param(dict(conv=_FORCED_MATMUL), marks=pytest.mark.slow),
    dict(conv=ops.conv_for_training),
    dict(fused_upsample=True, conv=ops.conv_plain),
], ids=["matmul-weight-grad", "training", "fused-upsample"])
def test_decoder_strategies_equal_the_reference_walk(strategy):
    rng = np.random.default_rng(0)
    params = jax.jit(decoder.init_params)(jax.random.PRNGKey(3))
    t = jnp.asarray(rng.random((2, 2, 3, 512)), jnp.float32)
    ours_fn = lambda p, x: decoder.decode(p, x, **strategy)  # noqa: E731
    # the trainer's strategy against the Winograd walk it computes (same forward, other kernel gradients); the
    # Winograd layers themselves are tested against conv_plain in test_ops.py
    ref_conv = ops.conv_winograd if strategy.get("conv") is ops.conv_for_training else ops.conv_plain
    ref_fn = lambda p, x: decoder.decode(p, x, conv=ref_conv)  # noqa: E731
    y, y_ref = np.asarray(jax.jit(ours_fn)(params, t)), np.asarray(jax.jit(ref_fn)(params, t))
    if strategy.get("fused_upsample"):
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    else:
        np.testing.assert_array_equal(y, y_ref)
    grad = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(jnp.square(f(p, t)))))(params)  # noqa: E731
    ours, ref = grad(ours_fn), grad(ref_fn)
    for name in ref:
        for leaf in ("kernel", "bias"):
            assert _rel(ours[name][leaf], ref[name][leaf]) < 1e-4, (name, leaf)
