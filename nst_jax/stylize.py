"""Style transfer in one forward pass for any model family: the `Stylizer` inference API.

A `Stylizer` holds a loaded model (`nst_jax.models.open.open_model`: AdaIN's encoder and decoder, a CIN table
network, Magenta's arbitrary network), jit-compiles its passes once per input shape and caches each style's
condition (AdaIN: relu4_1 statistics; CIN: table weights; arbitrary: a style vector). It offers `alpha` (the
content/style trade-off, per image if wanted), style interpolation over N styles, N masks for N styles, a
per-pixel strength map, colour preservation ("luminance", or "histogram": each style recoloured to the content
with CORAL), tiles for pictures of any size (`nst_jax.tiling`), batches of contents against one style
(`stylize`) and one content against many styles (`stylize_each`).

Shapes and compilation: `jax.jit` keeps one executable per distinct input shape; a stream of frames of one size
compiles once, a folder of photos of different sizes once per size (resize with `content_size` to share shapes).
Nothing is padded to buckets, because padding would change the content statistics. Outputs always have the
content's size (what a network makes beyond it is cropped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color, strength, tiling
from nst_jax.checks import alpha_values, image_batch, normalise_weights
from nst_jax.errors import NstError
from nst_jax.family_programs import jitted as _jitted
from nst_jax.files import array_digest
from nst_jax.image import masks_to_grid, to_uint8
from nst_jax.models import adain
from nst_jax.models.open import Loaded, open_model
from nst_jax.typing import Array
from nst_jax.vgg import VGGSpec

ColorMode = Literal["luminance", "histogram"]
COLOR_MODES = ("luminance", "histogram")
# AdaIN's statistics API (the one before conditions) is the AdaIN family's; re-exported under its old home.
StyleStats = adain.StyleStats


# the argument checks `nst_jax.gatys` shares
_as_batch, _alphas = image_batch, alpha_values


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

    def __init__(self, loaded: Loaded | Any, vgg_spec: VGGSpec | None = None, decoder_params: Any = None, *,
                 dtype: Any = jnp.float32, cache_size: int = 1024):
        """A stylizer for a model (`nst_jax.models.open.open_model`), or for AdaIN's parameter trees.

        Args:
          loaded: a `Loaded` model of any family; or AdaIN's VGG19 weights at least up to conv4_1
            (`nst_jax.weights.load_vgg`), with `vgg_spec` (their identity) and `decoder_params`
            (`nst_jax.weights.load_decoder`).
          dtype: compute dtype: float32, or bfloat16 where the family supports it (`Family.dtypes`; opt-in, for
            GPU/TPU: slower than float32 on XLA's CPU backend; benchmarks/RESULTS.md).
          cache_size: style conditions kept (least recently used dropped first; 4 KiB each for AdaIN).

        Raises:
          WeightsError: the trees do not fit the networks.
          NstError: a dtype the family does not support.
        """
        if not isinstance(loaded, Loaded):
            loaded = adain.loaded(loaded, vgg_spec, decoder_params)
        family = loaded.family
        self.dtype = jnp.dtype(dtype)
        if self.dtype.name not in family.dtypes:
            raise NstError(f"compute dtype {self.dtype} is not supported for a {family.name} model "
                           f"({' or '.join(family.dtypes)})")
        # Weights cast once here, so the compiled programs hold weights of the compute dtype (statistics and
        # norms stay float32 inside the families).
        cast = partial(jax.tree.map, lambda v: jnp.asarray(v, jnp.float32).astype(self.dtype))
        self.family = family
        self.caps = family.caps
        self.params = cast(loaded.params)
        self.frozen = cast(loaded.frozen)
        self.static = loaded.static
        self.origin = loaded.origin
        self.cache_size = int(cache_size)
        self.style_encodes = 0
        self._cache: OrderedDict[str, Any] = OrderedDict()
        # Module-level jitted functions: stylizers with the same identity share compiled programs.
        self._cond_fn = partial(_jitted(family, "condition"), static=self.static)
        self._forward_fn = partial(_jitted(family, "stylize"), static=self.static)
        self._masked_fn = (partial(_jitted(family, "stylize_masked"), static=self.static)
                           if family.stylize_masked is not None else None)
        self._strength_fn = (partial(_jitted(family, "strength", strength.program), static=self.static)
                             if family.caps.strength_map else None)

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
        """Load weights and build a `Stylizer`: `Stylizer(open_model(model, vgg=, decoder=, checkpoint=))`.

        The arguments and errors are `nst_jax.models.open.open_model`'s: with no `model` (or "adain"),
        pytorch-AdaIN's released decoder and encoder unless `vgg`, `decoder` or `checkpoint` pick others; `model`
        names any family's network, file or training folder. `dtype` is the compute dtype.
        """
        return cls(open_model(model, vgg=vgg, decoder=decoder, checkpoint=checkpoint), dtype=dtype)

    @classmethod
    def load_model(cls, model: str | Path, *, dtype: Any = jnp.float32) -> Stylizer:
        """A stylizer for a model named by the user, of any family (every form `open_model` takes)."""
        return cls(open_model(model), dtype=dtype)

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
        # Called as is (not jitted): a table family's condition is bookkeeping on the weights, and it checks
        # indices against its table only where they are concrete values (`StyleError`).
        if isinstance(style, int | np.integer):
            style = np.asarray([int(style)])
        elif not np.issubdtype(np.asarray(style).dtype, np.integer):
            style = np.asarray(style, np.float32).reshape(1, -1)
        return self.family.condition(self.params, self.frozen, style, static=self.static)

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

    def compile_conditions(self, content: Any, condition: Any, alpha: Any) -> Callable[[Any, Any, Any], Array]:
        """`stylize_conditions` compiled ahead of time for the shapes of these arguments, outside jit's cache: the
        program lives as long as the returned function (the live server keeps an LRU of them, since every XLA
        CPU program holds its own memory mappings).

        Returns:
          run(content, condition, alpha) -> (N, H, W, 3) float32 JAX array, for arguments of the same shapes.
        """
        def args(content: Any, condition: Any, alpha: Any) -> tuple:
            cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), condition)
            n = jax.tree.leaves(cond)[0].shape[0]
            return (jnp.asarray(content, self.dtype), cond,
                    jnp.broadcast_to(jnp.asarray(alpha, jnp.float32).reshape(-1), (n,)))

        compiled = self._forward_fn.func.lower(self.params, self.frozen, *args(content, condition, alpha),
                                               static=self.static).compile()
        return lambda content, condition, alpha: compiled(self.params, self.frozen, *args(content, condition, alpha))

    def stylize_masked_conditions(self, content: Any, conditions: Any, masks: Any, alpha: Any) -> Array:
        """`stylize_conditions` with K conditions per image placed by masks, in one jitted pass.

        Args:
          content: (N, H, W, 3) in [0, 1]; conditions: leading axes (N, K); masks: (N, H, W, K) at the
            content's resolution; alpha: (N,).

        Raises:
          NstError: the family cannot place styles with masks.
        """
        if self._masked_fn is None or not self.caps.masks:
            raise NstError(f"a {self.family.name} model cannot place styles with masks")
        cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), conditions)
        return self._masked_fn(self.params, self.frozen, jnp.asarray(content, self.dtype), cond,
                               jnp.asarray(masks, jnp.float32), jnp.asarray(alpha, jnp.float32).reshape(-1))

    def stylize_strength_conditions(self, content: Any, conditions: Any, masks: Any, strength_map: Any,
                                    alpha: Any) -> Array:
        """One jitted pass with a per-pixel style strength (`nst_jax.strength`), e.g. the live page's control.

        Args:
          content: (N, H, W, 3) in [0, 1]; conditions: leading axes (N, K); masks: None (K = 1, the style
            everywhere) or (N, H, W, K) placing the K conditions; strength_map: (N, H, W) in [0, 1] at the
            content's resolution; alpha: (N,).

        Raises:
          NstError: the family cannot take a strength map.
        """
        strength.check_family(self.family)
        cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), conditions)
        m = None if masks is None else jnp.asarray(masks, jnp.float32)
        return self._strength_fn(self.params, self.frozen, jnp.asarray(content, self.dtype), cond, m,
                                 jnp.asarray(strength_map, jnp.float32), jnp.asarray(alpha, jnp.float32).reshape(-1))

    # ----------------------------------------------------------------------------------------------------
    # AdaIN's statistics API (conditions {"mean", "std"})

    def style_stats(self, style_img: Any) -> StyleStats:
        """relu4_1 statistics of one style image (AdaIN), computed once per distinct image (cached).

        Args:
          style_img: (H, W, 3) or (1, H, W, 3) float RGB in [0, 1].

        Returns:
          `StyleStats` with (1, 1, 1, 512) mean and std.
        """
        stats_type = self._need_stats("style_stats")
        x = _as_batch(style_img, "style image")
        if x.shape[0] != 1:
            raise NstError(f"style_stats takes one style image, got a batch of {x.shape[0]}")
        return stats_type(**self.condition(x))

    def _need_stats(self, what: str) -> type:
        """The family's statistics type, or an error where its conditions are not a style's statistics."""
        if self.family.stats_type is None:
            raise NstError(f"{what} is AdaIN's; this is a {self.family.name} model (use condition)")
        return self.family.stats_type

    def clear_cache(self) -> None:
        """Forget every cached style."""
        self._cache.clear()

    # Interpolate styles: a convex mix of their statistics (`nst_jax.models.adain.blend_stats`).
    blend_stats = staticmethod(adain.blend_stats)

    def stylize_stats(self, content: Any, mean: Any, std: Any, alpha: Any) -> Array:
        """`stylize_conditions` with AdaIN statistics: mean, std (N, 1, 1, 512) each."""
        self._need_stats("stylize_stats")
        return self.stylize_conditions(content, adain.stats_condition(mean, std), alpha)

    def _conditions_for(self, styles: Sequence[Any], content: np.ndarray | None) -> list[Any]:
        """The condition of each style; with `content` (1, H, W, 3), style images are first recoloured to it."""
        out = []
        for i, s in enumerate(styles):
            if isinstance(s, StyleStats):
                self._need_stats("StyleStats")
                if content is not None:
                    raise NstError("histogram colour preservation recolours style images; precomputed "
                                   "StyleStats cannot be recoloured (pass the style image instead)")
                out.append(adain.stats_condition(*(np.reshape(v, (1, 1, 1, -1)) for v in s)))
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
                preserve_color: ColorMode | None = None, strength_map: Any = None, tile: int | str | None = None,
                tile_stats: str | None = None, memory_budget: int | str | None = None) -> np.ndarray:
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
          strength_map: per-pixel style strength, (H, W) or (N, H, W) floats in [0, 1] (0 keeps the content, i.e.
            the alpha-0 output, 1 the full style), the content's size or its aspect ratio (resized); with
            blends, masks (it scales them), alpha (which scales it) and colour preservation. One pass
            (`nst_jax.strength`), or in tiles as any other request.
          tile: None (one pass), "auto" (tiles where the image would not fit `memory_budget`) or a tile side in
            pixels: tiled stylization with the whole image's statistics (`nst_jax.tiling`, docs/tiling.md).
          tile_stats: where tiles' statistics come from: "exact" or "thumbnail" (None: the family's default).
          memory_budget: bytes (or a size such as "2G") of working memory for one pass (None: a quarter of the
            available memory).

        Returns:
          (N, H, W, 3) float32 NumPy array in [0, 1].
        """
        x = _as_batch(content, "content")
        n, H, W, _ = x.shape
        tiling.check_stats(tile_stats)
        cond, m = self._request(x, styles, weights, masks, preserve_color)
        a = jnp.asarray(_alphas(alpha, n))
        tile_plan = self.tile_plan(H, W, tile, memory_budget)
        smap = None
        if strength_map is not None:
            strength.check_family(self.family)
            smap = strength.prepare(strength_map, n, (H, W))
        if tile_plan is not None:
            return np.stack([tiling.stylize_tiled(
                self, x[i], jax.tree.map(lambda v, i=i: v[i:i + 1], cond), None if m is None else m, a[i:i + 1],
                tile_plan, stats=tile_stats, luminance=preserve_color == "luminance", progress=False,
                strength=None if smap is None else strength.TileStrength(self.family, smap[i], m))
                for i in range(n)])
        xj = jnp.asarray(x, self.dtype)
        mj = None if m is None else jnp.broadcast_to(jnp.asarray(m), (n,) + m.shape)
        if smap is not None:  # a blend is the one style (K = 1) of the strength program
            conds = cond if m is not None else jax.tree.map(lambda v: v[:, None], cond)
            out = self._strength_fn(self.params, self.frozen, xj, conds, mj, jnp.asarray(smap), a)
        elif m is None:
            out = self._forward_fn(self.params, self.frozen, xj, cond, a)
        else:
            out = self._masked_fn(self.params, self.frozen, xj, cond, mj, a)
        if preserve_color == "luminance":
            out = color.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)

    def tile_plan(self, height: int, width: int, tile: int | str | None, memory_budget: int | str | None = None
                  ) -> tiling.TilePlan | None:
        """The tiles an image of `height` x `width` runs in, or None (one pass): `nst_jax.tiling.plan_for`."""
        return tiling.plan_for(self.family, height, width, tile, memory_budget)

    def stylize_image(self, image: np.ndarray, styles: Sequence[Any], *, weights: Sequence[float] | None = None,
                      alpha: float = 1.0, masks: Sequence[Any] | None = None,
                      preserve_color: ColorMode | None = None, strength_map: Any = None,
                      tile: int | str | None = "auto", tile_stats: str | None = None,
                      memory_budget: int | str | None = None, progress: bool = False, verbose: bool = False
                      ) -> np.ndarray:
        """One image of any size, (H, W, 3) uint8 (`nst_jax.image.load_uint8`), stylized into a new uint8 array,
        in tiles where it would not fit the budget; `stylize`'s arguments. The whole image is never held as
        float32 when tiled ("histogram" recolours the styles to its thumbnail).

        Returns:
          (H, W, 3) uint8.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise NstError(f"stylize_image takes an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
        H, W = img.shape[:2]
        tiling.check_stats(tile_stats)
        tile_plan = self.tile_plan(H, W, tile, memory_budget)
        if tile_plan is None:
            return to_uint8(self.stylize(tiling.as_float(img), styles, weights=weights, alpha=alpha, masks=masks,
                                         preserve_color=preserve_color, strength_map=strength_map)[0])
        if strength_map is not None:
            strength.check_family(self.family)
            strength_map = strength.prepare(strength_map, 1, (H, W))[0]
        small = tiling.thumbnail(img, 1)[None] if preserve_color == "histogram" else np.zeros((1, 1, 1, 3), np.float32)
        cond, m = self._request(small, styles, weights, masks, preserve_color, hw=(H, W))
        return tiling.stylize_tiled(self, img, cond, m, _alphas(alpha, 1), tile_plan, stats=tile_stats,
                                    out=np.empty((H, W, 3), np.uint8), luminance=preserve_color == "luminance",
                                    progress=progress, verbose=verbose, strength=None if strength_map is None
                                    else strength.TileStrength(self.family, strength_map, m))

    def _request(self, x: np.ndarray, styles: Sequence[Any], weights: Sequence[float] | None,
                 masks: Sequence[Any] | None, preserve_color: str | None, hw: tuple[int, int] | None = None
                 ) -> tuple[Any, np.ndarray | None]:
        """The conditions of a request for contents x (N, H, W, 3), checked: (leaves (N, ...), None), or with
        masks (leaves (N, K, ...), masks (H, W, K) at `hw`, default the contents' resolution)."""
        n, H, W, _ = x.shape
        H, W = hw or (H, W)
        if len(styles) == 0:
            raise NstError("give at least one style")
        self._check_color(preserve_color)
        if masks is not None and weights is not None:
            raise NstError("style weights blend styles everywhere and masks place them: give one or the "
                           "other")
        # Histogram matching makes each style's condition depend on the content image.
        groups = ([self._conditions_for(styles, x[i:i + 1]) for i in range(n)] if preserve_color == "histogram"
                  else [self._conditions_for(styles, None)])
        fill = partial(jax.tree.map, lambda v: v if v.shape[0] == n else jnp.broadcast_to(v, (n,) + v.shape[1:]))
        if masks is None:
            w = normalise_weights(weights, len(styles), what="style weights")
            blended = [self.blend(g, w) for g in groups]
            return fill(jax.tree.map(lambda *xs: jnp.concatenate(xs), *blended)), None
        if self._masked_fn is None or not self.caps.masks:
            raise NstError(f"a {self.family.name} model cannot place styles with masks")
        m = masks_to_grid(masks, (H, W), (H, W), len(styles))
        # conditions (N, K, ...): group g's K conditions, each with its leading 1 dropped
        per = [jax.tree.map(lambda *xs: jnp.concatenate(xs)[None], *g) for g in groups]
        return fill(jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)), m

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
