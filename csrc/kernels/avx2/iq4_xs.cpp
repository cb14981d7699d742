// AVX2 kernels for iq4_xs and iq4_xs_r8: dequantization, the matmul kernels iq4_xs x q8_K
// and iq4_xs_r8 x q8_K32 of ik_llama.cpp's AVX2 build, and the conversion to q8_k_r8 for
// large batches (docs/formats.md, "iq4_xs"). Bit-exact twins of formats/iq4_xs.cpp: the
// integer sums are the same (including the int16 saturation of the iq4_xs kernel), and every
// float operation is the same operation, per output, in the same order.
//
// No STL containers or shared inline functions here (see common.h).
#include "common.h"
#include "formats/act.h"
#include "formats/iq4_xs.h"
#include "formats/q8_k_r8.h"
#include "kernels/avx2/family_iq4.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2_iq4;
using namespace iq4_xs;

constexpr int kActBytes = act::kQ8KBytes;
constexpr int kTileBytes = 32 * 1024;

inline __m256i grid_signed() {
    return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(iq4_grid::kValues)));
}
// grid + 128 as unsigned bytes (1 .. 241), as ik_llama.cpp's iq4_xs kernel uses it.
inline __m256i grid_unsigned() { return _mm256_xor_si256(grid_signed(), _mm256_set1_epi8((char)0x80)); }

