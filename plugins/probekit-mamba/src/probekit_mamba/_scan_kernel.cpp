// probekit-mamba: fused selective scans for CPUs (Mamba and Mamba2), forward and backward.
//
// Built at first use by probekit_mamba._kernel with the system's C++ compiler (no torch or Python
// headers) and called through ctypes; every function takes raw pointers to contiguous tensors and
// returns 0, or 1 after an error (nothing here throws across the C boundary).
//
// The recurrence h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t * B_t, y_t = C_t . h_t runs position by
// position with the state kept in registers / L1 cache: the (batch, d, L, n) states never go to
// memory. The forward stores the state at the start of every chunk of K positions ("checkpoints",
// 1/K of the states); the backward recomputes one chunk's states and decays from its checkpoint
// into a small buffer and runs the reverse recurrence over it.
//
// Mamba (v1) layout: u, delta, z, out (batch, L, d); A (d, n); B, C (batch, L, n); the channels contiguous;
// the bias, softplus, D skip and silu(z) gate of mamba-ssm's selective_scan_fn are fused in. A task is one
// batch row and a block of W channels, computed lane-parallel (SIMD over channels, loops over n).
// Mamba2 layout: x, y (batch, L, heads, p); dt (batch, L, heads); A (heads); B, C (batch, L, groups, n).
// A task is one (batch row, head), SIMD over n.
//
// Results do not depend on the number of threads: every task writes its own outputs (partial sums
// over channel blocks included), and the caller sums the partial results in a fixed order.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int64_t W = 16;  // Mamba (v1): channels per task, the SIMD width of the inner loops

// exp for float, written so that the compiler vectorises it (Cephes' expf: Cody-Waite range
// reduction and a degree-6 polynomial, about 1 ulp). Exactly 0 below -87.3 (no denormals).
inline float exp_k(float x) {
    const float hi = 88.0f, lo = -87.33654475f;
    float xc = std::min(std::max(x, lo), hi);
    float fx = xc * 1.44269504088896341f;
    const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    fx = (fx + magic) - magic;
    float r = xc - fx * 0.693359375f;
    r = r + fx * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    float out = e * scale;
    const float keep = x < lo ? 0.0f : 1.0f;  // a multiply, not a select: loops around it still vectorise
    return out * keep;
}

inline double exp_k(double x) { return std::exp(x); }

// Runs fn(task) for task in [0, tasks) on `threads` threads (the caller's thread is one of them).
template <class F>
void parallel_for(int64_t tasks, int64_t threads, const F& fn) {
    threads = std::max<int64_t>(1, std::min(threads, tasks));
    std::atomic<int64_t> next{0};
    auto work = [&]() {
        for (int64_t i = next.fetch_add(1); i < tasks; i = next.fetch_add(1)) fn(i);
    };
    std::vector<std::thread> pool;
    try {
        for (int64_t k = 1; k < threads; ++k) pool.emplace_back(work);
    } catch (...) {  // no more threads to be had: the ones started and this one do the rest
    }
    work();
    for (auto& t : pool) t.join();
}

// log for float > 0 (Cephes' logf, vectorisable: exponent and mantissa from the bits)
inline float log_k(float x) {
    int32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const int32_t e = ((bits >> 23) & 0xff) - 126;
    const int32_t mbits = (bits & static_cast<int32_t>(0x807fffff)) | 0x3f000000;
    float m;
    std::memcpy(&m, &mbits, sizeof m);  // x = m * 2^e, m in [0.5, 1)
    const float low = m < 0.70710678118654752440f ? 1.0f : 0.0f;  // then x = (2m) * 2^(e-1)
    const float fe = static_cast<float>(e) - low;
    const float f = m + low * m - 1.0f;
    const float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z - 2.12194440e-4f * fe - 0.5f * z;
    return f + y + 0.693359375f * fe;
}

// softplus as torch computes it (log1p(exp(x)), x itself above 20) and its derivative sigmoid(x)
inline void softplus_k(float x, float& out, float& slope) {
    const float e = exp_k(x);
    const float one_e = 1.0f + e;
    const float lp = log_k(one_e) + (e - (one_e - 1.0f)) / one_e;  // log1p(e), exact for tiny e
    const float big = x > 20.0f ? 1.0f : 0.0f;  // arithmetic blends (lp is finite): the loop vectorises
    out = big * x + (1.0f - big) * lp;
    slope = big + (1.0f - big) * (e / one_e);
}

