#!/usr/bin/env bash
# Portability check on one machine: the README's test command under other CPU kernel and thread
# choices, one setting after another, with the pass/fail counts and wall time of each.
#
#   bash scripts/portability.sh                          # the whole suite, every setting (~15 min each on 2 cores)
#   bash scripts/portability.sh tests/test_cache.py -x   # a subset: any pytest arguments
#   SETTINGS="avx2 one-thread" bash scripts/portability.sh -k shards
#
# A test that passes under `default` and fails under another setting depends on this CPU's
# kernels or thread count: it compares two computations bit for bit that only agree to rounding.
#
# Each setting runs the suite in one process (`-n 0`): the README's command splits it over two worker
# processes of one thread each (pyproject's `-n 2`), so the default setting here is what covers
# torch's multi-threaded kernels.
#
# Settings (each adds these variables to the environment; every process a test starts inherits them):
#   default             nothing: ATen's best vector ISA for this CPU, one thread per core
#   avx2                ATEN_CPU_CAPABILITY=avx2: ATen's kernels (softmax, norms, reductions, sdpa) in AVX2
#   default-capability  ATEN_CPU_CAPABILITY=default: ATen's kernels without explicit vector code
#   one-thread          OMP_NUM_THREADS=1: other work splits and summation orders
#   mkl-compatible      MKL_CBWR=COMPATIBLE: MKL's portable code path, i.e. other fp32 matmul kernels
#                       (ATEN_CPU_CAPABILITY does not reach MKL, which picks its own kernels per CPU)
# A setting the CPU cannot honour falls back silently; the line printed before each run shows the
# capability and thread count torch actually uses.
#
# Environment: PYTHON (default .venv/bin/python), SETTINGS (default: all five, in the order above),
# LOGS (default /tmp/emlab-portability-<time>): one log per setting and summary.tsv.
# Exit status: 0 when every setting passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
SETTINGS=${SETTINGS:-default avx2 default-capability one-thread mkl-compatible}
LOGS=${LOGS:-/tmp/emlab-portability-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$LOGS"

env_of() {
    case "$1" in
        default) echo "" ;;
        avx2) echo "ATEN_CPU_CAPABILITY=avx2" ;;
        default-capability) echo "ATEN_CPU_CAPABILITY=default" ;;
        one-thread) echo "OMP_NUM_THREADS=1" ;;
        mkl-compatible) echo "MKL_CBWR=COMPATIBLE" ;;
        *) echo "unknown setting $1 (one of: default avx2 default-capability one-thread mkl-compatible)" >&2
           return 1 ;;
    esac
}

for s in $SETTINGS; do env_of "$s" > /dev/null || exit 2; done

printf 'setting\tenvironment\tcapability\tthreads\tresult\tseconds\n' > "$LOGS/summary.tsv"
status=0
for s in $SETTINGS; do
    vars=$(env_of "$s")
    read -r capability threads < <(env $vars "$PYTHON" -c \
        "import torch; print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())")
    echo "== $s (${vars:-no change}): torch uses $capability, $threads threads; log $LOGS/$s.log"
    start=$(date +%s)
    env $vars HF_HUB_OFFLINE=1 "$PYTHON" -m pytest -m "slow or not slow" -q -p no:cacheprovider -n 0 "$@" \
        > "$LOGS/$s.log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - start ))
    result=$(grep -E "^=*.* (passed|failed|error|errors|skipped|deselected|no tests ran).* in [0-9.]+s" "$LOGS/$s.log" \
             | tail -1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
    grep -E "^(FAILED|ERROR) " "$LOGS/$s.log" | sed 's/^/   /'
    echo "   $s: ${result:-no summary (exit $rc)}, ${seconds} s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${vars:--}" "$capability" "$threads" "${result:-exit $rc}" "$seconds" \
        >> "$LOGS/summary.tsv"
    [ "$rc" -eq 0 ] || status=1
done
echo
column -t -s $'\t' "$LOGS/summary.tsv"
exit $status
