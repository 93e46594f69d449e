"""ONNX graphs of each family's networks, built from the family's own layer descriptions and parameters.

- CIN (`cin_graph`): the transformer of any `TransformerSpec` (widths, kernels, strides, residual count, bias,
  output); the style is an input `style_weights` (N, S) whose rows mix each norm table inside the graph (a
  MatMul), or a weight vector baked in (every norm's scale and shift computed here).
- Arbitrary (`arbitrary_transform_graph`, `arbitrary_predict_graph`): the transformer with a `style_vector`
  (N, 100) input (the 1x1 projections to each norm's gamma/beta in the graph) or a baked vector; the MobileNetV2
  style predictor as its own graph.
- AdaIN (`adain_graph`, `adain_style_graph`): encoder to relu4_1, AdaIN with style statistics (inputs or baked),
  alpha, decoder, crop and clip; the style-statistics encoder as its own graph.

All graphs take and give images as `layout` ("NCHW" default, or "NHWC") float32 RGB in [0, 1].

Each family's `FAMILY.export` names its exporter here (`cin_export`, `arbitrary_export`, `adain_export`, all
`nst_jax.models.ExportBuilder`s): the graphs of a loaded model with their metadata, for `nst_jax.export.build`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from nst_jax.export.graph import OPSET, Dims, Graph, image_shape
from nst_jax.export.info import META_PREFIX

# (role, graph, metadata): what an exporter returns, the stylizer first
Built = tuple[str, Graph, dict[str, str]]


def _np(x: Any) -> np.ndarray:
    return np.asarray(x, np.float32)


def _image_in(g: Graph, name: str, layout: str, size: tuple[int, int] | None) -> tuple[str, Dims]:
    x = g.add_input(name, image_shape(layout, size))
    return g.to_nchw(x, layout), Dims(*(size or (None, None)))


def metadata(family: str, layout: str, inputs: dict[str, str], outputs: dict[str, str], style: str,
             **extra: Any) -> dict[str, str]:
    """The `nst_jax.*` metadata of one graph (read back by `nst_jax.export.info.read_convention`)."""
    m = {"family": family, "layout": layout, "color": "RGB", "range": "[0, 1]", "dtype": "float32",
         "inputs": json.dumps(inputs), "outputs": json.dumps(outputs), "style": style, "opset": str(OPSET)}
    m.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in extra.items() if v is not None})
    return {META_PREFIX + k: v for k, v in m.items()}


def _image_desc(layout: str, size: tuple[int, int] | None) -> str:
    sides = "any height and width" if size is None else f"{size[0]} x {size[1]}"
    return f"{layout} float32 RGB in [0, 1], {sides}"


def _stylized_desc(layout: str) -> dict[str, str]:
    return {"stylized": f"{layout} float32 RGB in [0, 1], the input's height and width"}


def _fixed(size: tuple[int, int] | None) -> dict[str, Any]:
    return {"size": list(size)} if size else {}


# ----------------------------------------------------------------------------------------------------
# CIN


def cin_graph(params: Mapping[str, Any], spec: Any, *, weights: np.ndarray | None = None, layout: str = "NCHW",
              size: tuple[int, int] | None = None) -> Graph:
    """The CIN transformer as an ONNX graph.

    Args:
      params: the tree of `cin_spec.expected_shapes(spec)`.
      spec: its `TransformerSpec`.
      weights: None for a `style_weights` (N, S) input, or a baked (S,) weight vector.
      layout: "NCHW" or "NHWC" for the image input and output.
      size: fixed (H, W), or None for symbolic height and width.

    Returns:
      The graph: inputs "image" [and "style_weights"], output "stylized".
    """
    from nst_jax.models.cin import spec as cin_spec

    g = Graph(f"nst_jax_cin_{spec.name}")
    x, dims = _image_in(g, "image", layout, size)
    w_in = None
    if weights is None:
        w_in = g.add_input("style_weights", ["n", spec.num_styles])
    else:
        weights = _np(weights).reshape(spec.num_styles)
    h, hw, pdims = g.pad_to_multiple(x, spec.size_multiple, dims)
    h = g.scale(h, spec.value_range)
    skip = None
    for layer in cin_spec.layers(spec):
        p = cin_spec._get(params, layer.path)
        if layer.path[0] == "residual" and layer.path[2] == "0":
            skip = h
        h = g.upsample(h, layer.upsample)
        h = g.conv(h, _np(p["kernel"]), _np(p["bias"]) if spec.conv_bias else None, stride=layer.stride)
        if layer.norm:
            gamma, beta = _np(p["norm"]["gamma"]), _np(p["norm"]["beta"])
            if w_in is None:
                h = g.instance_norm(h, layer.cout, spec.eps, weights @ gamma, weights @ beta)
            else:
                h = g.instance_norm(h, layer.cout, spec.eps)
                h = g.affine(h, g.dense(w_in, gamma), g.dense(w_in, beta))
        if layer.relu:
            h = g.relu(h)
        if layer.path[0] == "residual" and layer.path[2] == "1":
            h = g.op("Add", [h, skip], "residual")
    if spec.output == "sigmoid":
        h = g.op("Sigmoid", [h], "sigmoid")
    else:
        h = g.clip01(g.scale(h, 1.0 / spec.value_range))
    h = g.crop(h, hw, dims)
    g.add_output(g.from_nchw(h, layout), "stylized", image_shape(layout, size))
    return g


def cin_export(stylizer: Any, condition: Any | None, *, layout: str, size: tuple[int, int] | None,
               style_desc: str | None = None, encoder_size: tuple[int, int] | None = None) -> list[Built]:
    """CIN's exporter: the transformer with a `style_weights` input, or with `condition`'s weights baked in."""
    del encoder_size  # CIN has no style encoder
    spec = stylizer.static
    weights = None if condition is None else _np(condition["weights"]).reshape(-1)
    g = cin_graph(stylizer.params, spec, weights=weights, layout=layout, size=size)
    ins = {"image": _image_desc(layout, size)}
    if weights is None:
        ins["style_weights"] = (f"(N, {spec.num_styles}) float32 weights over the style table (one-hot for "
                                f"one style, convex for a blend)")
    style = style_desc or ("input: style_weights" if weights is None else
                           "baked: weights " + ",".join(f"{v:.6g}" for v in weights))
    meta = metadata(stylizer.family.name, layout, ins, _stylized_desc(layout), style,
                    num_styles=str(spec.num_styles), size_multiple=str(spec.size_multiple), spec=spec.to_dict(),
                    **_fixed(size))
    return [("stylizer", g, meta)]


# ----------------------------------------------------------------------------------------------------
# Arbitrary


def arbitrary_transform_graph(params: Mapping[str, Any], *, vector: np.ndarray | None = None,
                              layout: str = "NCHW", size: tuple[int, int] | None = None) -> Graph:
    """The arbitrary network's transformer (any widths) as an ONNX graph.

    Args:
      params: the model tree (`nst_jax.models.arbitrary`; uses "transformer" and "style_params").
      vector: None for a `style_vector` (N, D) input, or a baked (D,) style vector.
      layout, size: as `cin_graph`.

    Returns:
      The graph: inputs "image" [and "style_vector"], output "stylized".
    """
    from nst_jax.models.arbitrary import params as arb_params

    g = Graph("nst_jax_arbitrary_transform")
    x, dims = _image_in(g, "image", layout, size)
    t, sp = params["transformer"], params
    dim = int(np.shape(sp["bottleneck"]["kernel"])[1]) if "bottleneck" in sp else None
    v_in = None
    if vector is None:
        if dim is None:
            dim = int(np.shape(arb_params.style_param(params, arb_params.NORM_LAYERS[0])["gamma"]["kernel"])[0])
        v_in = g.add_input("style_vector", ["n", dim])
    else:
        vector = _np(vector).reshape(-1)

    def norm(h: str, layer: str) -> str:
        proj = arb_params.style_param(params, layer)
        gk, gb = _np(proj["gamma"]["kernel"]), _np(proj["gamma"]["bias"])
        bk, bb = _np(proj["beta"]["kernel"]), _np(proj["beta"]["bias"])
        c = gk.shape[1]
        if v_in is None:
            return g.instance_norm(h, c, arb_params.EPS, vector @ gk + gb, vector @ bk + bb)
        h = g.instance_norm(h, c, arb_params.EPS)
        return g.affine(h, g.dense(v_in, gk, gb), g.dense(v_in, bk, bb))

    def conv(h: str, layer: Mapping[str, Any], stride: int = 1) -> str:
        b = layer.get("bias")
        return g.conv(h, _np(layer["kernel"]), None if b is None else _np(b), stride=stride)

    h, hw, _ = g.pad_to_multiple(x, arb_params.MULTIPLE, dims)
    c = t["contract"]
    h = g.relu(conv(h, c["conv1"]))
    h = g.relu(conv(h, c["conv2"], 2))
    h = g.relu(conv(h, c["conv3"], 2))
    for i in range(1, len(t["residual"]) + 1):
        blk = t["residual"][f"residual{i}"]
        y = g.relu(norm(conv(h, blk["conv1"]), f"residual/residual{i}/conv1"))
        y = norm(conv(y, blk["conv2"]), f"residual/residual{i}/conv2")
        h = g.op("Add", [h, y], "residual")
    e = t["expand"]
    h = g.relu(norm(conv(g.upsample(h, 2), e["conv1"]), "expand/conv1"))
    h = g.relu(norm(conv(g.upsample(h, 2), e["conv2"]), "expand/conv2"))
    h = g.op("Sigmoid", [norm(conv(h, e["conv3"]), "expand/conv3")], "sigmoid")
    h = g.crop(h, hw, dims)
    g.add_output(g.from_nchw(h, layout), "stylized", image_shape(layout, size))
    return g


def arbitrary_predict_graph(params: Mapping[str, Any], *, layout: str = "NCHW",
                            size: tuple[int, int] | None = None) -> Graph:
    """The style predictor (MobileNetV2 -> spatial mean -> bottleneck) as an ONNX graph.

    The input is the style image as the predictor sees it: `nst_jax.models.arbitrary.preprocess_style` (centre
    crop to a square, Lanczos resize to 256 x 256) happens before, in the caller.

    Returns:
      The graph: input "style", output "style_vector" (N, D).
    """
    from nst_jax.models.arbitrary import params as arb_params

    g = Graph("nst_jax_arbitrary_predict")
    x, _ = _image_in(g, "style", layout, size)
    p = params["predictor"]

    def conv(h: str, layer: Mapping[str, Any], stride: int = 1, groups: int = 1) -> str:
        return g.conv(h, _np(layer["kernel"]), _np(layer["bias"]), stride=stride, padding="same", groups=groups)

    h = g.relu6(conv(x, p["Conv"], 2))
    cin = int(np.shape(p["Conv"]["kernel"])[3])
    for i, (_, cout, stride) in enumerate(arb_params.MOBILENET_BLOCKS):
        blk = p[arb_params.block_name(i)]
        inp = h
        if "expand" in blk:
            h = g.relu6(conv(h, blk["expand"]))
        hidden = int(np.shape(blk["depthwise"]["kernel"])[3])
        h = g.relu6(conv(h, blk["depthwise"], stride, groups=hidden))
        h = conv(h, blk["project"])
        cout = int(np.shape(blk["project"]["kernel"])[3])
        if stride == 1 and cin == cout:
            h = g.op("Add", [h, inp], "residual")
        cin = cout
    h = g.relu6(conv(h, p["Conv_1"]))
    # GlobalAveragePool (not ReduceMean) stays in onnxruntime's blocked layout after the convolutions
    feat = g.op("Flatten", [g.op("GlobalAveragePool", [h], "gap")], "feat", axis=1)
    b = params["bottleneck"]
    v = g.dense(feat, _np(b["kernel"]), _np(b["bias"]))
    g.add_output(v, "style_vector", ["n", int(np.shape(b["kernel"])[1])])
    return g


def arbitrary_export(stylizer: Any, condition: Any | None, *, layout: str, size: tuple[int, int] | None,
                     style_desc: str | None = None, encoder_size: tuple[int, int] | None = None) -> list[Built]:
    """The arbitrary network's exporter: the transformer with a `style_vector` input and the predictor beside
    it, or the transformer alone with `condition`'s vector baked in."""
    from nst_jax.models import arbitrary as arb
    from nst_jax.models.arbitrary import params as arb_params

    family = stylizer.family.name
    vector = None if condition is None else _np(condition["vector"]).reshape(-1)
    g = arbitrary_transform_graph(stylizer.params, vector=vector, layout=layout, size=size)
    ins = {"image": _image_desc(layout, size)}
    prep = f"centre-crop to a square, resize to {arb.STYLE_SIZE} x {arb.STYLE_SIZE} (Lanczos), RGB in [0, 1]"
    if vector is None:
        ins["style_vector"] = ("(N, 100) float32 style vectors from the style encoder; a blend or a strength is "
                               "a convex mix of vectors (strength: with the content image's own vector)")
    style = style_desc or ("input: style_vector" if vector is None else "baked: one style vector")
    meta = metadata(family, layout, ins, _stylized_desc(layout), style, size_multiple=str(arb_params.MULTIPLE),
                    **_fixed(size))
    built: list[Built] = [("stylizer", g, meta)]
    if vector is None:
        pg = arbitrary_predict_graph(stylizer.params, layout=layout, size=encoder_size)
        pmeta = metadata(family, layout, {"style": f"{layout} float32 RGB in [0, 1], preprocessed: {prep}"},
                         {"style_vector": "(N, 100) float32 style vectors"}, "encoder",
                         role="style_encoder", style_preprocess=prep)
        built.append(("style_encoder", pg, pmeta))
        meta[META_PREFIX + "style_preprocess"] = prep
    return built


