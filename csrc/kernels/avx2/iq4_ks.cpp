// AVX2 kernels for iq4_ks and iq4_ks_r4: quantization, dequantization, the matmul kernels
// (E) iq4_ks x q8_K and (G) iq4_ks_r4 x q8_K32 of docs/formats.md §11.3, and the conversion to
// q8_k_r8 (§11.4). Bit-exact twins of formats/iq4_ks.cpp: integer sums are exact, and every
// float operation is the same operation, per output, in the same order.
//
// No STL containers or shared inline functions here (see common.h).
#include <cstdlib>
#include <new>

#include <vector>

#include "common.h"
#include "formats/act.h"
#include "formats/iq4_ks.h"
#include "kernels/avx2/family_iq4.h"
#include "kernels/avx2/simd.h"
#include "types.h"

namespace iqkq {
namespace {
using namespace avx2;
using namespace avx2_iq4;
using namespace iq4_ks;

// The two 16-entry half-tables, each repeated in both 128-bit lanes (for pshufb).
inline __m256i table_vec(int shifted) {
    return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kValues + 16 * shifted)));
}

// ================================================================================ quantization
//
// Pass 1 of the quantizer evaluates 31 scale trials per 32-block, each rounding all 32
// values to the table twice (id*x and -id*x) and accumulating two weighted sums per
// rounding sequentially over the 32 elements. The sums are order dependent, so they are
// vectorized across trials: one vector holds 8 trials (8 different `id`), and the element
// loop runs in order. best_index is evaluated as a 4-step binary search over the 15
// switching points t_k of the table (`g_thresholds`): best_index(T, x) = #{k : x >= t_k} for
// every float x with |x| < 2^31, which always holds here (|id * x| <= 134 * (1 + 2^-23)).

// t_k = the smallest float x with best_index(T, x) > k (k = 0..14), for the base and the
// shifted table. Derived from the scalar best_index by bisection in register_avx2_iq4_ks();
// that best_index is monotone and equals the threshold count for all 2^32 floats but NaN
// (checked exhaustively by tools/iq4_ks_best_index_check.cpp).
alignas(32) float g_thresholds[2][16];

void init_thresholds() {
    for (int h = 0; h < 2; ++h) grid_thresholds(kValues + 16 * h, g_thresholds[h]);
}

inline Search make_search(int shifted) { return make_grid_search(g_thresholds[shifted], kValues + 16 * shifted); }

// 16 scale trials with the same table (lane = trial with scale id0[lane] resp. id1[lane]),
// two vectors interleaved for more independent work; sums in element order.
inline void trial16(const float* xb, const float* w, __m256 id0, __m256 id1, const Search& s, float* sqx_p, float* sq2_p,
                    float* sqx_m, float* sq2_m) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ap0 = _mm256_setzero_ps(), bp0 = _mm256_setzero_ps(), am0 = _mm256_setzero_ps(), bm0 = _mm256_setzero_ps();
    __m256 ap1 = _mm256_setzero_ps(), bp1 = _mm256_setzero_ps(), am1 = _mm256_setzero_ps(), bm1 = _mm256_setzero_ps();
    for (int j = 0; j < kBlock; ++j) {
        const __m256 x = _mm256_broadcast_ss(xb + j);
        const __m256 wj = _mm256_broadcast_ss(w + j);
        const __m256 al0 = _mm256_mul_ps(id0, x);
        const __m256 al1 = _mm256_mul_ps(id1, x);
        const __m256 q0 = best_value(al0, s), q1 = best_value(al1, s);
        const __m256 wq0 = _mm256_mul_ps(wj, q0), wq1 = _mm256_mul_ps(wj, q1);
        ap0 = _mm256_add_ps(ap0, _mm256_mul_ps(wq0, x));
        bp0 = _mm256_add_ps(bp0, _mm256_mul_ps(wq0, q0));
        ap1 = _mm256_add_ps(ap1, _mm256_mul_ps(wq1, x));
        bp1 = _mm256_add_ps(bp1, _mm256_mul_ps(wq1, q1));
        const __m256 r0 = best_value(_mm256_xor_ps(al0, sign), s), r1 = best_value(_mm256_xor_ps(al1, sign), s);
        const __m256 wr0 = _mm256_mul_ps(wj, r0), wr1 = _mm256_mul_ps(wj, r1);
        am0 = _mm256_add_ps(am0, _mm256_mul_ps(wr0, x));
        bm0 = _mm256_add_ps(bm0, _mm256_mul_ps(wr0, r0));
        am1 = _mm256_add_ps(am1, _mm256_mul_ps(wr1, x));
        bm1 = _mm256_add_ps(bm1, _mm256_mul_ps(wr1, r1));
    }
    _mm256_storeu_ps(sqx_p, ap0); _mm256_storeu_ps(sqx_p + 8, ap1);
    _mm256_storeu_ps(sq2_p, bp0); _mm256_storeu_ps(sq2_p + 8, bp1);
    _mm256_storeu_ps(sqx_m, am0); _mm256_storeu_ps(sqx_m + 8, am1);
    _mm256_storeu_ps(sq2_m, bm0); _mm256_storeu_ps(sq2_m + 8, bm1);
}

