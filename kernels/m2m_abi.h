// Generated from m2m_gpu/backends/abi.py by scripts/build_shaders.py; do not edit.
#pragma once
#define KEY_L2 0u
#define KEY_IP 1u
#define KEY_SPLAT 2u
#define KEY_DISTANCE 3u
#define PARAM_ALPHA 0u
#define PARAM_KAPPA 1u
#define PARAM_TICK 2u
#define PARAM_WIDTH 4u
#define SEED_KEY_BITS 0x7FFFFFFFu
#define CANONICAL_NAN_BITS 0x7FC00000u
#define SELECT_IDS 1u
#define SELECT_NO_BEST 2u
#define CODEC_F32 0u
#define CODEC_F16 1u
#define CODEC_SQ8 2u