// The 8 block scale codes (0..63) of an iq4_xs super-block as int32 lanes.
inline __m256i block_codes(const uint8_t* sb) {
    const __m256i sl = _mm256_srlv_epi32(_mm256_set1_epi32((int)rd_u32(sb + kOffSl)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    const __m256i sh = _mm256_srlv_epi32(_mm256_set1_epi32((int)rd_u16(sb + kOffSh)), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    return _mm256_or_si256(_mm256_and_si256(sl, _mm256_set1_epi32(15)), _mm256_and_si256(_mm256_slli_epi32(sh, 4), _mm256_set1_epi32(0x30)));
}
// The 8 block scales (code - 32) as int32 lanes.
inline __m256i block_scales(const uint8_t* sb) { return _mm256_sub_epi32(block_codes(sb), _mm256_set1_epi32(32)); }
// The same, in both int16 halves of each int32 lane (the madd operand).
inline __m256i block_scale_pairs(const uint8_t* sb) {
    const __m256i c = block_codes(sb);
    return _mm256_sub_epi16(_mm256_or_si256(c, _mm256_slli_epi32(c, 16)), _mm256_set1_epi16(32));
}

// ================================================================================ quantization
//
// Pass 1 of the quantizer (formats/iq4_xs.cpp quantize_super_block), per 32-block: the 31
// scale trials are vectorized across trials (lane = trial; the weighted sums run over the
// elements in order, as in the reference) with best_index as the threshold search of
// family_iq4.h (|id * x| <= 134 * (1 + 2^-23) here); the accept decisions then run in the
// reference order. The greedy refinement evaluates its 32 gradients / steps 8 at a time and
// picks the first element of smallest step, as the reference loop does. Pass 2 is the
// portable iq4_xs::finish_super_block.

alignas(32) float g_thr[16];  // switching points of kvalues_iq4nl (register_avx2_iq4_xs)

// Smallest of 8 floats (no NaN here).
inline float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(_mm_movehl_ps(m, m), m);
    m = _mm_min_ss(_mm_movehdup_ps(m), m);
    return _mm_cvtss_f32(m);
}

// 16-entry float table lookup by int32 index 0..15.
inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

struct GridTables {
    float val[16], up[16], dn[16];  // grid, grid[L+1] - grid[L], grid[L-1] - grid[L]
};
constexpr GridTables make_grid_tables() {
    GridTables t{};
    for (int l = 0; l < 16; ++l) {
        t.val[l] = (float)iq4_grid::kValues[l];
        t.up[l] = l < 15 ? (float)(iq4_grid::kValues[l + 1] - iq4_grid::kValues[l]) : 0.0f;
        t.dn[l] = l > 0 ? (float)(iq4_grid::kValues[l - 1] - iq4_grid::kValues[l]) : 0.0f;
    }
    return t;
}
alignas(32) constexpr GridTables kGT = make_grid_tables();

// Block scale of one 32-block (x, weights w): the reference's pass 1 for that block.
float block_scale(const float* xb, const float* w, const Search& s) {
    __m256 ax[4];
    for (int k = 0; k < 4; ++k) ax[k] = avx2::abs_ps(_mm256_loadu_ps(xb + 8 * k));
    const float amax = avx2::hmax8(_mm256_max_ps(_mm256_max_ps(ax[0], ax[1]), _mm256_max_ps(ax[2], ax[3])));
    if (amax < 1e-15f) return 0.0f;  // GROUP_MAX_EPS
    const __m256 va = _mm256_set1_ps(amax);
    uint32_t hit = 0;
    for (int k = 0; k < 4; ++k) hit |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(ax[k], va, _CMP_EQ_OQ)) << (8 * k);
    const float max = xb[__builtin_ctz(hit)];

    // lane 0: the first trial (id = 1/d); lanes 1 + 2k, 2 + 2k: t = k - 7 with grid[0], grid[15]
    const float d0 = -max / (float)kNL[0];
    alignas(32) float ids[32];
    {
        const __m256 vmax = _mm256_set1_ps(max);
        alignas(32) float num[32];
        num[0] = 0.0f;
        for (int k = 0; k < 15; ++k) {
            num[1 + 2 * k] = (float)(k - 7 + kNL[0]);
            num[2 + 2 * k] = (float)(k - 7 + kNL[15]);
        }
        num[31] = 0.0f;
        for (int v = 0; v < 4; ++v) _mm256_store_ps(ids + 8 * v, _mm256_div_ps(_mm256_load_ps(num + 8 * v), vmax));
        ids[0] = 1.0f / d0;
        ids[31] = 0.0f;
    }
    alignas(32) float sqx[32], sq2[32];
    {
        __m256 id[4], a[4], b[4];
        for (int v = 0; v < 4; ++v) {
            id[v] = _mm256_load_ps(ids + 8 * v);
            a[v] = b[v] = _mm256_setzero_ps();
        }
        for (int j = 0; j < kBlock; ++j) {
            const __m256 x = _mm256_broadcast_ss(xb + j), wj = _mm256_broadcast_ss(w + j);
            for (int v = 0; v < 4; ++v) {
                const __m256 q = best_value(_mm256_mul_ps(id[v], x), s);
                const __m256 wq = _mm256_mul_ps(wj, q);
                a[v] = _mm256_add_ps(a[v], _mm256_mul_ps(wq, x));
                b[v] = _mm256_add_ps(b[v], _mm256_mul_ps(wq, q));
            }
        }
        for (int v = 0; v < 4; ++v) {
            _mm256_store_ps(sqx + 8 * v, a[v]);
            _mm256_store_ps(sq2 + 8 * v, b[v]);
        }
    }
    float d = sqx[0] / sq2[0];  // unguarded, as in the reference
    float best = d * sqx[0];
    float sumqx = sqx[0], sumq2 = sq2[0];
    int win = 0;
    for (int l = 1; l <= 30; ++l) {
        if (sq2[l] > 0 && sqx[l] * sqx[l] > best * sq2[l]) {
            d = sqx[l] / sq2[l];
            best = d * sqx[l];
            sumqx = sqx[l];
            sumq2 = sq2[l];
            win = l;
        }
    }
    alignas(32) int32_t L[kBlock];
    for (int j = 0; j < kBlock; ++j) L[j] = iq4_grid::best_index(kNL, ids[win] * xb[j]);

    // Greedy refinement.
    const __m256 tv0 = _mm256_load_ps(kGT.val), tv1 = _mm256_load_ps(kGT.val + 8);
    const __m256 tu0 = _mm256_load_ps(kGT.up), tu1 = _mm256_load_ps(kGT.up + 8);
    const __m256 td0 = _mm256_load_ps(kGT.dn), td1 = _mm256_load_ps(kGT.dn + 8);
    const __m256 inf = _mm256_set1_ps(__builtin_inff());
    const __m256i i15 = _mm256_set1_epi32(15), i0 = _mm256_setzero_si256();
    for (int iter = 0; iter < 32 * kBlock; ++iter) {
        const __m256 vd = _mm256_set1_ps(d);
        __m256 st[4];
        uint32_t upm = 0;
        for (int c = 0; c < 4; ++c) {
            const __m256i Lv = _mm256_load_si256(reinterpret_cast<const __m256i*>(L + 8 * c));
            const __m256 x = _mm256_loadu_ps(xb + 8 * c), wv = _mm256_loadu_ps(w + 8 * c);
            const __m256 g = _mm256_mul_ps(_mm256_mul_ps(vd, wv), _mm256_sub_ps(x, _mm256_mul_ps(vd, lookup16(tv0, tv1, Lv))));
            const __m256 up = _mm256_and_ps(_mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GT_OQ),
                                            _mm256_castsi256_ps(_mm256_cmpgt_epi32(i15, Lv)));
            const __m256 dn = _mm256_and_ps(_mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ),
                                            _mm256_castsi256_ps(_mm256_cmpgt_epi32(Lv, i0)));
            const __m256 num = _mm256_blendv_ps(lookup16(td0, td1, Lv), lookup16(tu0, tu1, Lv), up);
            st[c] = _mm256_blendv_ps(inf, _mm256_div_ps(num, g), _mm256_or_ps(up, dn));
            upm |= (uint32_t)_mm256_movemask_ps(up) << (8 * c);
        }
        const float m = hmin8(_mm256_min_ps(_mm256_min_ps(st[0], st[1]), _mm256_min_ps(st[2], st[3])));
        if (!(m < __builtin_inff())) break;  // no candidate
        const __m256 vm = _mm256_set1_ps(m);
        uint32_t eq = 0;
        for (int c = 0; c < 4; ++c) eq |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(st[c], vm, _CMP_EQ_OQ)) << (8 * c);
        const int best_j = __builtin_ctz(eq);
        const int dir = (upm >> best_j) & 1 ? 1 : -1;
        const float wj = w[best_j];
        const int v0 = kNL[L[best_j]], v1 = kNL[L[best_j] + dir];
        const float new_sumqx = sumqx + wj * xb[best_j] * (float)(v1 - v0);
        const float new_sumq2 = sumq2 + wj * (float)(v1 * v1 - v0 * v0);
        if (new_sumq2 > 0 && new_sumqx * new_sumqx > best * new_sumq2) {
            sumqx = new_sumqx;
            sumq2 = new_sumq2;
            d = sumqx / sumq2;
            best = d * sumqx;
            L[best_j] += dir;
        } else {
            break;
        }
    }
    return d;
}

