"""Training pipeline for the embedded default NLA pair (issue 4).

Stages follow the released recipe (docs: shared/docs/nla_recipe.md): stage-0 activations, deterministic
warm-start explanations, AR SFT on mse_nrm, AV SFT with injection, GRPO RL with the AR trained alongside,
held-out evaluation. The device-side entry point is ``python -m nla_repro.training.train``.

This package is deliberately self-contained (own LoRA, own position sampler, own prompt building) so that
a device run does not depend on modules edited concurrently elsewhere in the repo; the shipped artefacts
are checked against the project's common code path by ``tests/test_default_pair.py``.
"""
