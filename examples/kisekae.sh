#!/usr/bin/env bash
# Kisekaeichi: the person of start.png wearing the clothes of ref.png (a one-frame edit).
# ref.png's alpha channel (if any) is its mask; --start-mask keeps only the regions to repaint.
set -euo pipefail
MODELS=${MODELS:-models}
framepack kisekae \
  --dit "$MODELS/FramePackI2V_HY/diffusion_pytorch_model-00001-of-00003.safetensors" \
  --vae "$MODELS/vae/diffusion_pytorch_model.safetensors" \
  --text_encoder1 "$MODELS/text_encoder/model-00001-of-00004.safetensors" \
  --text_encoder2 "$MODELS/text_encoder_2" \
  --image_encoder "$MODELS/image_encoder" \
  --start start.png --reference ref.png --start-mask start_mask.png \
  --prompt "The girl wears the dress of the reference image." \
  --video_size 832 480 --infer_steps 25 --seed 1234 \
  --vae_chunk_size 32 --vae_spatial_tile_sample_min_size 128 \
  --save_path outputs/