void quantize_iq4_xs(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    const Search s = make_grid_search(g_thr, kNL);
    alignas(32) float w[kBlock];
    float scales[8];
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const float* x = src + r * K + i * kSuper;
            const float* qw = imatrix ? imatrix + i * kSuper : nullptr;
            float sigma2 = 0.0f;
            for (int j = 0; j < kSuper; ++j) sigma2 += x[j] * x[j];
            sigma2 *= 2.0f / kSuper;
            float max_scale = 0.0f, amax_scale = 0.0f;
            for (int b = 0; b < 8; ++b) {
                const float* xb = x + b * kBlock;
                for (int j = 0; j < kBlock; j += 8) {
                    const __m256 xv = _mm256_loadu_ps(xb + j);
                    const __m256 x2 = _mm256_mul_ps(xv, xv);
                    _mm256_store_ps(w + j, qw ? _mm256_mul_ps(_mm256_loadu_ps(qw + b * kBlock + j),
                                                              _mm256_sqrt_ps(_mm256_add_ps(_mm256_set1_ps(sigma2), x2)))
                                              : x2);
                }
                const float d = block_scale(xb, w, s);
                scales[b] = d;
                const float ad = fabsf_(d);
                if (ad > amax_scale) {
                    amax_scale = ad;
                    max_scale = d;
                }
            }
            iq4_xs::finish_super_block(x, scales, max_scale, dst + r * rb + i * kBytes);
        }
    }
}