// The QHelper decision for one 32-block (formats/iq4_ks.cpp: imatrix_row_weights), written
// straight into `qw`.
inline void imatrix_block(const float* im, const float* xb, float* qw) {
    const float eps = 1e-9f;
    const float eps2 = eps * eps;
    const float thr = (float)kBlock * eps2;
    float sw2 = 0.0f, sx2 = 0.0f, swx = 0.0f;
    for (int j = 0; j < kBlock; ++j) {
        sw2 += im[j] * im[j];
        sx2 += xb[j] * xb[j];
        swx += im[j] * fabsf_(xb[j]);
    }
    const bool keep = sw2 > thr && sx2 > thr && swx > thr;
    for (int j = 0; j < kBlock; ++j) qw[j] = keep ? im[j] : eps;
}

inline float super_block_sigma2(const float* x) {
    float s = 0.0f;
    for (int j = 0; j < kSuper; ++j) s += x[j] * x[j];
    return s * (2.0f / kSuper);
}

// w = qw * sqrt(sigma2 + x^2) (imatrix) or x^2, 8 at a time (same operations per element).
inline void block_weights(const float* xb, const float* qw, float sigma2, float* w) {
    for (int j = 0; j < kBlock; j += 8) {
        const __m256 x = _mm256_loadu_ps(xb + j);
        const __m256 x2 = _mm256_mul_ps(x, x);
        if (qw) {
            _mm256_storeu_ps(w + j, _mm256_mul_ps(_mm256_loadu_ps(qw + j), _mm256_sqrt_ps(_mm256_add_ps(_mm256_set1_ps(sigma2), x2))));
        } else {
            _mm256_storeu_ps(w + j, x2);
        }
    }
}

struct BlockScale {
    float d;
    bool shifted;
};

BlockScale block_scale(const float* xb, const float* w, const Search& sb, const Search& ss) {
    // amax and the signed value where |x| is largest (first occurrence).
    __m256 ax[4];
    for (int k = 0; k < 4; ++k) ax[k] = abs_ps(_mm256_loadu_ps(xb + 8 * k));
    const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(ax[0], ax[1]), _mm256_max_ps(ax[2], ax[3])));
    if (amax < 1e-16f) return {0.0f, false};
    const __m256 va = _mm256_set1_ps(amax);
    uint32_t hit = 0;
    for (int k = 0; k < 4; ++k) hit |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(ax[k], va, _CMP_EQ_OQ)) << (8 * k);
    const float max = xb[__builtin_ctz(hit)];

    // Trial scales: lanes 0..15 base table (first trial, then t = -7..7), lanes 16..31 the
    // shifted table (t = -7..7, lane 31 unused).
    const float d = -max / (float)kValues[0];
    const __m256 vmax = _mm256_set1_ps(max);
    __m256 ida0 = _mm256_div_ps(_mm256_setr_ps(0, -134, -133, -132, -131, -130, -129, -128), vmax);
    ida0 = _mm256_blend_ps(ida0, _mm256_set1_ps(1.0f / d), 1);
    const __m256 ida1 = _mm256_div_ps(_mm256_setr_ps(-127, -126, -125, -124, -123, -122, -121, -120), vmax);
    const __m256 idb0 = _mm256_div_ps(_mm256_setr_ps(-130, -129, -128, -127, -126, -125, -124, -123), vmax);
    const __m256 idb1 = _mm256_div_ps(_mm256_setr_ps(-122, -121, -120, -119, -118, -117, -116, -116), vmax);
    alignas(32) float sp[32], qp[32], sm[32], qm[32];
    trial16(xb, w, ida0, ida1, sb, sp + 0, qp + 0, sm + 0, qm + 0);
    trial16(xb, w, idb0, idb1, ss, sp + 16, qp + 16, sm + 16, qm + 16);

    // The decisions, in the order of the reference.
    float dd = sp[0] / qp[0];
    float best = dd * sp[0];
    bool shifted = false;
    if (qm[0] > 0 && sm[0] * sm[0] > best * qm[0]) {
        dd = sm[0] / qm[0];
        best = dd * sm[0];
    }
    for (int k = 0; k < 15; ++k) {
        const int lanes[2] = {1 + k, 16 + k};
        for (int h = 0; h < 2; ++h) {
            const int l = lanes[h];
            if (qp[l] > 0 && sp[l] * sp[l] > best * qp[l]) {
                dd = sp[l] / qp[l];
                best = dd * sp[l];
                shifted = h == 1;
            }
            if (qm[l] > 0 && sm[l] * sm[l] > best * qm[l]) {
                dd = sm[l] / qm[l];
                best = dd * sm[l];
                shifted = h == 1;
            }
        }
    }
    return {dd, shifted};
}

