#!/usr/bin/env bash
# The GPU check of CUDA-graph replay, as one short script for a lent H100/H200 (../shared/gpu/README.md): after
# `setup.sh install` and `export PYTHONPATH=/tmp/site:$PWD`, run `bash benchmarks/gpu_check.sh OUT_DIR` from the
# checkout's root. Each step has its own time limit and writes its output under OUT_DIR as it goes.
#   1. replay on ONNX Runtime CUDA (tiny Qwen2-VL, fp32 and fp16): each replayed call against a plain run of its feeds
#      (the first graph and call that differ, if any), the tokens of a plain run, fp32 on the GPU against the CPU
#      (float32 products, no TF32), a batch of two prompt lengths, the shapes captured at load (then a request that
#      captures nothing), and the compiled PyTorch prefill; and the pixels
#      made on the GPU from 8-bit images against the image processor's (luvc.runtime.pixels);
#   2. benchmarks/gpu_speedup.py at Qwen2-VL-2B widths (GPU_LAYERS decoder layers, 8 encoder blocks, one 896x896
#      image): PyTorch eager and compiled, ONNX Runtime CUDA plain and replayed at batch 1 and 8, LUVC vs --no-luvc.
set -u
out=${1:-/tmp/luvc-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import onnxruntime as o, torch, transformers as t; print('onnxruntime', o.__version__, \
o.get_available_providers(), 'torch', torch.__version__, 'transformers', t.__version__)"
} 2>&1 | tee "$out/machine.txt"
timeout "${GPU_TEST_SECONDS:-240}" python3 -m pytest -q -p no:xdist -p no:cacheprovider -o addopts="" -m gpu \
    tests/runtime/test_replay_gpu.py tests/runtime/test_pixels.py -k "${GPU_TESTS:-tiny-qwen2-vl or alone}" 2>&1 | tail -60 | tee "$out/replay_tests.txt"
timeout "${GPU_BENCHMARK_SECONDS:-400}" python3 benchmarks/gpu_speedup.py --layers "${GPU_LAYERS:-8}" --vision-blocks 8 \
    --image-size 896 --repeats 5 --batch 8 --compile "${GPU_COMPILE:-1}" --exports "${GPU_EXPORTS:-1}" --json "$out/rows.json" 2>&1 \
    | grep -v "^W1\|torchvision" | tee "$out/speedup.txt"
echo "gpu_check done"
