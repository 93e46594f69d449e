"""The keys every family's training shares, with defaults; each family's recipe (adain.py, cin.py, arbitrary.py)
starts here and adds its own.

Family-neutral: no model and no loss. The loop, data, optimisation, stability and bookkeeping keys are the same
for every family; a family's config sets `model` (a key of `nst_jax.models.MODELS`) and only the keys its family
reads (AdaIN: `vgg_weights`, `content_weight`, `style_weight`, `style_layers`, `style_layer_weights`,
`convolutions`; CIN: `cin`, `style_images`, ...). Keys that users and scripts rely on keep these names:
num_steps, batch_size, image_size, learning_rate, style_weight, content_weight, seed, log_every,
checkpoint_every, vgg_weights, content_data, style_data.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The shared part of every training configuration (a family's config adds `model` and its own keys)."""
    c = ml_collections.ConfigDict()

    # --- data: "tfds:NAME[/CONFIG][:VERSION]" or "folder:PATH" (searched recursively for image files)
    # (a family whose styles come from a dataset adds `style_data` and `style_split` in the same form)
    c.content_data = ""            # set by each recipe
    c.content_split = "train"
    c.tfds_data_dir = ""          # "" = tfds's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    c.image_key = "image"          # the tfds feature holding the image
    c.image_size = 256             # training crop (square), a multiple of 8
    c.resize_size = 512            # resize before cropping; 0 keeps the original size
    c.resize_mode = "shorter"      # "shorter": shorter side -> resize_size, aspect kept; "square": both
    c.augment = "crop"             # "crop": random crop only; "magenta": + colour jitter, flips, random scale
    c.min_image_side = 64          # images whose shorter side is smaller are skipped (and counted)
    c.data_threads = 8             # decoding threads per stream
    c.prefetch_batches = 4         # decoded batches kept ready per stream

    # --- compute and the training-time stability term (`nst_jax.stability`, every family)
    c.dtype = "float32"            # compute dtype of the networks: "float32" or "bfloat16" (GPU/TPU)
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