// One row. `scales` (K/32 floats) and `sig` (K/256 floats) are scratch.
void quantize_row(const float* x, uint8_t* out, int64_t K, const float* imatrix, float* scales, float* sig,
                  const Search& sb, const Search& ss) {
    const int64_t nsuper = K / kSuper;
    alignas(32) float w[kBlock];
    alignas(32) float qw[kBlock];
    float amax_scale = 0.0f;
    for (int64_t i = 0; i < nsuper; ++i) {
        uint8_t* blk = out + kRowMeta + i * kSuperBytes;
        std::memset(blk, 0, kSuperBytes);
        const float* xs = x + i * kSuper;
        const float sigma2 = super_block_sigma2(xs);
        sig[i] = sigma2;
        for (int b = 0; b < 8; ++b) {
            const float* xb = xs + b * kBlock;
            if (imatrix) imatrix_block(imatrix + i * kSuper + b * kBlock, xb, qw);
            block_weights(xb, imatrix ? qw : nullptr, sigma2, w);
            const BlockScale bs = block_scale(xb, w, sb, ss);
            if (bs.shifted) blk[b] = 1;
            scales[i * 8 + b] = bs.d;
            const float ad = fabsf_(bs.d);
            amax_scale = amax_scale < ad ? ad : amax_scale;
        }
    }
    const float d0 = amax_scale / 127.0f;
    wr_f32(out, d0);
    if (d0 == 0.0f) return;
    const float id0 = 1.0f / d0;
    float sqx = 0.0f, sq2 = 0.0f;
    for (int64_t i = 0; i < nsuper; ++i) {
        uint8_t* blk = out + kRowMeta + i * kSuperBytes;
        const float* xs = x + i * kSuper;
        for (int b = 0; b < 8; ++b) {
            const int8_t* T = kValues + 16 * (blk[b] & 1);
            int l = nearest_int(0.5f * (id0 * scales[i * 8 + b] + 127.0f));
            l = (l < 0 ? 0 : (l > 127 ? 127 : l)) << 1;
            blk[b] |= (uint8_t)l;
            l -= 127;
            const float dl = d0 * (float)l;
            const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
            const float* xb = xs + b * kBlock;
            if (imatrix) imatrix_block(imatrix + i * kSuper + b * kBlock, xb, qw);
            block_weights(xb, imatrix ? qw : nullptr, sig[i], w);
            uint8_t* qs = blk + 8 + 16 * b;
            for (int j = 0; j < 16; ++j) {
                const int i1 = best_index(T, idl * xb[j]);
                const int i2 = best_index(T, idl * xb[j + 16]);
                qs[j] = (uint8_t)(i1 | (i2 << 4));
                const float q1 = (float)(T[i1] * l);
                const float q2 = (float)(T[i2] * l);
                sqx += w[j] * q1 * xb[j] + w[j + 16] * q2 * xb[j + 16];
                sq2 += w[j] * q1 * q1 + w[j + 16] * q2 * q2;
            }
        }
    }
    if (sq2 > 0.0f) wr_f32(out, sqx / sq2);
}

void quantize_rows(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    std::vector<float> buf((size_t)(K / kBlock + K / kSuper));
    float* scratch = buf.data();
    const Search sb = make_search(0), ss = make_search(1);
    for (int64_t r = 0; r < nrows; ++r)
        quantize_row(src + r * K, dst + r * rb, K, imatrix, scratch, scratch + K / kBlock, sb, ss);
}

void quantize_iq4_ks(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    quantize_rows(src, dst, nrows, K, imatrix);
}

// ================================================================================ iq4_ks_r4 layout

// The 64 nibble bytes of block b of an r4 super-block -> the 4 rows' 16-byte iq4_ks nibble
// blocks (u[r]: low nibble = element e, high nibble = element e + 16, as in iq4_ks). The 64
// bytes are 4 chunks of 4 dwords (dword r = row r); row r's dword holds, as low | high
// nibbles, elements 0-3 | 8-11 in the chunk at 0, 4-7 | 12-15 at 32, 16-19 | 24-27 at 16 and
// 20-23 | 28-31 at 48 (docs/formats.md §7.1).
inline void r4_block_rows(const uint8_t* qs, __m128i u[4]) {
    const __m128i c0 = load16(qs), c1 = load16(qs + 16), c2 = load16(qs + 32), c3 = load16(qs + 48);
    // Transpose dwords of (c0, c2, c1, c3): row r gets (c0[r], c2[r], c1[r], c3[r]), i.e. low
    // nibbles = elements 0-7, 16-23 and high nibbles = elements 8-15, 24-31.
    const __m128i t0 = _mm_unpacklo_epi32(c0, c2), t1 = _mm_unpackhi_epi32(c0, c2);
    const __m128i t2 = _mm_unpacklo_epi32(c1, c3), t3 = _mm_unpackhi_epi32(c1, c3);
    const __m128i v[4] = {_mm_unpacklo_epi64(t0, t2), _mm_unpackhi_epi64(t0, t2), _mm_unpacklo_epi64(t1, t3),
                          _mm_unpackhi_epi64(t1, t3)};
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int r = 0; r < 4; ++r) {
        const __m128i lo = _mm_and_si128(v[r], m4), hi = _mm_and_si128(_mm_srli_epi16(v[r], 4), m4);
        const __m128i e0 = _mm_unpacklo_epi64(lo, hi);  // elements 0..15
        const __m128i e1 = _mm_unpackhi_epi64(lo, hi);  // elements 16..31
        u[r] = _mm_or_si128(e0, _mm_slli_epi16(e1, 4));
    }
}

