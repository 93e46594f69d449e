"""An arbitrary-network run that takes seconds on a CPU, for tests and smoke checks: 32 px, batch 2, the
"vgg_stats" predictor and a random VGG16 (meaningless pictures: testing only). Set `content_data` and
`style_data` to folders.
"""

from __future__ import annotations

from configs import arbitrary


def get_config():
    """The tiny arbitrary-network test configuration."""
    c = arbitrary.get_config()
    c.arbitrary.predictor = "vgg_stats"
    c.content_data = "folder:content"
    c.style_data = "folder:styles"
    c.image_size = 32
    c.resize_size = 40
    c.min_image_side = 8
    c.style_augment = "crop"
    c.data_threads = 2
    c.prefetch_batches = 2
    c.vgg_weights = "random:vgg16-random"
    c.content_layers = ("relu2_2",)
    c.style_layers = ("relu1_2", "relu2_2")
    c.style_layer_weights = (1e-2, 1e-2)
    c.total_variation_weight = 1.0
    c.batch_size = 2
    c.num_steps = 12
    c.learning_rate = 1e-3
    c.log_every = 4
    c.checkpoint_every = 6
    c.sample_every = 6
    c.num_samples = 2
    return c
