// Attention forward launcher for __nv_bfloat16 (one translation unit per dtype: parallel compilation).
#include "attention.cuh"

int et::attention_launch_bf16(const AttnArgs& args, int batch_heads, int head_dim, void* stream) {
  return attn::launch_typed<__nv_bfloat16>(args, batch_heads, head_dim, stream);
}
