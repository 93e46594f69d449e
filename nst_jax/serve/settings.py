"""One page's settings: validating a `settings` message, and the colour finishing they ask for."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from nst_jax.checks import check_weights
from nst_jax.errors import NstError
from nst_jax.serve import protocol
from nst_jax.serve.styles import StyleLibrary


@dataclasses.dataclass(frozen=True)
class Settings:
    """One client's (or the shared show's) choices, as validated from the page."""

    version: int
    styles: tuple[tuple[str, float], ...]
    alpha: float = 1.0
    preserve_color: str = "none"
    size: int = 256
    side_by_side: bool = False
    smoothing: float = 0.0  # statistic smoothing strength (the page's slider; `batcher.parse_smoothing`)
    strength: StrengthControl | None = None

    def describe(self) -> dict:
        """JSON form (the page's own format)."""
        return {"version": self.version, "styles": [list(s) for s in self.styles], "alpha": self.alpha,
                "preserve_color": self.preserve_color, "size": self.size, "side_by_side": self.side_by_side,
                "strength": None if self.strength is None else dataclasses.asdict(self.strength)}


# --- the strength control (a radial or linear gradient map; `nst_jax.strength`) ---------------------------------

@dataclasses.dataclass(frozen=True)
class StrengthControl:
    """The page's strength gradient: see `nst_jax.strength.gradient` (x, y: the centre as fractions)."""

    kind: str = "radial"
    x: float = 0.5
    y: float = 0.5
    radius: float = 0.3
    angle: float = 0.0
    softness: float = 0.3
    invert: bool = False

    def map(self, hw: tuple[int, int]) -> np.ndarray:
        """The (H, W) float32 strength map at a frame size (cached per control and size)."""
        return _strength_map(self, tuple(hw))


@functools.lru_cache(maxsize=32)
def _strength_map(control: StrengthControl, hw: tuple[int, int]) -> np.ndarray:
    from nst_jax.strength import gradient

    m = gradient(hw, kind=control.kind, center=(control.x, control.y), radius=control.radius, angle=control.angle,
                 softness=control.softness, invert=control.invert)
    m.setflags(write=False)
    return m


def parse_strength(obj: dict, current: StrengthControl | None) -> StrengthControl | None:
    """The settings' "strength": null (off) or {kind, x, y, radius, angle, softness, invert}, numbers clamped."""
    if "strength" not in obj:
        return current
    raw = obj["strength"]
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise protocol.ProtocolError("settings: strength must be null or an object")
    base = current or StrengthControl()
    kind = raw.get("kind", base.kind)
    if kind not in ("radial", "linear"):
        raise protocol.ProtocolError("settings: strength.kind must be radial or linear")
    invert = raw.get("invert", base.invert)
    if not isinstance(invert, bool):
        raise protocol.ProtocolError("settings: strength.invert must be true or false")

    def unit(key: str) -> float:
        return min(max(_number(raw, key, getattr(base, key)), 0.0), 1.0)

    return StrengthControl(kind, unit("x"), unit("y"), unit("radius"),
                           _number(raw, "angle", base.angle) % 360.0, unit("softness"), invert)


def _number(obj: dict, key: str, default: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise protocol.ProtocolError(f"settings: {key} must be a finite number")
    return float(v)


def parse_settings(obj: dict, current: Settings, library: StyleLibrary, sizes: Sequence[int]) -> Settings:
    """Validate a settings message; keys it leaves out keep their current values.

    Args:
      obj: the decoded JSON message.
      current: the client's settings now.
      library: the styles ids may name.
      sizes: the frame sizes on offer.

    Returns:
      The new settings.

    Raises:
      ProtocolError: with a message for the page.
    """
    version = obj.get("version", current.version)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**32:
        raise protocol.ProtocolError("settings: version must be an integer in [0, 2^32)")
    styles = current.styles
    if "styles" in obj:
        raw = obj["styles"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= protocol.MAX_BLEND:
            raise protocol.ProtocolError(
                f"settings: styles must list 1 to {protocol.MAX_BLEND} [id, weight] pairs")
        parsed = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise protocol.ProtocolError("settings: each style must be [id, weight]")
            sid, w = item
            if sid not in library:
                raise protocol.ProtocolError(f"settings: unknown style {sid[:40]!r}")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise protocol.ProtocolError("settings: style weights must be finite and >= 0")
            parsed.append((sid, float(w)))
        try:
            check_weights([w for _, w in parsed], what="style weights")
        except NstError as e:
            raise protocol.ProtocolError(f"settings: {e}") from None
        styles = tuple(parsed)
    alpha = min(max(_number(obj, "alpha", current.alpha), 0.0), 1.0)
    preserve = obj.get("preserve_color", current.preserve_color)
    if isinstance(preserve, str):
        preserve = protocol.PRESERVE_COLOR_ALIASES.get(preserve, preserve)
    if preserve not in protocol.PRESERVE_COLOR:
        raise protocol.ProtocolError(
            f"settings: preserve_color must be one of {', '.join(protocol.PRESERVE_COLOR)}")
    size = obj.get("size", current.size)
    if isinstance(size, bool) or size not in sizes:
        raise protocol.ProtocolError(f"settings: size must be one of {', '.join(map(str, sizes))}")
    sbs = obj.get("side_by_side", current.side_by_side)
    if not isinstance(sbs, bool):
        raise protocol.ProtocolError("settings: side_by_side must be true or false")
    from nst_jax.serve.batcher import parse_smoothing

    return Settings(version, styles, alpha, preserve, int(size), sbs, parse_smoothing(obj, current.smoothing),
                    parse_strength(obj, current.strength))


def postprocess(out: np.ndarray, content: np.ndarray, preserve_color: str) -> np.ndarray:
    """Colour preservation on one stylized frame.

    "luminance" keeps the frame's chroma under the stylized luminance (YIQ); "histogram_output" recolours the
    stylized frame to the camera frame's colour mean and covariance (CORAL). Both run after the model, so
    switching them costs nothing per style (unlike "histogram" everywhere else in nst-jax, which recolours the
    style image before encoding it; live, "histogram" is accepted as an old name of "histogram_output").

    Args:
      out: (H, W, 3) float stylized frame.
      content: (H, W, 3) float camera frame it was made from.
      preserve_color: one of `protocol.PRESERVE_COLOR`.

    Returns:
      (H, W, 3) uint8, rounded as `nst_jax.image.to_uint8`.
    """
    from nst_jax import color, image

    if preserve_color == "luminance":
        out = color.luminance_transfer(out[None], content[None])[0]
    elif protocol.PRESERVE_COLOR_ALIASES.get(preserve_color, preserve_color) == "histogram_output":
        out = color.coral(out[None], content[None])[0]
    return image.to_uint8(out)
