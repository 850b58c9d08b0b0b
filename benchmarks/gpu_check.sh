#!/usr/bin/env bash
# The GPU check (issues 3 and 16): on a machine with an NVIDIA GPU and no internet, build fastrnn in place
# against the torch that is there, run the CUDA tests (both CUDA paths: the stepwise engine and the
# persistent kernel, forced), and benchmark both paths against torch.nn (cuDNN).
#
#   benchmarks/gpu_check.sh OUT_DIR [STAGE ...]
#
# Stages (default: all, in this order): build, tests, anchor, bench-bfloat16, bench-float32. Each benchmark
# stage runs every part twice, with FASTRNN_CUDA_PATH=stepwise and =persistent (the persistent kernel's
# parts name it; a case it cannot run is recorded as an ERROR saying why). bench-float32 runs with TF32 not
# allowed (IEEE fp32 on both sides, as the cost model assumes; the CUDA tests check both paths' TF32). All of it is meant to fit one
# 10-minute device call: DEADLINE (seconds from the start, default 570) cuts every part short that would run
# past it, and a stage that starts after it is skipped and says so.
# Each stage writes its own files into OUT_DIR as it finishes (so a call cut off by a time limit keeps
# what it did) and appends one line to OUT_DIR/status.txt; run the stages over several calls if one
# call has too little time (build and tests first). Benchmark parts are one cell and one dtype each,
# fastrnn against torch.nn: OUT_DIR/bench-<grid>-<dtype>[-tf32<on|off>]-<cell>/ (results.json,
# speedup.png), and .md (table), .log (progress) beside it.
# Environment: PART_TIMEOUT (seconds per benchmark part, default 60), MAX_JOBS (build jobs, default 16),
# DEADLINE (above).
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [STAGE ...]}
shift
stages=${*:-build tests anchor bench-bfloat16 bench-float32}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, whatever else is installed
part_timeout=${PART_TIMEOUT:-60}
deadline=${DEADLINE:-570}

note() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$out/status.txt"; }

left() { echo $((deadline - SECONDS)); }

bench_part() {  # bench_part PATH NAME ARGS...: one benchmark run on CUDA path PATH, bounded by PART_TIMEOUT and DEADLINE
  local path=$1 name=$2
  shift 2
  [ "$path" = persistent ] && name="$name-persistent"
  local budget=$part_timeout
  [ "$(left)" -lt "$budget" ] && budget=$(left)
  if [ "$budget" -le 5 ]; then
    note "$name: skipped (deadline)"
    return
  fi
  local t0=$SECONDS
  FASTRNN_CUDA_PATH=$path timeout "$budget" python -m benchmarks --device cuda --compare fastrnn,torch --lm-steps 0 \
    --repeats 10 --max-time 2 --out "$out/$name" "$@" > "$out/$name.md" 2> "$out/$name.log"
  note "$name: exit $? in $((SECONDS - t0)) s"
}

for stage in $stages; do
  case $stage in
    build)
      t0=$SECONDS
      {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
        nvcc --version | tail -1
        git log -1 --format='commit %H %s' 2>/dev/null || true
      } > "$out/machine.txt" 2>&1
      # TORCH_CUDA_ARCH_LIST unset: torch's helper builds for the GPU it sees (sm_90 on H100/H200).
      MAX_JOBS=${MAX_JOBS:-16} python setup.py build_ext --inplace > "$out/build.log" 2>&1
      rc=$?
      python -c "import fastrnn, json; print(json.dumps(fastrnn.backend_info()))" > "$out/backend_info.json" 2>&1
      note "build: exit $rc in $((SECONDS - t0)) s; $(cat "$out/backend_info.json" | head -c 400)"
      ;;
    tests)
      t0=$SECONDS
      # The CUDA group, the engine's CPU check, and the op-level tests (fast) as a sanity check.
      timeout "$(left)" python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py tests/test_persistent.py \
        tests/test_ops.py \
        --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1
      note "tests: exit $? in $((SECONDS - t0)) s; $(tail -1 "$out/tests.log")"
      ;;
    anchor)
      for path in stepwise persistent; do
        for dtype in float16 bfloat16; do bench_part $path "bench-anchor-$dtype-lstm" --grid anchor --dtypes $dtype --cells lstm; done
      done
      ;;
    bench-bfloat16)
      for cell in lstm gru rnn_tanh; do
        for path in stepwise persistent; do bench_part $path "bench-gpu-bfloat16-$cell" --grid gpu --dtypes bfloat16 --cells "$cell"; done
      done
      ;;
    bench-float32)
      for cell in lstm gru rnn_tanh; do
        for path in stepwise persistent; do
          bench_part $path "bench-gpu-float32-tf32off-$cell" --grid gpu --dtypes float32 --tf32 off --cells "$cell"
        done
      done
      ;;
    *)
      note "unknown stage $stage (build, tests, anchor, bench-bfloat16, bench-float32)"
      exit 2
      ;;
  esac
done