// 4 iq4_ks rows (rb bytes apart) -> one iq4_ks_r4 row group, and back.
void repack_group_to_r4(const uint8_t* src, int64_t rb, uint8_t* dst, int64_t K) {
    for (int r = 0; r < 4; ++r) std::memcpy(dst + 4 * r, src + r * rb, 4);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t i = 0; i < K / kSuper; ++i) {
        uint8_t* o = dst + 16 + i * kR4Bytes;
        const uint8_t* sb[4];
        for (int r = 0; r < 4; ++r) sb[r] = src + r * rb + kRowMeta + i * kSuperBytes;
        for (int b = 0; b < 8; ++b) {
            __m128i lo[4], hi[4];
            for (int r = 0; r < 4; ++r) {
                o[4 * b + r] = sb[r][b];
                const __m128i q = load16(sb[r] + 8 + 16 * b), qb = _mm_srli_si128(q, 8);
                // bytes j < 4: (q[j], q[j+8]) -> chunk 0 / 16; j = 4..7: (q[j], q[j+8]) -> chunk 32 / 48
                lo[r] = _mm_or_si128(_mm_and_si128(q, m4), _mm_slli_epi16(_mm_and_si128(qb, m4), 4));
                hi[r] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_andnot_si128(m4, qb));
            }
            const __m128i l01 = _mm_unpacklo_epi32(lo[0], lo[1]), l23 = _mm_unpacklo_epi32(lo[2], lo[3]);
            const __m128i h01 = _mm_unpacklo_epi32(hi[0], hi[1]), h23 = _mm_unpacklo_epi32(hi[2], hi[3]);
            uint8_t* oq = o + 32 + 64 * b;
            _mm_storeu_si128(reinterpret_cast<__m128i*>(oq + 0), _mm_unpacklo_epi64(l01, l23));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(oq + 32), _mm_unpackhi_epi64(l01, l23));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(oq + 16), _mm_unpacklo_epi64(h01, h23));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(oq + 48), _mm_unpackhi_epi64(h01, h23));
        }
    }
}

void repack_group_from_r4(const uint8_t* src, uint8_t* dst, int64_t rb, int64_t K) {
    for (int r = 0; r < 4; ++r) std::memcpy(dst + r * rb, src + 4 * r, 4);
    for (int64_t i = 0; i < K / kSuper; ++i) {
        const uint8_t* s = src + 16 + i * kR4Bytes;
        for (int b = 0; b < 8; ++b) {
            __m128i u[4];
            r4_block_rows(s + 32 + 64 * b, u);
            for (int r = 0; r < 4; ++r) {
                uint8_t* sb = dst + r * rb + kRowMeta + i * kSuperBytes;
                sb[b] = s[4 * b + r];
                _mm_storeu_si128(reinterpret_cast<__m128i*>(sb + 8 + 16 * b), u[r]);
            }
        }
    }
}

void repack_to_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 4; ++g) repack_group_to_r4(src + 4 * g * rb, rb, dst + 4 * g * rb, K);
}

void repack_from_r4(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    for (int64_t g = 0; g < nrows / 4; ++g) repack_group_from_r4(src + 4 * g * rb, dst + 4 * g * rb, rb, K);
}

void quantize_iq4_ks_r4(const float* src, uint8_t* dst, int64_t nrows, int64_t K, const float* imatrix) {
    const int64_t rb = row_bytes(K);
    std::vector<uint8_t> buf((size_t)(4 * rb));
    uint8_t* tmp = buf.data();
    for (int64_t g = 0; g < nrows / 4; ++g) {
        quantize_rows(src + 4 * g * K, tmp, 4, K, imatrix);
        repack_group_to_r4(tmp, rb, dst + 4 * g * rb, K);
    }
}

// ================================================================================ dequantization

