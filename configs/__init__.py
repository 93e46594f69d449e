"""Training configurations (ml_collections): `default.py` holds every key, one file per experiment extends it.

Load one with `python train.py --config configs/adain.py --workdir DIR` and override keys on the command line,
e.g. `--config.batch_size=16 --config.style_data=folder:/data/wikiart`.
"""
