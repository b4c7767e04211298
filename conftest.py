# The harness's pytest plugin (options --claims, --pair, --eval-size, --backend, --device, --refresh;
# gpu/claims markers; skip rules). Kept in the package so it is importable and testable.
pytest_plugins = ["nla_repro.plugin"]