# ----------------------------------------------------------------------------------------------------
# AdaIN


def _encoder(g: Graph, x: str, vgg_params: Mapping[str, Any], spec: Any, tap: str = "relu4_1") -> str:
    """VGG (19 or 16) with the weights' own preprocessing, padding and pooling, up to `tap`."""
    from nst_jax import vgg

    pre = np.eye(3, dtype=np.float32)
    if spec.channel_order == "BGR":
        pre = pre[::-1]
    std = np.asarray(spec.std, np.float32)
    mean = np.asarray(spec.mean, np.float32)
    a = pre * (np.float32(spec.scale) / std)[:, None]  # out channel o = (scale * x[src(o)] - mean[o]) / std[o]
    if not np.array_equal(a, np.eye(3, dtype=np.float32)) or mean.any():
        x = g.conv(x, a.T.reshape(1, 1, 3, 3), -mean / std, padding="valid")
    h = x
    if spec.preconv:
        h = g.conv(h, _np(vgg_params["conv0"]["kernel"]), _np(vgg_params["conv0"]["bias"]), padding="valid")
    for name in vgg.LAYERS_OF[spec.arch]:
        kind = name[:4]
        if kind == "conv":
            p = vgg_params[name]
            h = g.conv(h, _np(p["kernel"]), _np(p["bias"]), padding=spec.padding)
        elif kind == "relu":
            h = g.relu(h)
        else:
            attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": int(spec.ceil_mode)}
            if spec.pooling == "max":
                h = g.op("MaxPool", [h], "pool", **attrs)
            else:
                h = g.op("AveragePool", [h], "pool", count_include_pad=0, **attrs)
        if name == tap:
            return h
    raise ValueError(f"no tap {tap!r}")


