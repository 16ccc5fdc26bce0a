#!/usr/bin/env bash
# The GPU check, run from the repository root on a machine with a CUDA GPU: the CUDA tests, the transform
# benchmark on the device, and `quakemon bench` on CUDA (roof, replay, live). For a machine without network
# access, wheels of the missing dependencies (e.g. obspy, pyzmq, structlog, decorator) can be put in .whl/;
# they are installed into /tmp/site first. Output goes to $OUT (default /tmp/quakemon-gpu).
set -u
OUT=${OUT:-/tmp/quakemon-gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nproc
python3 -c "import torch, timm, obspy, zmq; print('torch', torch.__version__, torch.cuda.get_device_name(0), \
'timm', timm.__version__, 'obspy', obspy.__version__, 'pyzmq', zmq.__version__)"

step "pytest: CUDA tests and the end-to-end daemon (device auto = CUDA here)"
timeout 180 python3 -m pytest -q -rs -p no:cacheprovider tests/pipeline/test_cuda.py tests/service/test_pipeline_e2e.py 2>&1 | tail -15

step "transform benchmark on the device (batched preprocess_batch on CUDA vs the per-window scipy loop on CPU)"
timeout 90 python3 benchmarks/bench_transforms.py --device cuda --batch 1024 --repeats 10 2>&1 | tail -12

step "quakemon bench: roof and replay on CUDA"
timeout 200 python3 -m quakemon bench --device cuda --parts roof,replay --roof-batches 64,256,1024,4096 \
    --replay-stations 120 --replay-batch 1024 --replay-repeats 2 --json "$OUT/bench_gpu.json" 2>&1 | tail -20

step "quakemon bench: live capacity with CUDA inference"
timeout 240 python3 -m quakemon bench --device cuda --parts live --live-stations 500,1000,2000 \
    --live-batch 512 --json "$OUT/live_gpu.json" 2>&1 | tail -20
step done
