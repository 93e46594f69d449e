"""Solving the Gatys problem: the optimisers, the compiled chunks of iterations and the multi-scale driver."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from nst_jax import color, vgg
from nst_jax import image as imagelib
from nst_jax.checks import check_weights
from nst_jax.errors import NstError, WeightsError
from nst_jax.gatys.config import GatysConfig
from nst_jax.gatys.objective import (
    SOFTCLIP_BETA,
    Params,
    Targets,
    loss_terms,
    make_targets,
    prepare_vgg,
    softclip,
    softclip_inverse,
)
from nst_jax.typing import Array


class _Static(NamedTuple):
    """The hashable part of the problem: what the compiled step is specialised on."""

    spec: vgg.VGGSpec
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    optimizer: str
    lr: float | None
    lbfgs_memory: int
    linesearch_steps: int
    beta: float = SOFTCLIP_BETA
    linesearch: str = "armijo"


def _objective(z: Array, targets: Targets, enc: Params, static: _Static) -> Array:
    x = softclip(z, static.beta)
    return loss_terms(x, targets, enc, static.spec, static.content_layers, static.style_layers)["total"]


# ----------------------------------------------------------------------------------------------------
# Compiled pieces (one compilation per image shape and static settings). `enc` is `prepare_vgg`'s tree: its
# transposed kernels are arguments, computed once outside the loops.


@functools.partial(jax.jit, static_argnames=("static",))
def _terms(z: Array, targets: Targets, enc: Params, static: _Static) -> dict[str, Array]:
    x = softclip(z, static.beta)
    return loss_terms(x, targets, enc, static.spec, static.content_layers, static.style_layers)


class LBFGSState(NamedTuple):
    """State of `scale_by_lbfgs_checked`: the last point and gradient and a ring of accepted curvature pairs."""

    updates_made: Array
    head: Array  # slot of the next accepted pair
    last_params: Array  # the point of the last update
    last_grad: Array  # the gradient there
    last_direction: Array  # the direction returned there
    s: Array  # (m, ...) parameter differences
    y: Array  # (m, ...) gradient differences
    rho: Array  # (m,) 1 / (y . s); 0 marks an empty slot
    gamma: Array  # initial inverse-Hessian scale: (s . y) / (y . y) of the newest accepted pair


# torch.optim.LBFGS keeps a curvature pair only if y . s exceeds this (its absolute threshold).
CURVATURE_EPS = 1e-10
# Sufficient decrease of the "armijo" line search: f(z + t d) <= f(z) + c1 t g . d (Nocedal & Wright's c1).
ARMIJO_C1 = 1e-4


def scale_by_lbfgs_checked(memory_size: int, first_step: float = 1.0) -> optax.GradientTransformation:
    """The L-BFGS direction H g (two-loop recursion) as torch.optim.LBFGS and neural-style compute it.

    Against `optax.scale_by_lbfgs` it differs where measurements showed it matters on the Gatys problem
    (benchmarks/RESULTS.md): a pair (s, y) enters the memory only when y . s > `CURVATURE_EPS` (optax stores
    every pair, and a pair of negative curvature makes H indefinite), and the very first direction is the gradient
    scaled by min(1, 1 / ||g||_1) (optax: 1 / ||g||_2, a far longer first step on an image-sized problem).

    Args:
      memory_size: pairs kept (neural-style, torch: 100).
      first_step: multiplies the first direction (torch: its lr).

    Returns:
      A transformation mapping the gradient at `params` (a single array) to the direction H g (descend along
      its negative).
    """

    def init_fn(params: Array) -> LBFGSState:
        z = jnp.zeros((memory_size,) + params.shape, params.dtype)
        return LBFGSState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros_like(params),
                          jnp.zeros_like(params), jnp.zeros_like(params), z, z, jnp.zeros((memory_size,), jnp.float32),
                          jnp.ones((), jnp.float32))

    def update_fn(grad: Array, state: LBFGSState, params: Array) -> tuple[Array, LBFGSState]:
        hi = lax.Precision.HIGHEST
        # The step taken is a multiple of the last direction. Its length comes from the parameters' difference,
        # but s itself as that multiple: a difference of float32 pixels near 0.5 loses most digits of a small
        # step (the first one especially), and a rounded s spoils every later direction.
        d_prev = state.last_direction.astype(jnp.float32)
        dd = jnp.vdot(d_prev, d_prev, precision=hi)
        eta = jnp.vdot((params - state.last_params).astype(jnp.float32), d_prev, precision=hi) / jnp.where(
            dd > 0, dd, 1.0)
        s_new = eta * d_prev
        y_new = (grad - state.last_grad).astype(jnp.float32)
        ys = jnp.vdot(y_new, s_new, precision=hi)
        accept = (state.updates_made > 0) & (ys > CURVATURE_EPS)
        slot = state.head
        s_mem = jnp.where(accept, state.s.at[slot].set(s_new), state.s)
        y_mem = jnp.where(accept, state.y.at[slot].set(y_new), state.y)
        rho = jnp.where(accept, state.rho.at[slot].set(1.0 / jnp.where(accept, ys, 1.0)), state.rho)
        gamma = jnp.where(accept, ys / jnp.vdot(y_new, y_new, precision=hi), state.gamma)
        head = jnp.where(accept, (slot + 1) % memory_size, slot)

        def newest_first(j, carry):
            q, alphas = carry
            i = (head - 1 - j) % memory_size
            a = rho[i] * jnp.vdot(s_mem[i], q, precision=hi)
            return q - a * y_mem[i], alphas.at[i].set(a)

        q, alphas = lax.fori_loop(0, memory_size, newest_first,
                                  (grad.astype(jnp.float32), jnp.zeros((memory_size,), jnp.float32)))
        r = q * gamma

        def oldest_first(j, r):
            i = (head + j) % memory_size
            b = rho[i] * jnp.vdot(y_mem[i], r, precision=hi)
            return r + s_mem[i] * (alphas[i] - b)

        r = lax.fori_loop(0, memory_size, oldest_first, r)
        g1 = jnp.sum(jnp.abs(grad.astype(jnp.float32)))
        first = grad.astype(jnp.float32) * (first_step * jnp.minimum(1.0, 1.0 / g1))
        direction = jnp.where(state.updates_made == 0, first, r).astype(grad.dtype)
        return direction, LBFGSState(state.updates_made + 1, head, params, grad, direction, s_mem, y_mem, rho,
                                     gamma)

    return optax.GradientTransformation(init_fn, update_fn)


def _make_optimizer(static: _Static) -> optax.GradientTransformation:
    if static.optimizer == "adam":
        return optax.adam(0.02 if static.lr is None else static.lr)
    lr = 1.0 if static.lr is None else static.lr
    if static.linesearch in ("none", "armijo"):
        # neural-style's L-BFGS direction and step; "armijo" halves the step in `_run_chunk` where it must.
        return optax.chain(scale_by_lbfgs_checked(static.lbfgs_memory), optax.scale(-lr))
    linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=static.linesearch_steps,
                                                initial_guess_strategy="one")
    if static.linesearch == "zoom":
        return optax.chain(scale_by_lbfgs_checked(static.lbfgs_memory), optax.scale(-lr), linesearch)
    # "optax-zoom": optax's own L-BFGS (every pair kept, first step 1/||g||_2); lr=None lets the line search's
    # accepted step be the step, a given lr scales its first trial.
    return optax.lbfgs(learning_rate=static.lr, memory_size=static.lbfgs_memory, linesearch=linesearch)


def _uses_linesearch(static: _Static) -> bool:
    return static.optimizer == "lbfgs" and static.linesearch != "none"


@functools.partial(jax.jit, static_argnames=("static",))
def _init_state(z: Array, targets: Targets, enc: Params, static: _Static) -> Any:
    """Optimiser state at z; for L-BFGS with the value and gradient at z already stored.

    Storing them here (rather than `optax.value_and_grad_from_state`'s `lax.cond` inside the loop) keeps one copy of
    the network's forward and backward pass out of the compiled loop: the line search already holds the others.
    """
    tx = _make_optimizer(static)
    state = tx.init(z)
    if _uses_linesearch(static):
        value, grad = jax.value_and_grad(_objective)(z, targets, enc, static)
        if static.linesearch == "armijo":
            return {"tx": state, "value": value, "grad": grad}
        state = optax.tree_utils.tree_set(state, value=value, grad=grad)
    return state


@functools.partial(jax.jit, static_argnames=("static",), donate_argnames=("z", "state"))
def _run_chunk(z: Array, state: Any, targets: Targets, enc: Params, n: Array,
               static: _Static) -> tuple[Array, Any, Array, Array]:
    """`n` optimiser steps in one compiled loop. Returns (z, state, loss, function evaluations)."""
    tx = _make_optimizer(static)
    fn = functools.partial(_objective, targets=targets, enc=enc, static=static)

    if static.optimizer == "lbfgs" and static.linesearch == "armijo":
        vg = jax.value_and_grad(fn)

        def body(_, carry):
            z, state, _, evals = carry
            value, grad = state["value"], state["grad"]
            d, tx_state = tx.update(grad, state["tx"], z)
            slope = jnp.vdot(grad, d, precision=lax.Precision.HIGHEST)

            def more(c):
                t, _, v, _, k = c
                # NaN or inf counts as no decrease
                return (k == 0) | (~(v <= value + ARMIJO_C1 * t * slope) & (k < static.linesearch_steps))

            def trial(c):
                t, _, _, _, k = c
                t = jnp.where(k == 0, jnp.float32(1.0), t * jnp.float32(0.5))
                zt = z + t * d
                v, g = vg(zt)
                return t, zt, v, g, k + 1

            init_c = (jnp.float32(1.0), z, value, grad, jnp.zeros((), jnp.int32))
            _, z, v, g, k = lax.while_loop(more, trial, init_c)
            return z, {"tx": tx_state, "value": v, "grad": g}, v, evals + k
    elif _uses_linesearch(static):
        def body(_, carry):
            z, state, _, evals = carry
            value = optax.tree_utils.tree_get(state, "value")
            grad = optax.tree_utils.tree_get(state, "grad")
            updates, state = tx.update(grad, state, z, value=value, grad=grad, value_fn=fn)
            z = optax.apply_updates(z, updates)
            steps = optax.tree_utils.tree_get(state, "num_linesearch_steps")
            return z, state, optax.tree_utils.tree_get(state, "value"), evals + steps.astype(jnp.int32)
    else:
        def body(_, carry):
            z, state, _, evals = carry
            value, grad = jax.value_and_grad(fn)(z)
            # optax's bias correction raises a Python float to an int32 count, which strict promotion refuses.
            with jax.numpy_dtype_promotion("standard"):
                updates, state = tx.update(grad, state, z)
            z = optax.apply_updates(z, updates)
            return z, state, value, evals + 1

    init = (z, state, jnp.full((), jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
    return lax.fori_loop(0, n, body, init)


# ----------------------------------------------------------------------------------------------------
# Problem setup


def _as_batch(img: Any, what: str) -> np.ndarray:
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[0] != 1 or a.shape[-1] != 3:
        raise NstError(f"{what} must be one RGB image (H, W, 3) or (1, H, W, 3), got shape {a.shape}")
    return a


def initial_image(init: str, content: np.ndarray, styles: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """The starting image at the content's size: the content, seeded noise, or the first style resized."""
    h, w = content.shape[1:3]
    if init == "content":
        return content
    if init == "style":
        return np.asarray(imagelib.resize(styles[0], (h, w), "bilinear"))
    noise = jax.random.normal(jax.random.PRNGKey(seed), content.shape, jnp.float32)
    return np.asarray(jnp.clip(0.5 + 0.1 * noise, 0.0, 1.0))


def _check_inputs(params: Params, spec: vgg.VGGSpec, config: GatysConfig, n_styles: int,
                  style_blend: Sequence[float] | None, masks: Sequence[Any] | None,
                  style_masks: Sequence[Any | None] | None, init_image: Any | None) -> tuple[str, np.ndarray | None]:
    """Raise `NstError` (in `stylize`'s parameter names) for arguments that do not fit.

    Returns:
      (the deepest tap the config needs, `init_image` as a batch or None).
    """
    if not n_styles:
        raise NstError("at least one style image is needed")
    if style_blend is not None:
        check_weights(style_blend, n_styles, what="style_blend")
    if masks is not None:
        if len(masks) != n_styles:
            raise NstError(f"{len(masks)} masks for {n_styles} styles: give one per style")
        for i, m in enumerate(masks):
            if float(np.max(np.asarray(m, np.float32))) <= 0:
                raise NstError(f"mask {i + 1} is empty (all black): it selects no pixels")
    if init_image is not None:
        init_image = _as_batch(init_image, "init image")
    if style_masks is not None and len(style_masks) != n_styles:
        raise NstError(f"{len(style_masks)} style masks for {n_styles} styles")
    last = vgg.deepest(tuple(config.content_layers) + tuple(config.style_layers))
    missing = [n for n in vgg.expected_shapes(spec, last) if n not in params]
    if missing:
        have = [n for n, _, _ in vgg.CONVS if n in params]
        raise WeightsError(f"these VGG19 weights ({spec.source}) end at {have[-1] if have else 'nothing'}, but layer "
                           f"{last} needs {', '.join(missing)}: choose shallower content_layers/style_layers")
    vgg.check_vgg_params(params, spec, last)
    return last, init_image


# ----------------------------------------------------------------------------------------------------
# The driver


class GatysStep(NamedTuple):
    """Progress passed to a callback after each compiled chunk."""

    scale: int  # index into the scales
    size: tuple[int, int]  # (H, W) being optimised
    iteration: int  # iterations done at this scale
    total_iteration: int  # iterations done over all scales
    loss: float  # total loss at the current image
    evaluations: int  # loss+gradient evaluations so far (all scales)
    image: Array  # (1, H, W, 3) current image in [0, 1] (colour preservation applied)


class GatysResult(NamedTuple):
    """The stylised image and how it got there."""

    image: np.ndarray  # (1, H, W, 3) float32 in [0, 1]
    losses: dict[str, float]  # final weighted terms: content, style, tv, total
    initial_losses: dict[str, float]  # the same at the start of the first scale
    history: list[tuple[int, float]]  # (total iteration, total loss) after each chunk
    evaluations: int  # loss+gradient evaluations (all scales)


def _float_terms(terms: Mapping[str, Array]) -> dict[str, float]:
    return {k: float(v) for k, v in terms.items()}


def stylize(content: Any, styles: Sequence[Any], params: Params, spec: vgg.VGGSpec,
            config: GatysConfig = GatysConfig(), *,  # noqa: B008 - a frozen dataclass
            style_blend: Sequence[float] | None = None,
            masks: Sequence[Any] | None = None, style_masks: Sequence[Any | None] | None = None,
            init_image: Any | None = None, callback: Callable[[GatysStep], None] | None = None,
            save_every: int | None = None, progress: bool = False) -> GatysResult:
    """Optimise an image so its VGG19 features match the content's and its Gram matrices the styles'.

    Args:
      content: (1, H, W, 3) or (H, W, 3) float in [0, 1] at any size (resized to each of `config.scales`).
      styles: one or more style images in [0, 1] (resized by `config.style_scale` at each scale).
      params, spec: VGG19 parameters and their identity (`nst_jax.weights.load_vgg` or `vgg.init_params`);
        use `spec.replace(pooling="avg")` for average pooling.
      config: `GatysConfig`.
      style_blend: one weight per style (see `make_targets`).
      masks: one mask per style over the content image (H, W) in [0, 1], for spatial control.
      style_masks: per style, None or a mask over that style image.
      init_image: start from this image (resized to the first scale) instead of `config.init`
        (neural-style's -init_image).
      callback: called with a `GatysStep` after each chunk of iterations.
      save_every: also end a chunk at every multiple of this many (total) iterations, so a callback can save
        intermediate images there.
      progress: show a tqdm progress bar.

    Returns:
      `GatysResult` with the final image at the last scale's size.

    Raises:
      NstError: an argument or setting out of range, named by its parameter (WeightsError: `params` too shallow).
    """
    config.validate()
    content = _as_batch(content, "content image")
    styles = [_as_batch(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    last, init_image = _check_inputs(params, spec, config, len(styles), style_blend, masks, style_masks,
                                     init_image)
    enc = prepare_vgg(params, last)

    weights = config.loss_weights(spec)
    static = _Static(spec, tuple(config.content_layers), tuple(config.style_layers), config.optimizer,
                     None if config.lr is None else float(config.lr), config.lbfgs_memory, config.linesearch_steps,
                     linesearch=config.linesearch)
    scales = config.scales or (max(content.shape[1:3]),)
    its = config.iterations_per_scale()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(its), unit="it", desc="gatys", dynamic_ncols=True)

    def finish(x: Array, c_img: np.ndarray) -> Array:
        if config.preserve_color == "luminance":
            return color.luminance_transfer(x, jnp.asarray(c_img))
        return x

    history: list[tuple[int, float]] = []
    evals = 0
    done_total = 0
    x_prev: np.ndarray | None = None
    initial_losses: dict[str, float] = {}
    final_terms: dict[str, float] = {}
    try:
        for si, (size, n_its) in enumerate(zip(scales, its, strict=True)):
            c_img = content if config.scales is None else imagelib.fit_max_side(content, size)
            hw = c_img.shape[1:3]
            s_imgs = [imagelib.fit_max_side(s, max(1, int(round(config.style_scale * max(hw))))) for s in styles]
            if config.preserve_color == "histogram":
                s_imgs = [np.asarray(color.coral(s, c_img)) for s in s_imgs]
            targets = make_targets(enc, spec, c_img, s_imgs, weights, config, style_blend=style_blend,
                                   masks=masks, style_masks=style_masks)
            if x_prev is None and init_image is not None:
                x0 = np.asarray(imagelib.resize(init_image, hw, "bilinear"))
            elif x_prev is None:
                x0 = initial_image(config.init, c_img, s_imgs, config.seed)
            else:
                x0 = np.asarray(imagelib.resize(x_prev, hw, "bilinear"))
            z = softclip_inverse(jnp.asarray(x0))
            if si == 0:
                initial_losses = _float_terms(_terms(z, targets, enc, static))
            if n_its > 0:
                state = _init_state(z, targets, enc, static)
                if _uses_linesearch(static):
                    evals += 1
            done = 0
            while done < n_its:
                stop = min(n_its, (done // config.chunk_size + 1) * config.chunk_size)
                if save_every:
                    stop = min(stop, ((done_total // save_every) + 1) * save_every - done_total + done)
                k = stop - done
                z, state, loss, chunk_evals = _run_chunk(z, state, targets, enc, jnp.asarray(k, jnp.int32),
                                                         static)
                done += k
                done_total += k
                evals += int(chunk_evals)
                loss_f = float(loss)
                history.append((done_total, loss_f))
                if bar is not None:
                    bar.update(k)
                    bar.set_postfix(size=f"{hw[1]}x{hw[0]}", loss=f"{loss_f:.4g}", refresh=False)
                if callback is not None:
                    img = finish(softclip(z, static.beta), c_img)
                    callback(GatysStep(si, tuple(hw), done, done_total, loss_f, evals, img))
            final_terms = _float_terms(_terms(z, targets, enc, static))
            x_prev = np.asarray(softclip(z, static.beta))
            if si == len(scales) - 1:
                out = np.asarray(finish(jnp.asarray(x_prev), c_img), np.float32)
    finally:
        if bar is not None:
            bar.close()
    return GatysResult(np.clip(out, 0.0, 1.0), final_terms, initial_losses, history, evals)