def _mean_std(g: Graph, f: str, eps: float) -> tuple[str, str, str]:
    """(mean, centred f, std) per image and channel, std from the unbiased variance plus eps (pytorch-AdaIN)."""
    mean = g.op("ReduceMean", [f], "mean", axes=[2, 3], keepdims=1)
    d = g.op("Sub", [f, mean], "centred")
    var_b = g.op("ReduceMean", [g.op("Mul", [d, d], "sq")], "var", axes=[2, 3], keepdims=1)
    hw = g.op("Cast", [g.op("ReduceProd", [g.spatial(f)], "count", keepdims=1)], "countf", to=1)
    one = g.const(np.float32(1.0))
    # n / max(n - 1, 1) turns the biased variance into the unbiased one (a single position keeps n - 1 = 1)
    ratio = g.op("Div", [hw, g.op("Max", [g.op("Sub", [hw, one]), one])], "ratio")
    var = g.op("Add", [g.op("Mul", [var_b, ratio]), g.const(np.float32(eps))], "var_eps")
    return mean, d, g.op("Sqrt", [var], "std")


def adain_graph(vgg_params: Mapping[str, Any], vgg_spec: Any, decoder_params: Mapping[str, Any], *,
                stats: tuple[np.ndarray, np.ndarray] | None = None, layout: str = "NCHW",
                size: tuple[int, int] | None = None) -> Graph:
    """AdaIN stylization as an ONNX graph: encoder, AdaIN, alpha, decoder, crop, clip.

    Args:
      vgg_params, vgg_spec: the encoder (up to relu4_1) and its identity.
      decoder_params: the decoder tree (`nst_jax.models.decoder`).
      stats: None for "style_mean", "style_std" (N, 512) inputs, or a baked (mean, std) pair of 512 values.
      layout, size: as `cin_graph`.

    Returns:
      The graph: inputs "image", ["style_mean", "style_std"], "alpha" (N,); output "stylized".
    """
    from nst_jax.models import adain
    from nst_jax.models import decoder as dec

    g = Graph("nst_jax_adain")
    x, dims = _image_in(g, "image", layout, size)
    c = adain.CHANNELS
    if stats is None:
        s_mean = g.op("Reshape", [g.add_input("style_mean", ["n", c]), g.const([0, c, 1, 1], dtype=np.int64)],
                      "smean")
        s_std = g.op("Reshape", [g.add_input("style_std", ["n", c]), g.const([0, c, 1, 1], dtype=np.int64)],
                     "sstd")
    else:
        s_mean = g.const(_np(stats[0]).reshape(1, c, 1, 1), "smean")
        s_std = g.const(_np(stats[1]).reshape(1, c, 1, 1), "sstd")
    alpha = g.op("Reshape", [g.add_input("alpha", ["n"]), g.const([-1, 1, 1, 1], dtype=np.int64)], "alpha4")
    hw = None if dims.fixed else g.spatial(x)
    f = _encoder(g, x, vgg_params, vgg_spec)
    _, d, c_std = _mean_std(g, f, adain.EPS)
    t = g.op("Add", [g.op("Mul", [d, g.op("Div", [s_std, c_std], "ratio")]), s_mean], "adain")
    # alpha * t + (1 - alpha) * f
    h = g.op("Add", [f, g.op("Mul", [alpha, g.op("Sub", [t, f])])], "mix")
    last = len(dec.DECODER_CONVS) - 1
    for i, (name, _, _, up) in enumerate(dec.DECODER_CONVS):
        p = decoder_params[name]
        h = g.conv(h, _np(p["kernel"]), _np(p["bias"]))
        if i < last:
            h = g.relu(h)
        if up:
            h = g.upsample(h, 2)
    h = g.clip01(g.crop(h, hw, dims))
    g.add_output(g.from_nchw(h, layout), "stylized", image_shape(layout, size))
    return g


