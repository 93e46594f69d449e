"""Every key the training loop reads, with defaults; experiment configs (adain.py, tiny.py, ...) start here.

`model` names the family (`nst_jax.models.MODELS`); the loop, data, optimisation and bookkeeping keys are the
same for every family, and the loss keys below default to the AdaIN recipe (the default family): a family's
own config file overrides what is its own. Keys that users and scripts rely on keep these names: num_steps,
batch_size, image_size, learning_rate, style_weight, content_weight, seed, log_every, checkpoint_every,
vgg_weights, content_data, style_data.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The default training configuration (the AdaIN recipe; configs/adain.py cites the sources)."""
    c = ml_collections.ConfigDict()
    c.model = "adain"              # the model family: a key of nst_jax.models.MODELS

    # --- data: "tfds:NAME[/CONFIG][:VERSION]" or "folder:PATH" (searched recursively for image files)
    c.content_data = "tfds:coco/2017"
    c.style_data = "folder:data/wikiart"
    c.content_split = "train"
    c.style_split = "train"
    c.tfds_data_dir = ""          # "" = tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.image_key = "image"          # the tfds feature holding the image
    c.image_size = 256             # training crop (square), a multiple of 8
    c.resize_size = 512            # resize before cropping; 0 keeps the original size
    c.resize_mode = "shorter"      # "shorter": shorter side -> resize_size, aspect kept; "square": both
    c.augment = "crop"             # "crop": random crop only; "magenta": + colour jitter, flips, random scale
    c.min_image_side = 64          # images whose shorter side is smaller are skipped (and counted)
    c.data_threads = 8             # decoding threads per stream
    c.prefetch_batches = 4         # decoded batches kept ready per stream

    # --- model and loss
    c.vgg_weights = "adain"        # registry name, weights file, or "random" / "random:adain" (tests only)
    c.content_weight = 1.0
    c.style_weight = 10.0
    c.style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    c.style_layer_weights = (1.0, 1.0, 1.0, 1.0)
    c.dtype = "float32"            # compute dtype of the networks: "float32" or "bfloat16" (GPU/TPU)
    c.convolutions = "winograd"    # wide 3x3 convolutions by Winograd F(4x4, 3x3), or "direct" (AdaIN)
    # a random small shift/rotation/noise of the content must give the same shift of the output (Gupta et al.
    # 2017, ReCoNet 2018; nst_jax.stability); 0 = off. One more encoder + decoder pass per step when on.
    c.stability_weight = 0.0
    c.stability_shift = 2.0        # largest translation, pixels
    c.stability_rotate = 0.0       # largest rotation, degrees
    c.stability_noise = 0.0        # standard deviation of Gaussian noise added to the shifted content

    # --- optimisation
    c.num_steps = 160_000
    c.batch_size = 8               # global batch, split over all devices
    c.learning_rate = 1e-4
    c.lr_decay = 5e-5              # lr / (1 + lr_decay * step); 0 = constant
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.seed = 0

    # --- bookkeeping
    c.log_every = 100
    c.checkpoint_every = 2000
    c.max_checkpoints = 3
    c.sample_every = 1000
    c.num_samples = 4
    c.progress = True              # tqdm progress bar on the console
    c.profile_steps = ""           # "A:B": a jax.profiler trace of steps A..B (process 0) in WORKDIR/profile
    return c
