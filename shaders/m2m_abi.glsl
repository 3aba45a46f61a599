// Generated from m2m_gpu/backends/abi.py by scripts/build_shaders.py; do not edit.
const uint KEY_L2 = 0u;
const uint KEY_IP = 1u;
const uint KEY_SPLAT = 2u;
const uint KEY_DISTANCE = 3u;
const uint PARAM_ALPHA = 0u;
const uint PARAM_KAPPA = 1u;
const uint PARAM_TICK = 2u;
const uint PARAM_WIDTH = 4u;
const uint SEED_KEY_BITS = 0x7FFFFFFFu;
const uint CANONICAL_NAN_BITS = 0x7FC00000u;
const uint SELECT_IDS = 1u;
const uint SELECT_NO_BEST = 2u;
const uint CODEC_F32 = 0u;
const uint CODEC_F16 = 1u;
const uint CODEC_SQ8 = 2u;