void quantize_iq4_xs_r8(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    iq4_xs::quantize_r8_with(quantize_iq4_xs, src, dst, nrows, K, imatrix);
}

// ================================================================================ dequantization

void dequantize_iq4_xs(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    const __m256i tab = grid_signed();
    alignas(32) int32_t ls[8];
    for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* sb = src + r * rb + i * kBytes;
            const float d = _cvtsh_ss(rd_u16(sb + kOffD));
            _mm256_store_si256(reinterpret_cast<__m256i*>(ls), block_scales(sb));
            for (int b = 0; b < 8; ++b) {
                const __m256i v = _mm256_shuffle_epi8(tab, unpack_nibbles(load16(sb + kOffQs + 16 * b)));
                store_block(v, d * (float)ls[b], dst + r * K + i * kSuper + 32 * b);
            }
        }
    }
}

// ================================================================================ matmul iq4_xs

// iq4_xs x q8_K for NC columns on the paired activation layout (family_iq4.h). Per
// super-block: lane k += fma((-128 d) dA, ls_k (bs_2k + bs_2k+1)); then the unsigned-grid
// dot products (saturating maddubs, exact madd with the block scale) and lane L +=
// fma(d dA, S_L); finally H8.
template <int NC>
__attribute__((noinline)) void gemm_iq4_xs_paired(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m256i tab = grid_unsigned();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i sel[4];  // block 2p in the low half, 2p+1 in the high half
    for (int p = 0; p < 4; ++p) sel[p] = _mm256_setr_epi32(2 * p, 2 * p, 2 * p, 2 * p, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1);
    const uint8_t* acts[NC];
    const uint8_t* pq[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + (n0 + n) * g.a_row_bytes;
        pq[n] = g.P + (n0 + n) * g.p_row_bytes;
    }
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + i * kBytes;
            const float d = _cvtsh_ss(rd_u16(sb + kOffD));
            const float dm = -128.0f * d;
            const __m256i pairs = block_scale_pairs(sb);
            for (int n = 0; n < NC; ++n) {
                const uint8_t* ab = acts[n] + i * kActBytes;
                const __m256i mins = _mm256_madd_epi16(pairs, load32(ab + act::kQ8KBsums));
                acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(dm * rd_f32(ab + act::kQ8KD)), _mm256_cvtepi32_ps(mins), acc[n]);
            }
            __m256i sa[NC], sh[NC];
            for (int n = 0; n < NC; ++n) sa[n] = sh[n] = _mm256_setzero_si256();
            for (int p = 0; p < 4; ++p) {
                const __m256i q = load32(sb + kOffQs + 32 * p);
                const __m256i vl = _mm256_shuffle_epi8(tab, _mm256_and_si256(q, m4));
                const __m256i vh = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
                const __m256i ls = _mm256_permutevar8x32_epi32(pairs, sel[p]);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* a = pq[n] + i * kSuper + 64 * p;
                    sa[n] = _mm256_add_epi32(sa[n], _mm256_madd_epi16(ls, _mm256_maddubs_epi16(vl, load32(a))));
                    sh[n] = _mm256_add_epi32(sh[n], _mm256_madd_epi16(ls, _mm256_maddubs_epi16(vh, load32(a + 32))));
                }
            }
            for (int n = 0; n < NC; ++n) {
                const __m256 c = _mm256_set1_ps(d * rd_f32(acts[n] + i * kActBytes + act::kQ8KD));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(unpair_lanes(sa[n], sh[n])), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = avx2::hsum8(acc[n]);
    }
}

void gemm_iq4_xs(const GemmArgs& g) {
    for (int64_t n = 0; n < g.ncols;) {
        switch (column_block(g.ncols - n)) {
            case 4: gemm_iq4_xs_paired<4>(g, n); n += 4; break;
            case 3: gemm_iq4_xs_paired<3>(g, n); n += 3; break;
            case 2: gemm_iq4_xs_paired<2>(g, n); n += 2; break;
            default: gemm_iq4_xs_paired<1>(g, n); n += 1; break;
        }
    }
}

