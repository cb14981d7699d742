// Activation formats (scalar reference): q8_2_x4 (docs/formats.md §10) and q8_K / q8_K32 (§4.2,
// the AVX2 variant ik_llama.cpp uses as from_float). Activations are quantized once per
// matmul, row by row, into these layouts; the weight kernels consume them.
#include "common.h"
#include "formats/act.h"
#include "types.h"

#include <cmath>

namespace iqkq {
namespace {

float block_absmax(const float* x, int n) {
    float m = 0.0f;
    for (int j = 0; j < n; ++j) {
        const float a = fabsf_(x[j]);
        m = a > m ? a : m;
    }
    return m;
}

void quantize_q8_2_block(const float* x, uint16_t* d_out, int16_t* s_out, int8_t* q) {
    const float m = block_absmax(x, 32);
    const uint16_t t = fp32_to_bf16(m / 127.0f);
    const float d = bf16_to_fp32(t);
    // A block so small that 1/d overflows quantizes to zeros (docs/formats.md, "Non-finite
    // and extreme activations"; ik_llama.cpp would produce -128s there).
    const float r = d > 0.0f ? 1.0f / d : 0.0f;
    const float id = r <= 3.40282347e38f ? r : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
        const int8_t v = sat_i8(cvt_rne_i32(x[j] * id));
        q[j] = v;
        sum += v;
    }
    *d_out = t;
    *s_out = (int16_t)sum;
}

void act_q8_2_x4(const float* x, uint8_t* dst, int64_t K) {
    const int64_t nb = K / 32, nb4 = 4 * (nb / 4);
    for (int64_t i = 0; i < nb; ++i) {
        uint16_t d;
        int16_t s;
        int8_t q[32];
        quantize_q8_2_block(x + 32 * i, &d, &s, q);
        wr_u16(dst + act::q82_d_offset(i, nb4), d);
        wr_u16(dst + act::q82_s_offset(i, nb4), (uint16_t)s);
        std::memcpy(dst + act::q82_qs_offset(i, nb4), q, 32);
    }
}

template <bool kFloatSums>
void act_q8_K_impl(const float* x, uint8_t* dst, int64_t K) {
    for (int64_t i = 0; i < K / 256; ++i, x += 256, dst += act::kQ8KBytes) {
        const float m = block_absmax(x, 256);
        const float d = m / 127.0f;
        const float r = m != 0.0f ? 127.0f / m : 0.0f;
        const float id = r <= 3.40282347e38f ? r : 0.0f;  // overflowing scale: zeros (see q8_2 above)
        int8_t* q = reinterpret_cast<int8_t*>(dst + act::kQ8KQs);
        for (int j = 0; j < 256; ++j) q[j] = sat_i8(cvt_rne_i32(id * x[j]));
        wr_f32(dst + act::kQ8KD, d);
        if (kFloatSums) {
            float total = 0.0f;
            for (int k = 0; k < 8; ++k) {
                int s = 0;
                for (int j = 0; j < 32; ++j) s += q[32 * k + j];
                const float bs = d * (float)s;
                wr_f32(dst + act::kQ8KBsums + 4 * k, bs);
                total = total + bs;
            }
            wr_f32(dst + act::kQ8KSum, total);
        } else {
            int total = 0;
            for (int k = 0; k < 16; ++k) {
                int s = 0;
                for (int j = 0; j < 16; ++j) s += q[16 * k + j];
                wr_u16(dst + act::kQ8KBsums + 2 * k, (uint16_t)(int16_t)s);
                total += s;
            }
            wr_f32(dst + act::kQ8KSum, d * (float)total);
        }
    }
}

void act_q8_K(const float* x, uint8_t* dst, int64_t K) { act_q8_K_impl<false>(x, dst, K); }
void act_q8_K32(const float* x, uint8_t* dst, int64_t K) { act_q8_K_impl<true>(x, dst, K); }

}  // namespace

void register_scalar_act(KernelTables& t) {
    t.act_quant[A_Q8_2_X4] = act_q8_2_x4;
    t.act_quant[A_Q8_K] = act_q8_K;
    t.act_quant[A_Q8_K32] = act_q8_K32;
}

}  // namespace iqkq
