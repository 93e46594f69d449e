"""The AdaIN recipe (Huang & Belongie 2017), with the source of every value.

- Data: content MS-COCO, style WikiArt (train.lua: `-contentDir data/coco/train2014
  -styleDir data/wikiart/train`). tfds has no WikiArt builder, so style images come from a folder;
  `tfds:coco/2017` is COCO 2017 train (118k images, a superset of train2014). Reading COCO through tfds needs
  TensorFlow installed; `folder:` paths (e.g. `folder:/data/coco/train2014`) do not.
- Preprocessing: shorter side to 512, random 256 x 256 crop (train.lua `-contentSize 512 -styleSize 512
  -finalSize 256 -crop`). pytorch-AdaIN instead squashes to 512 x 512 (`Resize((512, 512))`): set
  `--config.resize_mode=square` to follow it.
- Optimiser: Adam, lr 1e-4, decayed lr / (1 + 5e-5 * step), batch 8, 160k iterations (train.lua and
  pytorch-AdaIN). The decoder starts from PyTorch's default conv initialisation, U(+-1/sqrt(fan_in)), which is
  also Torch7's (train.lua's `-initStd 0`).
- Loss: content MSE at relu4_1 against the AdaIN target t, plus style_weight * sum over relu1_1..relu4_1
  of MSE(mean) + MSE(std), per-channel statistics with unbiased variance + 1e-5 (pytorch-AdaIN's
  calc_style_loss). style_weight = 10 is pytorch-AdaIN's value for this mean-reduced normalisation. The Lua
  original uses `-styleWeight 1e-2`, but its StyleINLossModule sums the squared differences over channels
  (sizeAverage=false) and divides by the batch only, i.e. C times larger per layer, with biased variance and
  eps 1e-6 inside the sqrt: Lua's weighting corresponds here to style_weight 1 with
  style_layer_weights = (0.64, 1.28, 2.56, 5.12).
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """The paper's recipe (see the module docstring)."""
    c = default.get_config()
    c.model = "adain"              # the model family: a key of nst_jax.models.MODELS
    c.content_data = "tfds:coco/2017"
    c.style_data = "folder:data/wikiart"
    c.style_split = "train"
    c.image_size = 256
    c.resize_size = 512
    c.resize_mode = "shorter"
    c.augment = "crop"
    c.vgg_weights = "adain"        # registry name, weights file, or "random" / "random:adain" (tests only)
    c.content_weight = 1.0
    c.style_weight = 10.0
    c.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    c.style_layer_weights = (1.0, 1.0, 1.0, 1.0)
    c.convolutions = "winograd"    # wide 3x3 convolutions by Winograd F(4x4, 3x3), or "direct"
    c.batch_size = 8
    c.num_steps = 160_000
    c.learning_rate = 1e-4
    c.lr_decay = 5e-5
    return c