// ================================================================================ matmul iq4_xs_r8

// The 64 scales (code - 32) of an iq4_xs_r8 group super-block, byte 8b + k = block b, row k.
inline void r8_scales(const uint8_t* gb, int8_t* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(32);
    const __m256i sl = load32(gb + kR8OffSl);
    const __m128i shb = load16(gb + kR8OffSh);
    const __m256i sh = _mm256_set_m128i(_mm_srli_epi16(shb, 2), shb);
    const __m256i h0 = _mm256_or_si256(_mm256_and_si256(sl, m4), _mm256_and_si256(_mm256_slli_epi16(sh, 4), m30));
    const __m256i h1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(sl, 4), m4), _mm256_and_si256(sh, m30));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), _mm256_sub_epi8(h0, m32));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_sub_epi8(h1, m32));
}

// iq4_xs_r8 x q8_K32 for NC columns: lane k = row k of the group; per block the signed grid
// values of 4 elements x 8 rows meet the broadcast activations (sign trick, exact), scaled
// by the block scale of each row; per super-block acc = fma(d_k * dA, I_k, acc).
template <int NC>
__attribute__((noinline)) void gemm_iq4_xs_r8_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m256i tab = grid_signed();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    alignas(32) int8_t sc[64];
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 8; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* gb = w + i * kR8Bytes;
            const int64_t ao = i * kActBytes;
            r8_scales(gb, sc);
            __m256i isum[NC];
            for (int n = 0; n < NC; ++n) isum[n] = _mm256_setzero_si256();
            for (int b = 0; b < 8; ++b) {
                const __m256i s32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 8 * b)));
                const __m256i s = _mm256_or_si256(_mm256_and_si256(s32, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(s32, 16));
                for (int half = 0; half < 2; ++half) {
                    const uint8_t* q = gb + kR8OffQs + 128 * b + 64 * half;
                    const __m256i bits1 = load32(q), bits2 = load32(q + 32);
                    const __m256i qx0 = _mm256_shuffle_epi8(tab, _mm256_and_si256(bits1, m4));
                    const __m256i qx1 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4));
                    const __m256i qx2 = _mm256_shuffle_epi8(tab, _mm256_and_si256(bits2, m4));
                    const __m256i qx3 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4));
                    const __m256i a0 = _mm256_sign_epi8(qx0, qx0), a1 = _mm256_sign_epi8(qx1, qx1);
                    const __m256i a2 = _mm256_sign_epi8(qx2, qx2), a3 = _mm256_sign_epi8(qx3, qx3);
                    for (int n = 0; n < NC; ++n) {
                        const __m256i y = _mm256_broadcastsi128_si256(load16(acts[n] + ao + act::kQ8KQs + 32 * b + 16 * half));
                        const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0x00), qx0));
                        const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0x55), qx1));
                        const __m256i p2 = _mm256_maddubs_epi16(a2, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0xaa), qx2));
                        const __m256i p3 = _mm256_maddubs_epi16(a3, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0xff), qx3));
                        isum[n] = _mm256_add_epi32(isum[n], _mm256_add_epi32(_mm256_madd_epi16(s, p0), _mm256_madd_epi16(s, p1)));
                        isum[n] = _mm256_add_epi32(isum[n], _mm256_add_epi32(_mm256_madd_epi16(s, p2), _mm256_madd_epi16(s, p3)));
                    }
                }
            }
            const __m256 d8 = _mm256_cvtph_ps(load16(gb + kR8OffD));
            for (int n = 0; n < NC; ++n) {
                const __m256 c = _mm256_mul_ps(d8, _mm256_set1_ps(rd_f32(acts[n] + ao + act::kQ8KD)));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(isum[n]), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) _mm256_storeu_ps(g.C + (n0 + n) * g.ldc + 8 * grp, acc[n]);
    }
}

