#!/usr/bin/env bash
# Train the default pairs on the GPU device within ONE lease, both families at once.
#
# The device has no network and takes <= 64 MiB per call (working tree + carried folders), and the
# machine stays warm for only ~30 s after a call, so the base models travel as numbered chunks in
# back-to-back calls and the training runs as detached daemons (setsid) that outlive the calls:
#
#   here:   python scripts/make_device_bundle.py ...     # writes .dev/chunks/c1 .. cN (git-ignored)
#   call 1: carry [.dev/chunks/c1]   bash scripts/device_train.sh --deadline-in 1440 stash .dev/chunks/c1
#   call k: carry [.dev/chunks/ck]   bash scripts/device_train.sh stash .dev/chunks/ck [launch FAMILY [train.py args]]
#   then:   carry []      bash scripts/device_train.sh wait SECONDS      # progress + snapshot files in $OUT
#   last:   carry []      bash scripts/device_train.sh fetch FAMILY       # final files in $OUT
#
# `stash` appends each chunk to its bundle under $STASH; `launch FAMILY` unpacks that family's bundle once
# it is complete (sha256 of the tar and of the GGUF), copies the package out of the synced repo (later
# calls re-sync it), and starts `python -m nla_repro.training.train` detached, with a deadline shared by
# every daemon (set once by `--deadline-in SECONDS` in the first call).  To stop the daemons from a call,
# `pkill -f "m nla_repro[.]training"` (the bracket keeps pkill from matching the calling shell itself).
set -euo pipefail
STASH=${STASH:-$HOME/stash}
OUT=${OUT:-/tmp/nla_out}
mkdir -p "$STASH/bundles" "$STASH/out" "$STASH/code"

stash_chunk() {  # a chunk folder holds <bundle>.tar.partNN files and <bundle>.tar.sha256
  local d=$1
  for f in "$d"/*; do
    local b; b=$(basename "$f")
    cp "$f" "$STASH/bundles/$b"
  done
}

bundle_ready() {  # all parts present and the joined tar matches its sha256
  local name=$1
  [ -f "$STASH/bundles/$name.tar.sha256" ] || return 1
  local n; n=$(cut -d' ' -f3 "$STASH/bundles/$name.tar.sha256")
  local have; have=$(ls "$STASH/bundles/$name.tar.part"* 2>/dev/null | wc -l)
  [ "$have" = "$n" ] || { echo "bundle $name: $have of $n parts"; return 1; }
  cat "$STASH/bundles/$name.tar.part"* > "$STASH/$name.tar"
  echo "$(cut -d' ' -f1 "$STASH/bundles/$name.tar.sha256")  $STASH/$name.tar" | sha256sum -c - || return 1
  mkdir -p "$STASH/$name" && tar -xf "$STASH/$name.tar" -C "$STASH/$name" && rm -f "$STASH/$name.tar"
}

launch() {
  local family=$1; shift
  bundle_ready "$family" || { echo "cannot launch $family: bundle incomplete" >&2; return 3; }
  local src="$STASH/$family"
  (cd "$src" && sha256sum -c gguf.sha256)
  if ls "$src"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STASH/site" "$src"/*.whl
  fi
  rm -rf "$STASH/code/$family" && mkdir -p "$STASH/code/$family" && cp -r nla_repro "$STASH/code/$family/"
  local now; now=$(date +%s)
  local deadline; deadline=$(cat "$STASH/deadline")
  local out="$STASH/out/$family"
  mkdir -p "$out"
  local init=()
  [ -d "$src/deltas" ] && init=(--init-deltas "${INIT_DELTAS:-$src/deltas}" --stages rl,eval_rl)
  if [ -f "$src/tokenizer.tar.xz" ]; then
    tar -xJf "$src/tokenizer.tar.xz" -C "$src" && init+=(--tokenizer "$src/tokenizer")
  fi
  echo "launch $family: $((deadline - now)) s to the shared deadline; args: ${init[*]} $*"
  PYTHONPATH="$STASH/code/$family:$STASH/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
    setsid nohup python3 -m nla_repro.training.train --family "$family" --out "$out" \
      --state "$STASH/state/$family" --gguf "$src" --deadline-s $((deadline - now)) "${init[@]}" "$@" \
      > "$out/console.log" 2>&1 < /dev/null &
  sleep 2
  echo "daemon pid $!"
}

report() {
  nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader || true
  for d in "$STASH"/out/*/; do
    [ -f "$d/console.log" ] || continue
    echo "== $(basename "$d"): $( (grep -c '^\[.*rl {' "$d/train.log" 2>/dev/null || true) ) rl steps"
    (grep -v 'it/s\]' "$d/console.log" || true) | tail -n 6 | cut -c1-400
  done
}

copy_out() {  # copy a family's result files to $OUT/<family>/ (the tool returns <= 8 files per call)
  local family=$1; shift
  mkdir -p "$OUT/$family"
  for f in "$@"; do
    [ -f "$STASH/out/$family/$f" ] && cp "$STASH/out/$family/$f" "$OUT/$family/" || true
  done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --deadline-in) echo $(( $(date +%s) + $2 )) > "$STASH/deadline"; echo "deadline in $2 s"; shift 2;;
    stash) stash_chunk "$2"; ls "$STASH/bundles" | tr '\n' ' '; echo; shift 2;;
    launch) shift; fam=$1; shift; args=()
            while [ $# -gt 0 ] && [ "$1" != stash ] && [ "$1" != launch ]; do args+=("$1"); shift; done
            launch "$fam" "${args[@]}";;
    wait) secs=$2; shift 2; end=$(( $(date +%s) + secs ))
          while [ "$(date +%s)" -lt "$end" ]; do
            running=$( (pgrep -f nla_repro.training.train || true) | wc -l)
            [ "$running" = 0 ] && { echo "no training process left"; break; }
            sleep 15
          done
          report
          for d in "$STASH"/out/*/; do copy_out "$(basename "$d")" metrics.json train.log; done;;
    fetch) fam=$2; shift 2; report
           copy_out "$fam" rl_av.safetensors rl_ar.safetensors polish_av.safetensors polish_ar.safetensors \
             metrics.json train.log samples.jsonl;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
