// Attention forward launcher for float (one translation unit per dtype: parallel compilation).
#include "attention.cuh"

int et::attention_launch_f32(const AttnArgs& args, int batch_heads, int head_dim, void* stream) {
  return attn::launch_typed<float>(args, batch_heads, head_dim, stream);
}
