#!/usr/bin/env bash
# The GPU checks docs/BENCHMARKS.md still owes, in one run for one short lease of one GPU, most needed first:
#   [KIT=.gpu_kit] bash scripts/gpu_checks.sh OUTDIR [part ...]
#   parts: levers cases decoder data fsdp (default: all, in that order)
# Each part has its own time limit (seconds, below; the lease's are docs/BENCHMARKS.md's) and writes OUTDIR/PART.json
# and OUTDIR/PART.log as it goes; one that fails or runs out of time does not stop the next. Needs the project's
# Python packages where it runs (`python3` by default: PY=... to change) and no network: KIT names a folder made
# here by `python scripts/gpu_kit.py` (the wheels the lent machines lack, MiniLM), installed first into a
# temporary folder.
set -u -o pipefail
out=${1:?usage: bash scripts/gpu_checks.sh OUTDIR [levers cases decoder data fsdp]}
shift
parts=${*:-levers cases decoder data fsdp}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
for part in $parts; do
    case $part in levers|cases|decoder|data|fsdp) ;;
        *) echo "gpu_checks: unknown part '$part' (levers, cases, decoder, data, fsdp)" >&2; exit 2 ;;
    esac
done
if [ -n "${KIT:-}" ] && [ ! -d "$KIT/site" ]; then
    echo "gpu_checks: KIT=$KIT is not a kit folder (python scripts/gpu_kit.py makes one)" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checks' own subprocesses import the project too
if [ -n "${KIT:-}" ]; then
    site=$(mktemp -d) || exit 1
    trap 'rm -rf "$site"' EXIT  # the kit's packages go with the run
    cp -r "$KIT/site/." "$site/" || exit 1
    if ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$KIT"/wheels/*.whl || exit 1
    fi
    export PYTHONPATH="$site:$PYTHONPATH"
    "$PY" scripts/gpu_kit.py --restore "$site" || exit 1
    echo "== kit $KIT installed in $site"
fi
trap 'exit 143' TERM  # the lease ending stops every part, not only the one running
status=0
run() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: up to ${limit} s"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" = 0 ] || status=1
}
for part in $parts; do
    case $part in
        levers) run levers 300 "$PY" -m benchmarks.bench_gpu --only levers --steps 20 --out "$out/levers.json" ;;
        cases) run cases 180 "$PY" -m benchmarks.bench_gpu --only cases --steps 20 --out "$out/cases.json" ;;
        decoder) run decoder 300 "$PY" -m benchmarks.bench_gpu_decoder --steps 10 --out "$out/decoder.json" ;;
        data) run data 120 "$PY" -m benchmarks.bench_data --out "$out/data.json" ;;
        fsdp) run fsdp 150 "$PY" scripts/gpu_check_fsdp.py ;;
    esac
done
exit $status
