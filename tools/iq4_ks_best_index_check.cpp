// Exhaustive check behind the AVX2 iq4_ks quantizer (kernels/avx2/iq4_ks.cpp): for both
// half-tables T of iq4k_values and every float x except NaN,
//
//     best_index(T, x) == (|x| < 2^31 ? #{k : x >= t_k} : 0)
//
// where best_index is the scalar reference (formats/iq4_ks.h, ik_llama.cpp's table lookup)
// and t_k (k = 0..14) is its k-th switching point, found by bisection exactly as the AVX2
// file does at start-up. This proves best_index is monotone and that the AVX2 binary search
// over t_k reproduces it bit for bit. Not part of the build or the tests (it takes about a
// minute); run it after touching best_index or the tables:
//
//     g++ -O2 -ffp-contract=off -Icsrc tools/iq4_ks_best_index_check.cpp -o /tmp/chk && /tmp/chk
#include <cstdio>
#include <cstring>

#include "formats/iq4_ks.h"

using namespace iqkq::iq4_ks;

static float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static int64_t key(float f) {
    const uint32_t u = float_to_bits(f);
    return (u & 0x80000000u) ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}
static float unkey(int64_t k) { return k < 0 ? bits_to_float((uint32_t)(-k) | 0x80000000u) : bits_to_float((uint32_t)k); }

int main() {
    long total_bad = 0;
    for (int h = 0; h < 2; ++h) {
        const int8_t* T = kValues + 16 * h;
        float t[15];
        for (int k = 0; k < 15; ++k) {
            int64_t lo = key((float)T[k]), hi = key((float)T[k + 1]);
            while (hi - lo > 1) {
                const int64_t mid = lo + (hi - lo) / 2;
                if (best_index(T, unkey(mid)) > k) hi = mid; else lo = mid;
            }
            t[k] = unkey(hi);
            std::printf("table %d  t_%-2d = %.9g  (midpoint %.1f)\n", h, k, t[k], (T[k] + T[k + 1]) / 2.0);
        }
        long bad = 0;
        for (uint64_t u = 0; u < 0x100000000ull; ++u) {
            const float x = bits_to_float((uint32_t)u);
            if (x != x) continue;
            int c = 0;
            for (int k = 0; k < 15; ++k) c += x >= t[k];
            if (!(x >= -2147483648.0f && x < 2147483648.0f)) c = 0;
            if (c != best_index(T, x)) {
                if (bad < 5) std::printf("  mismatch at %.9g: %d vs %d\n", x, c, best_index(T, x));
                ++bad;
            }
        }
        std::printf("table %d: %ld mismatches\n", h, bad);
        total_bad += bad;
    }
    return total_bad == 0 ? 0 : 1;
}