inline void softplus_k(double x, double& out, double& slope) {
    const double e = std::exp(x);
    out = x > 20.0 ? x : std::log1p(e);
    slope = x > 20.0 ? 1.0 : e / (1.0 + e);
}

template <class T>
struct View {  // a 3-d tensor (batch, position, channel), channels contiguous; p == nullptr: absent
    const T* p;
    int64_t sb, sl, sc;  // sc is 1 (the caller makes sure)
    const T* row(int64_t bi, int64_t t) const { return p + bi * sb + t * sl; }
};

// ---------------------------------------------------------------------------------------------
// Mamba (v1): out = (C . h + D u) * silu(z), dt = softplus(delta + bias), as mamba-ssm's selective_scan_fn
// ---------------------------------------------------------------------------------------------
template <class T>
struct M1 {
    int64_t b, L, d, n, K;
    View<T> u, delta, z, B, C;  // (b, L, d) and (b, L, n); z optional
    const T *A, *D, *bias, *init;  // (d, n), (d), (d), (b, d, n); all but A optional
    bool softplus;
    int64_t blocks() const { return (d + W - 1) / W; }
    int64_t chunks() const { return (L + K - 1) / K; }

    // one position: h <- a * h + dt u B, y = C . h; a (n*W) receives the decays
    static inline void step(int64_t n, const T* dtl, const T* ul, const T* Al, const T* Bt, const T* Ct,
                            T* h, T* a, T* yl) {
        T dtu[W];
        for (int64_t j = 0; j < W; ++j) {
            dtu[j] = dtl[j] * ul[j];
            yl[j] = 0;
        }
        for (int64_t k = 0; k < n; ++k) {
            const T bk = Bt[k], ck = Ct[k];
            T* hk = h + k * W;
            T* ak = a + k * W;
            const T* Ak = Al + k * W;
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) {
                T ajk = exp_k(dtl[j] * Ak[j]);
                T hv = ajk * hk[j] + dtu[j] * bk;
                ak[j] = ajk;
                hk[j] = hv;
                yl[j] += ck * hv;
            }
        }
    }

    // per-task constants: A (n, W), D, bias (W), zero past the last channel
    struct Lanes {
        std::vector<T> A;
        T D[W], bias[W];
    };
    Lanes lanes(int64_t d0, int64_t w) const {
        Lanes c;
        c.A.assign(n * W, T(0));
        for (int64_t k = 0; k < n; ++k)
            for (int64_t j = 0; j < w; ++j) c.A[k * W + j] = A[(d0 + j) * n + k];
        for (int64_t j = 0; j < W; ++j) {
            c.D[j] = (D && j < w) ? D[d0 + j] : T(0);
            c.bias[j] = (bias && j < w) ? bias[d0 + j] : T(0);
        }
        return c;
    }

    static void load(const View<T>& v, int64_t bi, int64_t t, int64_t d0, int64_t w, T* dst) {
        const T* src = v.row(bi, t) + d0;
        if (w == W) {
            std::memcpy(dst, src, sizeof(T) * W);
        } else {
            for (int64_t j = 0; j < W; ++j) dst[j] = j < w ? src[j] : T(0);
        }
    }

    // the inputs of position t: dt (and d dt / d delta), u, B, C
    void inputs(const Lanes& c, int64_t bi, int64_t t, int64_t d0, int64_t w, T* dtl, T* slope, T* ul, T* Bt,
                T* Ct) const {
        load(delta, bi, t, d0, w, dtl);
        if (softplus) {
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) softplus_k(dtl[j] + c.bias[j], dtl[j], slope[j]);
        } else {
            for (int64_t j = 0; j < W; ++j) {
                dtl[j] += c.bias[j];
                slope[j] = 1;
            }
        }
        for (int64_t j = w; j < W; ++j) dtl[j] = 0;  // padding lanes: no decay, no input
        load(u, bi, t, d0, w, ul);
        std::memcpy(Bt, B.row(bi, t), sizeof(T) * n);
        std::memcpy(Ct, C.row(bi, t), sizeof(T) * n);
    }

    // one state (d, n), e.g. a batch row of (b, d, n) <-> lanes (n, W); src == nullptr: zero
    void get_state(const T* src, int64_t d0, int64_t w, T* h) const {
        for (int64_t k = 0; k < n; ++k)
            for (int64_t j = 0; j < W; ++j) h[k * W + j] = (src && j < w) ? src[(d0 + j) * n + k] : T(0);
    }
    void put_state(T* dst, int64_t d0, int64_t w, const T* h) const {
        for (int64_t k = 0; k < n; ++k)
            for (int64_t j = 0; j < w; ++j) dst[(d0 + j) * n + k] = h[k * W + j];
    }

    // out (b, L, d); last (b, d, n); ckpt (b, chunks, d, n) or null; states (b, L, d, n) or null
    void forward(T* out, T* last, T* ckpt, T* states, int64_t threads) const {
        const int64_t nb = blocks(), nc = chunks();
        parallel_for(b * nb, threads, [&](int64_t task) {
            const int64_t bi = task / nb, d0 = (task % nb) * W, w = std::min(W, d - d0);
            const Lanes c = lanes(d0, w);
            std::vector<T> h(n * W), a(n * W), Bt(n), Ct(n);
            get_state(init ? init + bi * d * n : nullptr, d0, w, h.data());
            T dtl[W], slope[W], ul[W], yl[W], zl[W];
            for (int64_t t = 0; t < L; ++t) {
                if (ckpt && t % K == 0) put_state(ckpt + (bi * nc + t / K) * d * n, d0, w, h.data());
                inputs(c, bi, t, d0, w, dtl, slope, ul, Bt.data(), Ct.data());
                step(n, dtl, ul, c.A.data(), Bt.data(), Ct.data(), h.data(), a.data(), yl);
                for (int64_t j = 0; j < W; ++j) yl[j] += c.D[j] * ul[j];
                if (z.p) {
                    load(z, bi, t, d0, w, zl);
#pragma omp simd
                    for (int64_t j = 0; j < W; ++j) yl[j] *= zl[j] / (T(1) + exp_k(-zl[j]));
                }
                T* ot = out + (bi * L + t) * d + d0;
                for (int64_t j = 0; j < w; ++j) ot[j] = yl[j];
                if (states) {
                    T* st = states + ((bi * L + t) * d + d0) * n;
                    for (int64_t j = 0; j < w; ++j)
                        for (int64_t k = 0; k < n; ++k) st[j * n + k] = h[k * W + j];
                }
            }
            put_state(last + bi * d * n, d0, w, h.data());
        });
    }

    // gout (b, L, d) strided; glast (b, d, n) or null. Out: gu, gdelta, gz (b, L, d) (gz if z); gA (b, d, n),
    // gD, gbias (b, d) (summed over b by the caller); gB, gC (blocks, b, L, n) (summed over blocks by the
    // caller); ginit (b, d, n) or null.
    void backward(const T* ckpt, View<T> gout, const T* glast, T* gu, T* gdelta, T* gz, T* gA, T* gD, T* gbias,
                  T* gB, T* gC, T* ginit, int64_t threads) const {
        const int64_t nb = blocks(), nc = chunks();
        parallel_for(b * nb, threads, [&](int64_t task) {
            const int64_t bi = task / nb, blk = task % nb, d0 = blk * W, w = std::min(W, d - d0);
            const Lanes c = lanes(d0, w);
            std::vector<T> gh(n * W), hs((K + 1) * n * W), as(K * n * W), ys(K * W), gAc(n * W), Bt(n), Ct(n);
            std::vector<double> gAsum(n * W, 0.0);
            double gDsum[W] = {}, gbsum[W] = {};
            get_state(glast ? glast + bi * d * n : nullptr, d0, w, gh.data());
            T dtl[W], slope[W], ul[W], gyl[W], zl[W], dul[W], gdtl[W], sB[W];
            for (int64_t ch = nc - 1; ch >= 0; --ch) {
                const int64_t t0 = ch * K, t1 = std::min(L, t0 + K);
                // recompute the chunk's states (hs[i] = state before position t0 + i), decays and C . h
                get_state(ckpt + (bi * nc + ch) * d * n, d0, w, hs.data());
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t i = t - t0;
                    std::copy(hs.begin() + i * n * W, hs.begin() + (i + 1) * n * W, hs.begin() + (i + 1) * n * W);
                    inputs(c, bi, t, d0, w, dtl, slope, ul, Bt.data(), Ct.data());
                    step(n, dtl, ul, c.A.data(), Bt.data(), Ct.data(), hs.data() + (i + 1) * n * W,
                         as.data() + i * n * W, ys.data() + i * W);
                }
                std::fill(gAc.begin(), gAc.end(), T(0));
                for (int64_t t = t1 - 1; t >= t0; --t) {
                    const int64_t i = t - t0;
                    inputs(c, bi, t, d0, w, dtl, slope, ul, Bt.data(), Ct.data());
                    load(gout, bi, t, d0, w, gyl);
                    if (z.p) {  // out = pre * silu(z), pre = C . h + D u
                        load(z, bi, t, d0, w, zl);
                        T gzl[W];
#pragma omp simd
                        for (int64_t j = 0; j < W; ++j) {
                            const T sg = T(1) / (T(1) + exp_k(-zl[j]));
                            const T pre = ys[i * W + j] + c.D[j] * ul[j];
                            gzl[j] = gyl[j] * pre * sg * (T(1) + zl[j] * (T(1) - sg));
                            gyl[j] *= zl[j] * sg;
                        }
                        T* gzt = gz + (bi * L + t) * d + d0;
                        for (int64_t j = 0; j < w; ++j) gzt[j] = gzl[j];
                    }
                    for (int64_t j = 0; j < W; ++j) {
                        gDsum[j] += gyl[j] * ul[j];
                        dul[j] = dtl[j] * ul[j];
                        gdtl[j] = 0;
                        sB[j] = 0;
                    }
                    T* gBt = gB + ((blk * b + bi) * L + t) * n;
                    T* gCt = gC + ((blk * b + bi) * L + t) * n;
                    const T* hprev = hs.data() + i * n * W;
                    const T* hcur = hs.data() + (i + 1) * n * W;
                    const T* at = as.data() + i * n * W;
                    for (int64_t k = 0; k < n; ++k) {
                        const T bk = Bt[k], ck = Ct[k];
                        T* ghk = gh.data() + k * W;
                        T* gAk = gAc.data() + k * W;
                        const T* Ak = c.A.data() + k * W;
                        const T* hp = hprev + k * W;
                        const T* hc = hcur + k * W;
                        const T* ak = at + k * W;
                        T gc = 0, gb = 0;
#pragma omp simd reduction(+ : gc, gb)
                        for (int64_t j = 0; j < W; ++j) {
                            T g = ghk[j] + gyl[j] * ck;  // dLoss/dh_t, all later positions included
                            gc += gyl[j] * hc[j];
                            T ga = g * hp[j] * ak[j];  // through the decay: d a / d(dt A) = a
                            gdtl[j] += ga * Ak[j];
                            gAk[j] += ga * dtl[j];
                            sB[j] += g * bk;
                            gb += g * dul[j];
                            ghk[j] = g * ak[j];
                        }
                        gCt[k] = gc;
                        gBt[k] = gb;
                    }
                    T* gut = gu + (bi * L + t) * d + d0;
                    T* gdt = gdelta + (bi * L + t) * d + d0;
                    for (int64_t j = 0; j < w; ++j) {
                        gut[j] = sB[j] * dtl[j] + gyl[j] * c.D[j];
                        gdt[j] = (gdtl[j] + sB[j] * ul[j]) * slope[j];
                        gbsum[j] += gdt[j];
                    }
                }
                for (int64_t q = 0; q < n * W; ++q) gAsum[q] += gAc[q];
            }
            for (int64_t k = 0; k < n; ++k)
                for (int64_t j = 0; j < w; ++j) gA[(bi * d + d0 + j) * n + k] = static_cast<T>(gAsum[k * W + j]);
            for (int64_t j = 0; j < w; ++j) {
                gD[bi * d + d0 + j] = static_cast<T>(gDsum[j]);
                gbias[bi * d + d0 + j] = static_cast<T>(gbsum[j]);
            }
            if (ginit) put_state(ginit + bi * d * n, d0, w, gh.data());
        });
    }
};

