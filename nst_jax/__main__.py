from nst_jax.cli import main

raise SystemExit(main())
