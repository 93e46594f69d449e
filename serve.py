#!/usr/bin/env python
"""Live webcam style transfer in the browser: `python serve.py`, then open the printed URL.

Flags: `python serve.py --help`; details in docs/serve.md. All logic lives in `nst_jax.serve`.
"""

import sys

from nst_jax.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