void dequantize_iq4_ks(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    const __m256i tab[2] = {table_vec(0), table_vec(1)};
    for (int64_t r = 0; r < nrows; ++r) {
        const uint8_t* row = src + r * rb;
        const float D = rd_f32(row);
        float* y = dst + r * K;
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* sb = row + kRowMeta + i * kSuperBytes;
            for (int b = 0; b < 8; ++b) {
                const uint8_t s = sb[b];
                const __m256i v = _mm256_shuffle_epi8(tab[s & 1], unpack_nibbles(load16(sb + 8 + 16 * b)));
                store_block(v, D * (float)((s & 254) - 127), y + i * kSuper + b * kBlock);
            }
        }
    }
}

void dequantize_iq4_ks_r4(const uint8_t* src, float* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K);
    const __m256i tab[2] = {table_vec(0), table_vec(1)};
    for (int64_t g = 0; g < nrows / 4; ++g) {
        const uint8_t* grp = src + 4 * g * rb;
        for (int64_t i = 0; i < K / kSuper; ++i) {
            const uint8_t* s = grp + 16 + i * kR4Bytes;
            for (int b = 0; b < 8; ++b) {
                __m128i u[4];
                r4_block_rows(s + 32 + 64 * b, u);
                for (int r = 0; r < 4; ++r) {
                    const uint8_t sc = s[4 * b + r];
                    const __m256i v = _mm256_shuffle_epi8(tab[sc & 1], unpack_nibbles(u[r]));
                    store_block(v, rd_f32(grp + 4 * r) * (float)((sc & 254) - 127), dst + (4 * g + r) * K + i * kSuper + b * kBlock);
                }
            }
        }
    }
}

// ================================================================================ matmul

constexpr int kActBytes = act::kQ8KBytes;  // one q8_K / q8_K32 record

// Kernel (E) for NC activation columns: the weights of a block are unpacked once and used
// for all columns. Lane L of the int32 sum = elements 4L..4L+3 of every block.
template <int NC>
__attribute__((noinline)) void gemm_iq4_ks_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m256i tab[2] = {table_vec(0), table_vec(1)};
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        const float D = rd_f32(w);
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + kRowMeta + i * kSuperBytes;
            const int64_t ao = i * kActBytes;
            __m256i sum[NC];
            for (int n = 0; n < NC; ++n) sum[n] = _mm256_setzero_si256();
            for (int b = 0; b < 8; ++b) {
                const uint8_t s = sb[b];
                const __m256i v = _mm256_shuffle_epi8(tab[s & 1], unpack_nibbles(load16(sb + 8 + 16 * b)));
                const __m256i av = _mm256_sign_epi8(v, v);
                const __m256i ls = _mm256_set1_epi16((int16_t)((s & 254) - 127));
                for (int n = 0; n < NC; ++n) {
                    const __m256i a = load32(acts[n] + ao + act::kQ8KQs + 32 * b);
                    sum[n] = _mm256_add_epi32(sum[n], _mm256_madd_epi16(ls, _mm256_maddubs_epi16(av, _mm256_sign_epi8(a, v))));
                }
            }
            for (int n = 0; n < NC; ++n) {
                const __m256 c = _mm256_set1_ps(D * rd_f32(acts[n] + ao));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(sum[n]), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) g.C[(n0 + n) * g.ldc + r] = hsum8(acc[n]);
    }
}

// Kernel (E) for small batches, two blocks per 32-byte weight load: the activation quants
// are first rearranged per block pair (2p, 2p+1) as [a_2p e0..15 | a_2p+1 e0..15 |
// a_2p e16..31 | a_2p+1 e16..31], so a 256-bit vector of low (high) nibbles lines up with
// them. Its int32 lane 4h + L then holds elements 4L..4L+3 (+16 for high nibbles) of block
// 2p + h, and the two halves are added at the end of the super-block: the same exact
// integers S_L as gemm_iq4_ks_cols, hence the same floats.
// It is the prepare_act hook of this kernel set's iq4_ks: the driver runs it once per call
// (family_iq4.h pair_activations_q8k.)

