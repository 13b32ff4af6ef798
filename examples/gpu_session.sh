#!/usr/bin/env bash
# The one prepared run for a lent GPU (the device tool): the concept world's pretraining on the GPU,
# then the trainer's GPU checks (examples/gpu_checks.py); everything lands in $OUT. The GPU image
# lacks diffusers and clip-anytorch: carry their wheels in .whl/ (see docs/development.md).
#
#   OUT=/tmp/out UNET_SECONDS=270 bash examples/gpu_session.sh
# A smoke test of the plumbing on a CPU:
#   DEVICE=cpu SHAPE=tiny RES=64 VAE_STEPS=3 POOL=2000 UNET_SECONDS=5 SNAPSHOT=5 bash examples/gpu_session.sh
# CAPTION_FLAGS pretrains a candidate world instead of the shipped model's captions, e.g.
#   CAPTION_FLAGS="--generic_share 0.25 --round_share 0.5" (examples/concepts-results-2026-12-07c.md).
set -u
OUT=${OUT:-/tmp/gpu-out}
UNET_SECONDS=${UNET_SECONDS:-270}
CHECKS_DEADLINE_S=${CHECKS_DEADLINE_S:-540}
DEVICE=${DEVICE:-cuda} SHAPE=${SHAPE:-sd15} RES=${RES:-512}
VAE_STEPS=${VAE_STEPS:-1500} POOL=${POOL:-400000} SNAPSHOT=${SNAPSHOT:-2000}
CAPTION_FLAGS=${CAPTION_FLAGS:-}
mkdir -p "$OUT"
start=$SECONDS
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

# The checks' SD1.5-shaped random model is built on the CPU while the GPU pretrains.
mkdir -p /tmp/gpu-checks
(python3 -c 'import sys; from pathlib import Path; from invokeai_ti.models.tiny import save_tiny_model;
save_tiny_model(Path(sys.argv[1]), family="sd1", shape=sys.argv[2])' /tmp/gpu-checks/$SHAPE.partial $SHAPE &&
  mv /tmp/gpu-checks/$SHAPE.partial /tmp/gpu-checks/$SHAPE) >/tmp/gpu-checks/build.log 2>&1 &

pack() {  # a model folder -> $OUT/model.tar.part-aa, -ab (each under the 16 MB a file comes back in)
  rm -rf /tmp/pack && mkdir -p /tmp/pack &&
    tar -C "$(dirname "$1")" -cf - "$(basename "$1")" | split -b 15M - /tmp/pack/model.tar.part- &&
    mv /tmp/pack/model.tar.part-* "$OUT/"
}
# Until the final model exists, keep the newest snapshot packed, so a timeout still returns one.
(while sleep 20; do
  newest=$(ls -d /tmp/concepts/model-step* 2>/dev/null | sort -V | tail -1)
  [ -n "$newest" ] && [ "$newest" != "$(cat /tmp/packed 2>/dev/null)" ] && sleep 3 && pack "$newest" &&
    echo "$newest" >/tmp/packed
done) &
packer=$!

timeout $((UNET_SECONDS + 150)) python3 -m invokeai_ti.concepts model /tmp/concepts/model --pretrain \
  --device "$DEVICE" --vae_steps "$VAE_STEPS" --unet_steps 1000000 --batch_size 256 \
  --pool_size "$POOL" --unet_seconds "$UNET_SECONDS" --snapshot_every "$SNAPSHOT" $CAPTION_FLAGS \
  >"$OUT/pretrain.log" 2>&1
echo "pretrain exit $? after $((SECONDS - start)) s" >>"$OUT/pretrain.log"
kill $packer
if [ -f /tmp/concepts/model/pretrain.json ]; then
  pack /tmp/concepts/model && cp /tmp/concepts/model/pretrain.json "$OUT/"
fi

wait  # the SD1.5 model build
cp /tmp/gpu-checks/build.log "$OUT/gpu-checks.log"
python3 examples/gpu_checks.py --out "$OUT/gpu-checks.json" --work /tmp/gpu-checks --shape "$SHAPE" \
  --resolution "$RES" --deadline_s $((CHECKS_DEADLINE_S - (SECONDS - start))) >>"$OUT/gpu-checks.log" 2>&1
echo "session done after $((SECONDS - start)) s" | tee -a "$OUT/gpu-checks.log"
