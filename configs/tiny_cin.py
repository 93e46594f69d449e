"""A CIN run that takes seconds on a CPU, for tests and smoke checks: 32 px, batch 2, a narrow transformer and
a random VGG16 (meaningless pictures: testing only). Set `style_images` and `content_data` to folders.
"""

from __future__ import annotations

import ml_collections

from configs import cin


def get_config() -> ml_collections.ConfigDict:
    """The tiny CIN test configuration."""
    c = cin.get_config()
    c.cin = ml_collections.ConfigDict({
        "preset": "magenta", "num_styles": 2,
        "spec": {"name": "tiny", "contract": [[8, 3, 1], [8, 3, 2], [8, 3, 2]], "residual_blocks": 1,
                 "expand": [[8, 3, 2], [4, 3, 2], [3, 3, 1]]},
    })
    c.content_data = "folder:content"
    c.style_images = "folder:styles"
    c.image_size = 32
    c.resize_size = 40
    c.min_image_side = 8
    c.data_threads = 2
    c.prefetch_batches = 2
    c.vgg_weights = "random:vgg16-random"
    c.content_layers = ("relu2_2",)
    c.style_layers = ("relu1_2", "relu2_2")
    c.style_layer_weights = (1.0, 1.0)
    c.batch_size = 2
    c.num_steps = 12
    c.learning_rate = 1e-2
    c.log_every = 4
    c.checkpoint_every = 6
    c.sample_every = 6
    c.num_samples = 2
    return c