// ---------------------------------------------------------------------------------------------
// Mamba2 (one decay per head)
// ---------------------------------------------------------------------------------------------
template <class T>
struct M2 {
    int64_t b, L, h, p, g, n, K;
    const T *x, *dt, *A, *B, *C, *init;
    int64_t chunks() const { return (L + K - 1) / K; }
    const T* Bt(int64_t bi, int64_t t, int64_t hi) const { return B + ((bi * L + t) * g + hi / (h / g)) * n; }
    const T* Ct(int64_t bi, int64_t t, int64_t hi) const { return C + ((bi * L + t) * g + hi / (h / g)) * n; }

    // one position of head hi: state s (p, n) <- a s + dt x B^T; y (p) = s C; returns a
    T step(int64_t bi, int64_t t, int64_t hi, T* s, T* y) const {
        const T dtv = dt[(bi * L + t) * h + hi];
        const T a = exp_k(dtv * A[hi]);
        const T* xt = x + ((bi * L + t) * h + hi) * p;
        const T* bt = Bt(bi, t, hi);
        const T* ct = Ct(bi, t, hi);
        for (int64_t q = 0; q < p; ++q) {
            const T xd = xt[q] * dtv;
            T* sq = s + q * n;
            T acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < n; ++k) {
                T v = a * sq[k] + xd * bt[k];
                sq[k] = v;
                acc += ct[k] * v;
            }
            if (y) y[q] = acc;
        }
        return a;
    }

    // y (b, L, h, p); last (b, h, p, n); ckpt (b, h, chunks, p, n) or null; states (b, L, h, p, n) or null
    void forward(T* y, T* last, T* ckpt, T* states, int64_t threads) const {
        const int64_t nc = chunks(), pn = p * n;
        parallel_for(b * h, threads, [&](int64_t task) {
            const int64_t bi = task / h, hi = task % h;
            std::vector<T> s(pn, T(0));
            if (init) std::copy(init + task * pn, init + (task + 1) * pn, s.begin());
            for (int64_t t = 0; t < L; ++t) {
                if (ckpt && t % K == 0) std::copy(s.begin(), s.end(), ckpt + (task * nc + t / K) * pn);
                step(bi, t, hi, s.data(), y + ((bi * L + t) * h + hi) * p);
                if (states) std::copy(s.begin(), s.end(), states + ((bi * L + t) * h + hi) * pn);
            }
            std::copy(s.begin(), s.end(), last + task * pn);
        });
    }

    // gy (b, L, h, p); glast (b, h, p, n) or null. Out: gx (b, L, h, p); gdt (b, L, h); gA (b, h);
    // gB, gC (b, L, h, n) (summed over the heads of a group by the caller); ginit (b, h, p, n) or null.
    void backward(const T* ckpt, const T* gy, const T* glast, T* gx, T* gdt, T* gA, T* gB, T* gC, T* ginit,
                  int64_t threads) const {
        const int64_t nc = chunks(), pn = p * n;
        parallel_for(b * h, threads, [&](int64_t task) {
            const int64_t bi = task / h, hi = task % h;
            const T Ah = A[hi];
            std::vector<T> gs(pn, T(0)), ss((K + 1) * pn), as(K);
            if (glast) std::copy(glast + task * pn, glast + (task + 1) * pn, gs.begin());
            double gAsum = 0;
            for (int64_t c = nc - 1; c >= 0; --c) {
                const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
                std::copy(ckpt + (task * nc + c) * pn, ckpt + (task * nc + c + 1) * pn, ss.begin());
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t i = t - t0;
                    std::copy(ss.begin() + i * pn, ss.begin() + (i + 1) * pn, ss.begin() + (i + 1) * pn);
                    as[i] = step(bi, t, hi, ss.data() + (i + 1) * pn, nullptr);
                }
                T gAc = 0;
                for (int64_t t = t1 - 1; t >= t0; --t) {
                    const int64_t i = t - t0;
                    const int64_t row = (bi * L + t) * h + hi;
                    const T dtv = dt[row], a = as[i];
                    const T* xt = x + row * p;
                    const T* gyt = gy + row * p;
                    const T* bt = Bt(bi, t, hi);
                    const T* ct = Ct(bi, t, hi);
                    const T* sp = ss.data() + i * pn;
                    const T* sc = ss.data() + (i + 1) * pn;
                    T* gBt = gB + row * n;
                    T* gCt = gC + row * n;
                    for (int64_t k = 0; k < n; ++k) gBt[k] = gCt[k] = 0;
                    T gdec = 0, gdtx = 0;
                    for (int64_t q = 0; q < p; ++q) {
                        const T gyq = gyt[q], xq = xt[q], xd = xq * dtv;
                        T* gq = gs.data() + q * n;
                        const T* spq = sp + q * n;
                        const T* scq = sc + q * n;
                        T sb = 0, dec = 0;
#pragma omp simd reduction(+ : sb, dec)
                        for (int64_t k = 0; k < n; ++k) {
                            T gv = gq[k] + gyq * ct[k];
                            gCt[k] += gyq * scq[k];
                            dec += gv * spq[k];
                            sb += gv * bt[k];
                            gBt[k] += gv * xd;
                            gq[k] = gv * a;
                        }
                        gx[row * p + q] = sb * dtv;
                        gdtx += sb * xq;
                        gdec += dec;
                    }
                    gdt[row] = gdtx + gdec * a * Ah;
                    gAc += gdec * a * dtv;
                }
                gAsum += gAc;
            }
            gA[task] = static_cast<T>(gAsum);
            if (ginit) std::copy(gs.begin(), gs.end(), ginit + task * pn);
        });
    }
};

