"""Training and fine-tuning the CIN family on the family-neutral loop (issue 11 items 4 and 5).

The session's tiny CIN run (configs/tiny_cin.py: 32 px, batch 2, a narrow transformer, a random VGG16; its
"learns and resumes bitwise" is test_train_families.py) loads back with a row per style and stylizes;
fine-tuning adds a style whose rows alone change (bitwise check on everything else); and Magenta's loss and its
gradients equal the same computation written in plain torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from nst_jax import train
from nst_jax.errors import NstError
from nst_jax.models import cin, trained
from nst_jax.models.cin import spec as cin_spec
from nst_jax.models.cin import train as cin_train


@pytest.mark.slow
def test_trained_model_has_a_row_per_style_and_stylizes(trained_run):
    from nst_jax.stylize import Stylizer

    workdir, _ = trained_run("cin")
    family, params, config = trained.load_trained(workdir)
    assert family.name == "cin" and cin.num_styles(params) == 2 and config["step"] == 12
    st = Stylizer.load(checkpoint=workdir)
    assert st.num_styles == 2
    content = np.random.default_rng(3).uniform(0, 1, (1, 30, 34, 3)).astype(np.float32)
    a = st.stylize(content, [0])
    b = st.stylize(content, [1])
    assert a.shape == (1, 30, 34, 3) and np.all(np.isfinite(a))
    assert np.max(np.abs(a - b)) > 1e-4  # the rows differ after training
    with pytest.raises(NstError, match="out of range"):
        st.stylize(content, [2])


_flat = helpers.flat


@pytest.mark.slow
def test_finetune_changes_only_the_new_rows(trained_run, image_dirs, tmp_path):
    import shutil

    # fine-tune from a copy of the base, removed afterwards: the fine-tuned run must load on its own
    base_dir = tmp_path / "base_copy"
    shutil.copytree(trained_run("cin")[0], base_dir)
    _, base, _ = trained.load_trained(base_dir)
    c = helpers.tiny_config("cin", image_dirs, init_from=str(base_dir), num_steps=12)
    c.content_data = helpers.write_images(tmp_path / "content", 4, seed=0)
    c.style_images = helpers.write_images(tmp_path / "new_style", 1, seed=2)
    c.cin.num_styles = 1
    # the grown shape is what init_params (and so checkpoint restore) sees
    shapes = jax.eval_shape(lambda k: cin.FAMILY.init_params(k, c), jax.random.PRNGKey(0))
    assert shapes["contract"]["0"]["norm"]["gamma"].shape == (3, 8)
    start = cin.start_params(c, base)
    np.testing.assert_array_equal(start["residual"]["0"]["1"]["norm"]["beta"][2],
                                  np.mean(base["residual"]["0"]["1"]["norm"]["beta"], axis=0))

    workdir = tmp_path / "finetuned"
    summary = train.train_and_evaluate(c, workdir)
    assert summary["step"] == 12
    shutil.rmtree(base_dir)
    family, tuned, saved = trained.load_trained(workdir)
    # the base's layout is recorded in the run's own config (2 rows; the run adds 1)
    assert saved["cin"]["init_spec"]["num_styles"] == 2 and saved["cin"]["init_spec"]["residual_blocks"] == 1
    c = trained.config_from_dict(saved)  # the fixed-batch losses below need no base either
    # the loss of the new style on a fixed batch, before and after (the logged windows see other batches)
    frozen, static = cin.setup(c)
    streams, samples = cin.open_streams(c, lambda *a: None)
    batch = {"content": jnp.asarray(samples["content"]), "style_id": jnp.asarray(samples["style_id"])}
    assert np.all(samples["style_id"] == 2)
    before = float(cin.loss_fn(jax.tree.map(jnp.asarray, start), frozen, batch, static)[0])
    after = float(cin.loss_fn(jax.tree.map(jnp.asarray, tuned), frozen, batch, static)[0])
    assert after < 0.9 * before, (before, after)
    assert family.name == "cin" and cin.num_styles(tuned) == 3
    old, new = _flat(base), _flat(tuned)
    assert old.keys() == new.keys()
    changed_rows = 0
    for name, a in old.items():
        b = new[name]
        if name.endswith(("gamma", "beta")):
            np.testing.assert_array_equal(b[:2], a)  # bitwise: the trained styles are untouched
            changed_rows += int(np.any(b[2] != start_of(start, name)))
        else:
            np.testing.assert_array_equal(b, a)
    assert changed_rows > 0


def start_of(start, name):
    node = start
    for p in name.split("/"):
        node = node[p]
    return np.asarray(node)[2]


def test_config_errors_name_the_key(image_dirs):
    c = helpers.tiny_config("cin", image_dirs)
    c.cin.num_styles = 3
    with pytest.raises(NstError, match=r"config\.cin\.num_styles"):
        train.validate_config(c, cin.FAMILY)
    c = helpers.tiny_config("cin", image_dirs, image_size=30)
    with pytest.raises(NstError, match=r"config\.image_size"):
        train.validate_config(c, cin.FAMILY)
    c = helpers.tiny_config("cin", image_dirs, style_layers=("relu5_4",), style_layer_weights=(1.0,))
    with pytest.raises(NstError, match=r"config\.style_layers"):
        train.validate_config(c, cin.FAMILY)


def test_one_train_step_is_adam_on_the_loss_gradient(image_dirs):
    """The family-neutral `train_step` on the tiny CIN recipe's real setup (random VGG16): Adam's update of the
    family's loss gradient, and the rows of styles outside the batch stay bitwise."""
    import optax

    c = helpers.tiny_config("cin", image_dirs)
    frozen, static = cin.setup(c)
    tx = train.make_optimizer(c)
    state = train.init_state(jax.random.PRNGKey(0), tx, cin.FAMILY.init_params, c)
    rng = np.random.default_rng(0)
    batch = {"content": jnp.asarray(rng.uniform(0, 1, (2, 32, 32, 3)), jnp.float32),
             "style_id": jnp.asarray([1, 1], jnp.int32)}

    @jax.jit
    def step_and_reference(state):
        new, metrics = train.train_step(state, frozen, batch, None, tx=tx, loss_fn=cin.loss_fn, static=static)
        (loss, _), grads = jax.value_and_grad(cin.loss_fn, has_aux=True)(state.params, frozen, batch, static)
        with jax.numpy_dtype_promotion("standard"):  # optax's step count is int32 (see train.train_step)
            updates, _ = tx.update(grads, state.opt_state, state.params)
        return new, metrics, loss, optax.apply_updates(state.params, updates)

    new, metrics, loss, expected = step_and_reference(state)
    assert int(new.step) == 1 and bool(metrics["finite"])
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    before, after, want = helpers.flat(state.params), helpers.flat(new.params), helpers.flat(expected)
    moved = 0
    for k in before:
        np.testing.assert_allclose(np.asarray(after[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-7, err_msg=k)
        if k.endswith(("gamma", "beta")):
            np.testing.assert_array_equal(np.asarray(after[k])[0], np.asarray(before[k])[0])  # style 0: no step
            moved += int(np.any(np.asarray(after[k])[1] != np.asarray(before[k])[1]))
    assert moved > 0


# ----------------------------------------------------------------------------------------------------
# Magenta's loss and its gradients against plain torch


def _torch_transformer(torch, p, x, onehot, spec):
    F = torch.nn.functional

    def conv(h, q, stride=1, up=1):
        if up > 1:
            h = F.interpolate(h, scale_factor=up, mode="nearest")
        k = q["kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
        pad = k.shape[-1] // 2
        return F.conv2d(F.pad(h, (pad, pad, pad, pad), mode="reflect"), k, stride=stride)

    def norm(h, q):
        mean = h.mean(dim=(2, 3), keepdim=True)
        var = ((h - mean) ** 2).mean(dim=(2, 3), keepdim=True)
        gamma = (onehot @ q["norm"]["gamma"])[:, :, None, None]
        beta = (onehot @ q["norm"]["beta"])[:, :, None, None]
        return (h - mean) / torch.sqrt(var + spec.eps) * gamma + beta

    h = x.permute(0, 3, 1, 2)
    for i, (_, _, s) in enumerate(spec.contract):
        q = p["contract"][str(i)]
        h = torch.relu(norm(conv(h, q, stride=s), q))
    for b in range(spec.residual_blocks):
        q0, q1 = p["residual"][str(b)]["0"], p["residual"][str(b)]["1"]
        r = torch.relu(norm(conv(h, q0), q0))
        h = h + norm(conv(r, q1), q1)
    for i, (_, _, u) in enumerate(spec.expand):
        q = p["expand"][str(i)]
        h = norm(conv(h, q, up=u), q)
        if i < len(spec.expand) - 1:
            h = torch.relu(h)
    return torch.sigmoid(h)


def _torch_vgg16(torch, vp, x, taps):
    """VGG16 (zero padding, average pooling) on NCHW images; {tap: features}."""
    F = torch.nn.functional
    blocks = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    out, h = {}, x
    for b, n in blocks:
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            if name not in vp:
                return out
            h = torch.relu(F.conv2d(h, vp[name]["kernel"].permute(3, 2, 0, 1), vp[name]["bias"], padding=1))
            if f"relu{b}_{i}" in taps:
                out[f"relu{b}_{i}"] = h
        if len(out) == len(taps):
            return out
        h = F.avg_pool2d(h, 2)
    return out


def _gram(torch, f):
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


def test_loss_and_grads_match_torch():
    torch = pytest.importorskip("torch")
    from nst_jax import vgg
    from nst_jax.weights.resolve import random_encoder

    spec = cin.TransformerSpec(name="t", num_styles=3, contract=((6, 3, 1), (8, 3, 2), (8, 3, 2)),
                               residual_blocks=1, expand=((6, 3, 2), (4, 3, 2), (3, 5, 1)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(np.asarray, cin.init_params(jax.random.PRNGKey(1), spec))
    for layer in cin_spec.layers(spec):  # trained-looking tables, not 1 / 0
        q = params
        for k in layer.path:
            q = q[k]
        if "norm" in q:
            q["norm"]["gamma"] = rng.uniform(0.5, 1.5, q["norm"]["gamma"].shape).astype(np.float32)
            q["norm"]["beta"] = rng.normal(0, 0.2, q["norm"]["beta"].shape).astype(np.float32)
    vspec = vgg.SPECS["vgg16-random"].replace(pooling="avg")
    vp = random_encoder("vgg16-random", "relu3_3")
    content = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    styles = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    ids = np.array([2, 1], np.int32)  # rows; style image = row - offset
    static = cin_train.CINLoss(("relu2_2",), (1.0,), ("relu1_2", "relu2_2", "relu3_3"), (1e-1, 1e-2, 1e-3), vspec,
                         spec, "float32", 2, 1)
    jvp = jax.tree.map(jnp.asarray, vp)
    grams = jax.jit(cin_train._style_grams, static_argnums=(2, 3))(jvp, jnp.asarray(styles), vspec, static.style_layers)

    def f(p):
        return cin_train.compute_loss(p, jvp, grams, jnp.asarray(content), jnp.asarray(ids), static)

    # jitted: one program (op by op, the gradient alone compiled over 600 small ones)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(jax.tree.map(jnp.asarray, params))

    tp = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True), params)
    tv = jax.tree.map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), vp)
    x = torch.tensor(content, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(torch.tensor(ids, dtype=torch.int64), 3).to(torch.float64)
    g = _torch_transformer(torch, tp, x, onehot, spec)
    taps = ("relu1_2", "relu2_2", "relu3_3")
    fg = _torch_vgg16(torch, tv, g, taps)
    fc = _torch_vgg16(torch, tv, x.permute(0, 3, 1, 2), taps)
    fs = _torch_vgg16(torch, tv, torch.tensor(styles, dtype=torch.float64).permute(0, 3, 1, 2), taps)
    t_content = ((fg["relu2_2"] - fc["relu2_2"]) ** 2).mean()
    sid = torch.tensor(ids - 1, dtype=torch.int64)
    t_style = sum(w * ((_gram(torch, fg[k]) - _gram(torch, fs[k])[sid]) ** 2).mean()
                  for k, w in zip(static.style_layers, static.style_weights, strict=True))
    t_loss = t_content + t_style
    t_loss.backward()

    assert float(loss) == pytest.approx(float(t_loss.detach()), rel=1e-4)
    assert float(metrics["loss_content"]) == pytest.approx(float(t_content.detach()), rel=1e-4)
    assert float(metrics["loss_style"]) == pytest.approx(float(t_style.detach()), rel=1e-4)
    ours, theirs = _flat(jax.tree.map(np.asarray, grads)), {k: v.grad.numpy() for k, v in helpers.flat(tp).items()}
    assert ours.keys() == theirs.keys()
    # The last residual beta's gradient is exactly zero in exact arithmetic (a per-channel constant through a
    # convolution is removed by the next instance norm): leaves that small are compared against the whole
    # gradient's size instead of their own.
    total = np.sqrt(sum(np.sum(v ** 2) for v in theirs.values()))
    for k in ours:
        err = np.linalg.norm(ours[k] - theirs[k]) / max(np.linalg.norm(theirs[k]), 1e-3 * total)
        assert err < 1e-4, (k, err)
    # rows of the unused style (row 0) get no gradient
    assert np.all(ours["contract/0/norm/gamma"][0] == 0)