template <int NC>
__attribute__((noinline)) void gemm_iq4_ks_paired(const GemmArgs& g) {
    const int64_t nsuper = g.K / kSuper;
    // table pair k: low lane = table of block 2p (k & 1), high lane = block 2p+1 (k >> 1)
    const __m128i t0 = _mm_load_si128(reinterpret_cast<const __m128i*>(kValues));
    const __m128i t1 = _mm_load_si128(reinterpret_cast<const __m128i*>(kValues + 16));
    const __m256i tabs[4] = {_mm256_set_m128i(t0, t0), _mm256_set_m128i(t0, t1), _mm256_set_m128i(t1, t0),
                             _mm256_set_m128i(t1, t1)};
    // int16 scale ls_2p in the low lane, ls_2p+1 in the high lane
    __m256i ls_pattern[4];
    for (int p = 0; p < 4; ++p) {
        const __m128i lo = _mm_set1_epi16((short)((4 * p + 1) << 8 | 4 * p));
        const __m128i hi = _mm_set1_epi16((short)((4 * p + 3) << 8 | (4 * p + 2)));
        ls_pattern[p] = _mm256_set_m128i(hi, lo);
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const uint8_t* acts[NC];
    const uint8_t* pq[NC];
    for (int n = 0; n < NC; ++n) {
        acts[n] = g.A + n * g.a_row_bytes;
        pq[n] = g.P + n * g.p_row_bytes;
    }
    for (int64_t r = 0; r < g.nrows; ++r) {
        const uint8_t* w = g.W + r * g.w_group_bytes;
        const float D = rd_f32(w);
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* sb = w + kRowMeta + i * kSuperBytes;
            const __m128i sc = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sb)));
            const __m256i ls8 = _mm256_broadcastsi128_si256(_mm_sub_epi16(_mm_and_si128(sc, _mm_set1_epi16(254)), _mm_set1_epi16(127)));
            __m256i sa[NC], sh[NC];
            for (int n = 0; n < NC; ++n) sa[n] = sh[n] = _mm256_setzero_si256();
            for (int p = 0; p < 4; ++p) {
                const __m256i q = load32(sb + 8 + 32 * p);
                const __m256i tp = tabs[(sb[2 * p] & 1) | ((sb[2 * p + 1] & 1) << 1)];
                const __m256i vl = _mm256_shuffle_epi8(tp, _mm256_and_si256(q, m4));
                const __m256i vh = _mm256_shuffle_epi8(tp, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
                const __m256i al = _mm256_sign_epi8(vl, vl), ah = _mm256_sign_epi8(vh, vh);
                const __m256i ls = _mm256_shuffle_epi8(ls8, ls_pattern[p]);
                for (int n = 0; n < NC; ++n) {
                    const uint8_t* a = pq[n] + i * kSuper + 64 * p;
                    sa[n] = _mm256_add_epi32(sa[n], _mm256_madd_epi16(ls, _mm256_maddubs_epi16(al, _mm256_sign_epi8(load32(a), vl))));
                    sh[n] = _mm256_add_epi32(sh[n], _mm256_madd_epi16(ls, _mm256_maddubs_epi16(ah, _mm256_sign_epi8(load32(a + 32), vh))));
                }
            }
            for (int n = 0; n < NC; ++n) {
                const __m256i S = _mm256_add_epi32(_mm256_permute2x128_si256(sa[n], sh[n], 0x20),
                                                   _mm256_permute2x128_si256(sa[n], sh[n], 0x31));
                const __m256 c = _mm256_set1_ps(D * rd_f32(acts[n] + i * kActBytes));
                acc[n] = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(S), acc[n]);
            }
        }
        for (int n = 0; n < NC; ++n) g.C[n * g.ldc + r] = hsum8(acc[n]);
    }
}

// Wide batches run on row tiles of ~32 KiB of weights (the driver's tile_bytes hint), so all
// column blocks re-read a tile from L1/L2, not from L3/DRAM.
constexpr int kTileBytes = 32 * 1024;

void gemm_iq4_ks(const GemmArgs& g) {
    switch (g.ncols) {
        case 4: gemm_iq4_ks_paired<4>(g); return;
        case 3: gemm_iq4_ks_paired<3>(g); return;
        case 2: gemm_iq4_ks_paired<2>(g); return;
        case 1: gemm_iq4_ks_paired<1>(g); return;
        default: break;
    }
    static const ColsFn fns[] = {nullptr, gemm_iq4_ks_cols<1>, gemm_iq4_ks_cols<2>, gemm_iq4_ks_cols<3>, gemm_iq4_ks_cols<4>,
                                 gemm_iq4_ks_cols<5>, gemm_iq4_ks_cols<6>, gemm_iq4_ks_cols<7>, gemm_iq4_ks_cols<8>};
    for_column_chunks(g, fns, 8);
}