template <class F>
int guarded(const F& fn) {
    try {
        fn();
        return 0;
    } catch (...) {
        return 1;
    }
}

}  // namespace

// strides: u, delta, z, gout (b, L, d) and B, C (b, L, n), three each (the channel stride is 1)
#define PK_M1(T, SUF)                                                                                          \
    extern "C" int pk_m1_fwd_##SUF(int64_t b, int64_t L, int64_t d, int64_t n, int64_t K, int64_t softplus,   \
                                   const T* u, const T* delta, const T* z, const T* B, const T* C,             \
                                   const int64_t* st, const T* A, const T* D, const T* bias, const T* init,    \
                                   T* out, T* last, T* ckpt, T* states, int64_t threads) {                     \
        return guarded([&] {                                                                                   \
            M1<T> m{b, L, d, n, K, {u, st[0], st[1], st[2]}, {delta, st[3], st[4], st[5]},                    \
                    {z, st[6], st[7], st[8]}, {B, st[9], st[10], st[11]}, {C, st[12], st[13], st[14]},         \
                    A, D, bias, init, softplus != 0};                                                          \
            m.forward(out, last, ckpt, states, threads);                                                       \
        });                                                                                                    \
    }                                                                                                          \
    extern "C" int pk_m1_bwd_##SUF(int64_t b, int64_t L, int64_t d, int64_t n, int64_t K, int64_t softplus,   \
                                   const T* u, const T* delta, const T* z, const T* B, const T* C,             \
                                   const T* gout, const int64_t* st, const T* A, const T* D, const T* bias,    \
                                   const T* ckpt, const T* glast, T* gu, T* gdelta, T* gz, T* gA, T* gD,       \
                                   T* gbias, T* gB, T* gC, T* ginit, int64_t threads) {                        \
        return guarded([&] {                                                                                   \
            M1<T> m{b, L, d, n, K, {u, st[0], st[1], st[2]}, {delta, st[3], st[4], st[5]},                    \
                    {z, st[6], st[7], st[8]}, {B, st[9], st[10], st[11]}, {C, st[12], st[13], st[14]},         \
                    A, D, bias, nullptr, softplus != 0};                                                       \
            m.backward(ckpt, {gout, st[15], st[16], st[17]}, glast, gu, gdelta, gz, gA, gD, gbias, gB, gC,     \
                       ginit, threads);                                                                        \
        });                                                                                                    \
    }