def adain_style_graph(vgg_params: Mapping[str, Any], vgg_spec: Any, *, layout: str = "NCHW",
                      size: tuple[int, int] | None = None) -> Graph:
    """The style-statistics encoder: style images -> relu4_1 "style_mean", "style_std" (N, 512)."""
    from nst_jax.models import adain

    g = Graph("nst_jax_adain_style")
    x, _ = _image_in(g, "style", layout, size)
    f = _encoder(g, x, vgg_params, vgg_spec)
    mean, _, std = _mean_std(g, f, adain.EPS)
    flat = g.const([0, adain.CHANNELS], dtype=np.int64)
    g.add_output(g.op("Reshape", [mean, flat]), "style_mean", ["n", adain.CHANNELS])
    g.add_output(g.op("Reshape", [std, flat]), "style_std", ["n", adain.CHANNELS])
    return g


def adain_export(stylizer: Any, condition: Any | None, *, layout: str, size: tuple[int, int] | None,
                 style_desc: str | None = None, encoder_size: tuple[int, int] | None = None) -> list[Built]:
    """AdaIN's exporter: encoder-AdaIN-decoder with style statistics and alpha inputs and the statistics encoder
    beside it, or with `condition`'s statistics baked in (alpha stays an input)."""
    family = stylizer.family.name
    vgg_params, vgg_spec = stylizer.frozen["vgg"], stylizer.static
    stats = None
    if condition is not None:
        stats = (np.asarray(condition["mean"]).reshape(-1), np.asarray(condition["std"]).reshape(-1))
    g = adain_graph(vgg_params, vgg_spec, stylizer.params, stats=stats, layout=layout, size=size)
    ins = {"image": _image_desc(layout, size)}
    if stats is None:
        ins["style_mean"] = "(N, 512) float32 relu4_1 mean of the style image (the style encoder's output)"
        ins["style_std"] = "(N, 512) float32 relu4_1 std of the style image (the style encoder's output)"
    ins["alpha"] = "(N,) float32 strength in [0, 1] (1 = full style)"
    style = style_desc or ("input: style_mean, style_std" if stats is None else "baked: one style's statistics")
    prep = "resize so the shorter side is 512 (nst-jax stylize's default --style-size), RGB in [0, 1]"
    meta = metadata(family, layout, ins, _stylized_desc(layout), style, encoder=vgg_spec.source, **_fixed(size))
    built: list[Built] = [("stylizer", g, meta)]
    if stats is None:
        sg = adain_style_graph(vgg_params, vgg_spec, layout=layout, size=encoder_size)
        smeta = metadata(family, layout, {"style": f"{layout} float32 RGB in [0, 1], any size; suggested: {prep}"},
                         {"style_mean": "(N, 512) float32", "style_std": "(N, 512) float32"}, "encoder",
                         role="style_encoder", style_preprocess=prep)
        built.append(("style_encoder", sg, smeta))
        meta[META_PREFIX + "style_preprocess"] = prep
    return built


__all__ = ["Built", "adain_export", "adain_graph", "adain_style_graph", "arbitrary_export", "arbitrary_predict_graph",
           "arbitrary_transform_graph", "cin_export", "cin_graph", "metadata"]