// Kernel (G) for NC columns. Lane l <-> row l%4, elements 16h..16h+15 (h = l/4) of each block.
template <int NC>
__attribute__((noinline)) void gemm_iq4_ks_r4_cols(const GemmArgs& g, int64_t n0) {
    const int64_t nsuper = g.K / kSuper;
    const __m256i base = table_vec(0);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    // (ls0 ls1 ls2 ls3) int16 -> (ls0 ls0 ls1 ls1 ls2 ls2 ls3 ls3): row r in int32 lanes r, r+4.
    const __m256i pairs = _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4,
                                           5, 6, 7, 6, 7);
    const uint8_t* acts[NC];
    for (int n = 0; n < NC; ++n) acts[n] = g.A + (n0 + n) * g.a_row_bytes;
    for (int64_t grp = 0; grp < g.nrows / 4; ++grp) {
        const uint8_t* w = g.W + grp * g.w_group_bytes;
        __m256 acc[NC];
        for (int n = 0; n < NC; ++n) acc[n] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nsuper; ++i) {
            const uint8_t* s = w + 16 + i * kR4Bytes;
            const int64_t ao = i * kActBytes;
            const __m256i sc = load32(s);  // byte 4b + r: row r, block b
            const __m256i h = _mm256_sub_epi8(_mm256_and_si256(sc, _mm256_set1_epi8(-2)), _mm256_set1_epi8(127));
            const __m256i hs = _mm256_slli_epi16(_mm256_and_si256(sc, _mm256_set1_epi8(1)), 2);
            // Step 1: the +4 of shifted blocks through the float block sums, t = 0..3:
            // v_t = f32(ls) * f32(4 * shift) for (block t, rows 0..3 | block t+4, rows 0..3).
            {
                const __m128i h0 = _mm256_castsi256_si128(h), h1 = _mm256_extracti128_si256(h, 1);
                const __m128i s0 = _mm256_castsi256_si128(hs), s1 = _mm256_extracti128_si256(hs, 1);
                const __m256 H0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h0));                     // blocks 0, 1
                const __m256 H1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(h0, 8)));  // blocks 2, 3
                const __m256 H2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h1));                     // blocks 4, 5
                const __m256 H3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(h1, 8)));  // blocks 6, 7
                const __m256 S0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s0));
                const __m256 S1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s0, 8)));
                const __m256 S2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s1));
                const __m256 S3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s1, 8)));
                const __m256 v0 = _mm256_mul_ps(_mm256_permute2f128_ps(H0, H2, 0x20), _mm256_permute2f128_ps(S0, S2, 0x20));
                const __m256 v1 = _mm256_mul_ps(_mm256_permute2f128_ps(H0, H2, 0x31), _mm256_permute2f128_ps(S0, S2, 0x31));
                const __m256 v2 = _mm256_mul_ps(_mm256_permute2f128_ps(H1, H3, 0x20), _mm256_permute2f128_ps(S1, S3, 0x20));
                const __m256 v3 = _mm256_mul_ps(_mm256_permute2f128_ps(H1, H3, 0x31), _mm256_permute2f128_ps(S1, S3, 0x31));
                for (int n = 0; n < NC; ++n) {
                    const __m256 m8 = _mm256_loadu_ps(reinterpret_cast<const float*>(acts[n] + ao + act::kQ8KBsums));
                    acc[n] = _mm256_fmadd_ps(v0, _mm256_shuffle_ps(m8, m8, 0x00), acc[n]);
                    acc[n] = _mm256_fmadd_ps(v1, _mm256_shuffle_ps(m8, m8, 0x55), acc[n]);
                    acc[n] = _mm256_fmadd_ps(v2, _mm256_shuffle_ps(m8, m8, 0xaa), acc[n]);
                    acc[n] = _mm256_fmadd_ps(v3, _mm256_shuffle_ps(m8, m8, 0xff), acc[n]);
                }
            }
            // Step 2: base-table integer dot products, exact in int32.
            alignas(32) int32_t hv[8];
            _mm256_store_si256(reinterpret_cast<__m256i*>(hv), h);
            __m256i sum[NC];
            for (int n = 0; n < NC; ++n) sum[n] = _mm256_setzero_si256();
            for (int b = 0; b < 8; ++b) {
                const uint8_t* q = s + 32 + 64 * b;
                const __m256i bits1 = load32(q), bits2 = load32(q + 32);
                const __m256i qx0 = _mm256_shuffle_epi8(base, _mm256_and_si256(bits1, m4));
                const __m256i qx1 = _mm256_shuffle_epi8(base, _mm256_and_si256(bits2, m4));
                const __m256i qx2 = _mm256_shuffle_epi8(base, _mm256_and_si256(_mm256_srli_epi16(bits1, 4), m4));
                const __m256i qx3 = _mm256_shuffle_epi8(base, _mm256_and_si256(_mm256_srli_epi16(bits2, 4), m4));
                const __m256i ls = _mm256_shuffle_epi8(_mm256_cvtepi8_epi16(_mm_set1_epi32(hv[b])), pairs);
                const __m256i a0 = _mm256_sign_epi8(qx0, qx0), a1 = _mm256_sign_epi8(qx1, qx1);
                const __m256i a2 = _mm256_sign_epi8(qx2, qx2), a3 = _mm256_sign_epi8(qx3, qx3);
                for (int n = 0; n < NC; ++n) {
                    const __m256i y = load32(acts[n] + ao + act::kQ8KQs + 32 * b);
                    const __m256i p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0x00), qx0));
                    const __m256i p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0x55), qx1));
                    const __m256i p2 = _mm256_maddubs_epi16(a2, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0xaa), qx2));
                    const __m256i p3 = _mm256_maddubs_epi16(a3, _mm256_sign_epi8(_mm256_shuffle_epi32(y, 0xff), qx3));
                    sum[n] = _mm256_add_epi32(sum[n], _mm256_add_epi32(_mm256_madd_epi16(ls, p0), _mm256_madd_epi16(ls, p1)));
                    sum[n] = _mm256_add_epi32(sum[n], _mm256_add_epi32(_mm256_madd_epi16(ls, p2), _mm256_madd_epi16(ls, p3)));
                }
            }
            for (int n = 0; n < NC; ++n) {
                const __m256 dA = _mm256_set1_ps(rd_f32(acts[n] + ao));
                acc[n] = _mm256_fmadd_ps(dA, _mm256_cvtepi32_ps(sum[n]), acc[n]);
            }
        }
        const __m128 d4 = _mm_loadu_ps(reinterpret_cast<const float*>(w));
        for (int n = 0; n < NC; ++n) {
            const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[n]), _mm256_extractf128_ps(acc[n], 1));
            _mm_storeu_ps(g.C + (n0 + n) * g.ldc + 4 * grp, _mm_mul_ps(d4, s4));
        }
    }
}

