// Attention forward launcher for __half (one translation unit per dtype: parallel compilation).
#include "attention.cuh"

int et::attention_launch_f16(const AttnArgs& args, int batch_heads, int head_dim, void* stream) {
  return attn::launch_typed<__half>(args, batch_heads, head_dim, stream);
}
