"""r1jax.stages: one module per stage of the R1 pipeline, each a short loop on the trainer core.

Each stage has `build(config) -> spec` (every check, before any work) and `run(spec, workdir, ...)`.
Stages never import each other; `r1jax.main` composes them (e.g. `train` = pretrain, then rl).
"""