// Up to 8 columns in one pass over the weights (the decoded block is shared by more columns;
// the spills of the 8-column form cost less than decoding twice: Zen 4, N = 5..8 x1.13).
void gemm_iq4_ks_r4(const GemmArgs& g) {
    static const ColsFn fns[] = {nullptr, gemm_iq4_ks_r4_cols<1>, gemm_iq4_ks_r4_cols<2>, gemm_iq4_ks_r4_cols<3>, gemm_iq4_ks_r4_cols<4>,
                                 gemm_iq4_ks_r4_cols<5>, gemm_iq4_ks_r4_cols<6>, gemm_iq4_ks_r4_cols<7>, gemm_iq4_ks_r4_cols<8>};
    for_column_chunks(g, fns, 8);
}

// ================================================================================ large batch

// iq4_ks -> q8_k_r8 (docs/formats.md §11.4; scalar twin: formats/iq4_ks.cpp convert_to_q8_k_r8).
constexpr int kQ8kR8Bytes = 16 + 8 * 256;

void convert_to_q8_k_r8(const uint8_t* src, uint8_t* dst, int64_t nrows, int64_t K) {
    const int64_t rb = row_bytes(K), nsuper = K / kSuper;
    const __m256i tab[2] = {table_vec(0), table_vec(1)};
    const float d0 = 1.0f / 127.0f;
    alignas(32) uint8_t q8[8][kSuper];
    alignas(32) float dnew[8], drow[8];
    for (int64_t g = 0; g < nrows / 8; ++g) {
        for (int r = 0; r < 8; ++r) drow[r] = rd_f32(src + (8 * g + r) * rb);
        for (int64_t i = 0; i < nsuper; ++i) {
            uint8_t* o = dst + (g * nsuper + i) * kQ8kR8Bytes;
            for (int r = 0; r < 8; ++r) {
                const uint8_t* sb = src + (8 * g + r) * rb + kRowMeta + i * kSuperBytes;
                __m256i v16[16];  // v = ls * T[n] as int16, elements 16k .. 16k+15
                for (int b = 0; b < 8; ++b) {
                    const uint8_t s = sb[b];
                    const __m256i v = _mm256_shuffle_epi8(tab[s & 1], unpack_nibbles(load16(sb + 8 + 16 * b)));
                    const __m256i ls = _mm256_set1_epi16((int16_t)((s & 254) - 127));
                    v16[2 * b] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), ls);
                    v16[2 * b + 1] = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)), ls);
                }
                dnew[r] = convert_row_q8(v16, d0, q8[r]);
            }
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o),
                             _mm256_cvtps_ph(_mm256_mul_ps(_mm256_load_ps(drow), _mm256_load_ps(dnew)), _MM_FROUND_TO_NEAREST_INT));
            store_q8_k_r8_quants(q8, o);
        }
    }
}

}  // namespace

void register_avx2_iq4_ks(KernelTables& t) {
    init_thresholds();
    TypeKernels& a = t.types[T_IQ4_KS];
    a.quantize = quantize_iq4_ks;
    a.dequantize = dequantize_iq4_ks;
    a.gemm = gemm_iq4_ks;
    a.prepare_act = pair_activations_q8k;
    a.prepared_bytes = paired_bytes;
    a.tile_bytes = kTileBytes;
    a.to_large_batch = convert_to_q8_k_r8;
    TypeKernels& b = t.types[T_IQ4_KS_R4];
    b.quantize = quantize_iq4_ks_r4;
    b.dequantize = dequantize_iq4_ks_r4;
    b.gemm = gemm_iq4_ks_r4;
    b.tile_bytes = kTileBytes;
    b.to_interleaved = repack_to_r4;
    b.from_interleaved = repack_from_r4;
}

}  // namespace iqkq
