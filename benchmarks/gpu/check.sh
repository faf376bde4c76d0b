#!/bin/bash
# The GPU checks, in one call of a lent machine (see benchmarks/gpu/wheels.sh for .gpu/whl):
# the GPU tests' path (a bf16 Ray Train + DeepSpeed run inside bench_train), bench_model's MFU
# and bench_train's split of the step. Results and logs go to $OUT (default results/gpu).
#   RUNS="ds ray" MODEL_BATCHES="1024 2048" TRAIN_ARGS="--warmup 100" bash benchmarks/gpu/check.sh
# MODEL_BATCHES= (set, empty) skips bench_model.
cd "$(dirname "$0")/../.."
out=${OUT:-results/gpu}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 EGECMP_RAY_DASHBOARD=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONPATH=$PWD  # the checkout's egecmp_ray, installed or not
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .gpu/whl/*.whl || exit 3
  export PYTHONPATH=$PWD:/tmp/site
fi
python3 -c "import ray, deepspeed, torch; print(ray.__version__, deepspeed.__version__, torch.__version__)" || exit 4
if [ -n "${MODEL_BATCHES-2048}" ]; then
  timeout "${MODEL_TIMEOUT:-170}" python3 benchmarks/bench_model.py --gpu --precision bf16 \
      --batches ${MODEL_BATCHES:-2048} --out "$out" > "$out/bench_model.log" 2>&1
  echo "bench_model rc $?"; grep -E "^\{|bench_model --gpu" "$out/bench_model.log" | tail -5
fi
# --work .gpu/work reuses a preprocessed paper dataset carried there (no jieba needed there),
# made here with `egecmp synth --rows N --out .gpu/work/synth --preset paper` and `egecmp
# preprocess --input .gpu/work/synth --out .gpu/work/prep --preset paper` (then remove
# .gpu/work/synth), N >= 64 x (steps + warmup + 5) x 5/4: 2,720 for the defaults.
timeout "${TRAIN_TIMEOUT:-370}" python3 benchmarks/bench_train.py --gpu --work .gpu/work --out "$out" \
    --gpu-runs ${RUNS:-plain ray ds ds-task ds-data} ${TRAIN_ARGS:-} > "$out/bench_train.log" 2>&1
echo "bench_train rc $?"; grep -E "^\{|bench train" "$out/bench_train.log" | tail -12
