// The traits table. Values are those of ik_llama.cpp @ 8337e4cd (FORMATS.md §1); ggml ids are
// append-only and identical to ggml / ik_llama.cpp so that GGUF tensors map one to one.
#include "types.h"

namespace iqkq {

const ActTraits kActs[A_COUNT] = {
    //  name       id   block bytes
    {"q8_2_x4",  99,  32,  36},
    {"q8_K",     15, 256, 296},
    {"q8_K32",  148, 256, 296},
};

const TypeTraits kTypes[T_COUNT] = {
    // name       id  block bytes meta  ilv  act         imat   r-twin      base    large batch
    {"q8_0",       8,  32,  34,   0,    1,  A_Q8_2_X4,  false, T_Q8_0_R8, -1,     T_Q8_0_R8},
    {"q8_0_r8",  208,  32,  34,   0,    8,  A_Q8_2_X4,  false, -1,        T_Q8_0, -1},
    {"q8_k_r8",  399, 256, 258,   0,    8,  A_Q8_K,     false, -1,        -1,     -1},
    {"iq4_ks",   144, 256, 136,   4,    1,  A_Q8_K,     false, T_IQ4_KS_R4, -1,   T_Q8_K_R8},
    {"iq4_ks_r4",344, 256, 136,   4,    4,  A_Q8_K32,   false, -1,        T_IQ4_KS, -1},
    {"iq3_xxs",   18, 256,  98,   0,    1,  A_Q8_K,     false, T_IQ3_XXS_R4, -1,  T_Q8_K_R8},
    {"iq3_xxs_r4",218, 256, 98,   0,    4,  A_Q8_K,     false, -1,        T_IQ3_XXS, -1},
};

}  // namespace iqkq