#define PK_M2(T, SUF)                                                                                              \
    extern "C" int pk_m2_fwd_##SUF(int64_t b, int64_t L, int64_t h, int64_t p, int64_t g, int64_t n, int64_t K,  \
                                   const T* x, const T* dt, const T* A, const T* B, const T* C, const T* init,     \
                                   T* y, T* last, T* ckpt, T* states, int64_t threads) {                           \
        return guarded(                                                                                            \
            [&] { M2<T>{b, L, h, p, g, n, K, x, dt, A, B, C, init}.forward(y, last, ckpt, states, threads); });   \
    }                                                                                                              \
    extern "C" int pk_m2_bwd_##SUF(int64_t b, int64_t L, int64_t h, int64_t p, int64_t g, int64_t n, int64_t K,  \
                                   const T* x, const T* dt, const T* A, const T* B, const T* C, const T* ckpt,     \
                                   const T* gy, const T* glast, T* gx, T* gdt, T* gA, T* gB, T* gC, T* ginit,      \
                                   int64_t threads) {                                                               \
        return guarded([&] {                                                                                       \
            M2<T>{b, L, h, p, g, n, K, x, dt, A, B, C, nullptr}.backward(ckpt, gy, glast, gx, gdt, gA, gB, gC,   \
                                                                         ginit, threads);                           \
        });                                                                                                        \
    }

PK_M1(float, f32)
PK_M1(double, f64)
PK_M2(float, f32)
PK_M2(double, f64)

extern "C" int pk_abi_version() { return 2; }