void gemm_iq4_xs_r8(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_iq4_xs_r8_cols<1>, gemm_iq4_xs_r8_cols<2>, gemm_iq4_xs_r8_cols<3>, gemm_iq4_xs_r8_cols<4>,
                                 gemm_iq4_xs_r8_cols<5>, gemm_iq4_xs_r8_cols<6>, gemm_iq4_xs_r8_cols<7>, gemm_iq4_xs_r8_cols<8>};
    for_column_chunks(g, fns, 8);
}

void dequantize_iq4_xs_r8(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    const __m256i tab = grid_signed();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    alignas(32) int8_t sc[64];
    for (int64_t grp = 0; grp < nrows / 8; ++grp) {
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* gb = src + 8 * grp * rb + i * kR8Bytes;
            r8_scales(gb, sc);
            alignas(32) float d8[8];
            _mm256_store_ps(d8, _mm256_cvtph_ps(load16(gb + kR8OffD)));
            for (int b = 0; b < 8; ++b) {
                // four 32-byte vectors: lane k = row k; low / high nibbles = elements
                // 8l + 0..3 / 8l + 4..7 of vector l
                __m256i v[8];
                for (int l = 0; l < 4; ++l) {
                    const __m256i bits = load32(gb + kR8OffQs + 128 * b + 32 * l);
                    v[2 * l] = _mm256_shuffle_epi8(tab, _mm256_and_si256(bits, m4));
                    v[2 * l + 1] = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4));
                }
                avx2::transpose8x8_epi32(v);  // v[k] = row k, elements in order
                for (int k = 0; k < 8; ++k)
                    store_block(v[k], d8[k] * (float)sc[8 * b + k], dst + (8 * grp + k) * K + i * kSuper + 32 * b);
            }
        }
    }
}

// ================================================================================ large batch

// iq4_xs -> q8_k_r8 (scalar twin: formats/iq4_xs.cpp convert_to_q8_k_r8).
void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    const __m256i tab = grid_signed();
    alignas(32) uint8_t q8[8][kSuper];
    alignas(32) float dnew[8], drow[8];
    alignas(32) int32_t ls[8];
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int64_t i = 0; i < nsuper; ++i) {
            uint8_t* o = dst + (g * nsuper + i) * q8_k_r8::kGroupBlock;
            for (int r = 0; r < 8; ++r) {
                const uint8_t* sb = src + (8 * g + r) * rb + i * kBytes;
                drow[r] = _cvtsh_ss(rd_u16(sb + kOffD));
                _mm256_store_si256(reinterpret_cast<__m256i*>(ls), block_scales(sb));
                __m256i v16[16];
                for (int b = 0; b < 8; ++b) {
                    const __m256i v = _mm256_shuffle_epi8(tab, unpack_nibbles(load16(sb + kOffQs + 16 * b)));
                    const __m256i s = _mm256_set1_epi16((int16_t)ls[b]);
                    v16[2 * b] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), s);
                    v16[2 * b + 1] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)), s);
                }
                dnew[r] = convert_row_q8(v16, 1.0f / 127.0f, q8[r]);
            }
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o),
                             _mm256_cvtps_ph(_mm256_mul_ps(_mm256_load_ps(drow), _mm256_load_ps(dnew)), _MM_FROUND_TO_NEAREST_INT));
            store_q8_k_r8_quants(q8, o);
        }
    }
}

}  // namespace

void register_avx2_iq4_xs(KernelTables& t) {
    grid_thresholds(kNL, g_thr);
    TypeKernels& a = t.types[T_IQ4_XS];
    a.quantize = quantize_iq4_xs;
    a.dequantize = dequantize_iq4_xs;
    a.gemm = gemm_iq4_xs;
    a.prepare_act = pair_activations_q8k;
    a.prepared_bytes = paired_bytes;
    a.tile_bytes = kTileBytes;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ4_XS_R8];
    b.quantize = quantize_iq4_xs_r8;
    b.dequantize = dequantize_iq4_xs_r8;
    b.gemm = gemm_iq4_xs_r8;
    b.tile_bytes = kTileBytes;
}

}  // namespace iqkq
