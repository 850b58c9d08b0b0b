#!/usr/bin/env bash
# The GPU check (issue 3): on a machine with an NVIDIA GPU and no internet, build fastrnn in place
# against the torch that is there, run the CUDA tests, and benchmark fastrnn against torch.nn (cuDNN).
#
#   benchmarks/gpu_check.sh OUT_DIR [STAGE ...]
#
# Stages (default: all, in this order): build, tests, bench-bfloat16, bench-float32, anchor. bench-float32
# runs with TF32 allowed (torch's cuDNN default) and not (IEEE fp32), each for both implementations.
# Each stage writes its own files into OUT_DIR as it finishes (so a call cut off by a time limit keeps
# what it did) and appends one line to OUT_DIR/status.txt; run the stages over several calls if one
# call has too little time (build and tests first). Benchmark parts are one cell and one dtype each,
# fastrnn against torch.nn: OUT_DIR/bench-<grid>-<dtype>[-tf32<on|off>]-<cell>/ (results.json,
# speedup.png), and .md (table), .log (progress) beside it.
# Environment: PART_TIMEOUT (seconds per benchmark part, default 240), MAX_JOBS (build jobs, default 16).
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [STAGE ...]}
shift
stages=${*:-build tests bench-bfloat16 bench-float32 anchor}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, whatever else is installed
part_timeout=${PART_TIMEOUT:-240}

note() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$out/status.txt"; }

bench_part() {  # bench_part NAME ARGS...: one benchmark run, bounded by PART_TIMEOUT
  local name=$1
  shift
  local t0=$SECONDS
  timeout "$part_timeout" python -m benchmarks --device cuda --compare fastrnn,torch --lm-steps 0 --repeats 10 \
    --max-time 5 --out "$out/$name" "$@" > "$out/$name.md" 2> "$out/$name.log"
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
      python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py tests/test_ops.py \
        --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1
      note "tests: exit $? in $((SECONDS - t0)) s; $(tail -1 "$out/tests.log")"
      ;;
    bench-bfloat16)
      for cell in lstm gru rnn_tanh; do bench_part "bench-gpu-bfloat16-$cell" --grid gpu --dtypes bfloat16 --cells "$cell"; done
      ;;
    bench-float32)
      for tf32 in on off; do
        for cell in lstm gru rnn_tanh; do
          bench_part "bench-gpu-float32-tf32$tf32-$cell" --grid gpu --dtypes float32 --tf32 "$tf32" --cells "$cell"
        done
      done
      ;;
    anchor)
      bench_part "bench-anchor-float16-lstm" --grid anchor --dtypes float16 --cells lstm
      ;;
    *)
      note "unknown stage $stage (build, tests, bench-bfloat16, bench-float32, anchor)"
      exit 2
      ;;
  esac
done
