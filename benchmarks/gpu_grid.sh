#!/usr/bin/env bash
# The prepared GPU run of issue #12: quality.py's held-out deep grid on the 3x32x32
# architectures, on digits resized to 32x32 (what a 2-core CPU cannot afford: one ResNet18
# retraining at 32px takes many minutes there, and every run needs two).
#
# Sized for one `device` call (10 minutes at most; a session has 15 minutes of device time):
# one process per architecture, each time-boxed, so a slow one costs its own figures only;
# each writes its JSON and log to $OUT (the device tool's return folder) or reports/bench/gpu/.
# The device image has torch, scikit-learn, pandas and safetensors: nothing is installed.
#
#   device run:  bash benchmarks/gpu_grid.sh               (timeout_s 560)
#   CPU smoke:   DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_grid.sh --seeds 3 --singles 0 --pairs 0 --triples 0 --train-epochs 1
# Extra arguments go to every quality.py call (later flags win).
set -uo pipefail
out=${OUT:-reports/bench/gpu}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
per_arch_s=${PER_ARCH_S:-170}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then
  nvidia-smi -L | tee "$out/device.txt"
  "$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__)' \
    | tee -a "$out/device.txt" || exit 1
fi
status=0
for arch in resnet18_cifar allcnn mobilenet_v2; do
  echo "== $arch, 32x32, up to ${per_arch_s}s"
  timeout "$per_arch_s" "$python" benchmarks/quality.py --device "$device" --threads 4 --archs "$arch" \
    --image-size 32 --seeds 3 4 --singles 0 2 5 7 --pairs 1 --triples 1 --no-noise --time-repeats 1 \
    --out "$out/quality-32px-$arch.json" "$@" 2>&1 | tee "$out/quality-32px-$arch.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ]; then echo "$arch: its ${per_arch_s}s time box ran out"; fi
  [ "$rc" -eq 0 ] || { echo "$arch: exit $rc"; status=1; }
done
exit "$status"
