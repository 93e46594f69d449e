"""A run that takes seconds on a CPU, for tests and smoke checks: 32 px crops, batch 2, random VGG weights.

`vgg_weights = "random"` builds a seeded random VGG19 (no download): it exercises the whole pipeline but the
decoder it trains is meaningless. Use it for testing only.
"""

from __future__ import annotations

import ml_collections

from configs import adain


def get_config() -> ml_collections.ConfigDict:
    """The tiny test configuration (AdaIN)."""
    c = adain.get_config()
    c.content_data = "tfds:dtd"
    c.style_data = "tfds:dtd"
    c.image_size = 32
    c.resize_size = 40
    c.min_image_side = 8
    c.data_threads = 2
    c.prefetch_batches = 2
    c.vgg_weights = "random"
    c.batch_size = 2
    c.num_steps = 20
    c.learning_rate = 1e-3
    c.log_every = 5
    c.checkpoint_every = 10
    c.sample_every = 10
    c.num_samples = 2
    return c
