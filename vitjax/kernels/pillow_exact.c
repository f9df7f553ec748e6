/* Pillow's bicubic resize and bicubic affine transform of 8-bit images, the same pixels, faster.
 *
 * The data pipeline's random resized crop and RandAugment's geometric ops spend most of their
 * time in two Pillow calls (Image.resize with a box, Image.transform AFFINE), on images that are
 * numpy arrays before and after. These functions compute what Pillow 13 computes, bit for bit,
 * on packed [height, width, channels] uint8 arrays:
 *
 *  - resize: Pillow's separable convolution with fixed-point coefficients (22 fractional bits,
 *    rounded at each pass), coefficients computed in double exactly as Pillow does, the two passes
 *    in Pillow's order. Integer sums are exact, so the order of the taps is free: the vertical pass
 *    runs along whole rows (vectorised), and the horizontal pass on the transposed crop (vectorised
 *    the same way) before transposing back.
 *  - affine: Pillow's per-pixel bicubic interpolation in double (the same operations in the same
 *    order: build with -ffp-contract=off), pixels outside the image left at the fill colour.
 *
 * vitjax/kernels/resample.py calls them through ctypes and checks them against Pillow.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS 22
#define HALF (1 << (PRECISION_BITS - 1))

static inline uint8_t clip8(int32_t sum) {
    int32_t v = sum >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

static inline double bicubic_weight(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Output pixel i reads input pixels [bounds[2i], bounds[2i] + bounds[2i+1]) with weights
 * kk[i * ksize + t]; as Pillow's precompute_coeffs and normalize_coeffs_8bpc. Returns ksize, 0
 * when out of memory. */
static int axis_coefficients(int in_size, float in0, float in1, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *weights = malloc(sizeof(double) * (size_t)ksize);
    int *bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    int32_t *kk = calloc((size_t)out_size * (size_t)ksize, sizeof(int32_t));
    if (!weights || !bounds || !kk) {
        free(weights), free(bounds), free(kk);
        return 0;
    }
    double inv_filterscale = 1.0 / filterscale;
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale;
        double total = 0.0;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int taps = hi - lo;
        for (int t = 0; t < taps; t++) {
            double w = bicubic_weight((t + lo - center + 0.5) * inv_filterscale);
            weights[t] = w;
            total += w;
        }
        for (int t = 0; t < taps; t++) {
            double w = total != 0.0 ? weights[t] / total : weights[t];
            kk[i * ksize + t] = (int32_t)(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
        }
        bounds[2 * i] = lo;
        bounds[2 * i + 1] = taps;
    }
    free(weights);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

/* Scratch memory for the passes, kept per thread and grown as needed: a fresh allocation of a few
 * hundred KB per call costs more in page faults than the pass itself. */
static _Thread_local uint8_t *scratch_memory[3];
static _Thread_local size_t scratch_size[3];

static uint8_t *scratch(int slot, size_t bytes) {
    if (bytes > scratch_size[slot]) {
        uint8_t *grown = realloc(scratch_memory[slot], bytes);
        if (!grown) return NULL;
        scratch_memory[slot] = grown;
        scratch_size[slot] = bytes;
    }
    return scratch_memory[slot];
}

#ifdef __AVX2__
#include <immintrin.h>
#define BLOCK 32 /* output bytes whose sums stay in registers across all taps */

/* convolve_rows's sums for out bytes [0, BLOCK), taps rows `stride` apart from `row`. */
static inline void convolve_block(const uint8_t *row, size_t stride, const int32_t *k, int taps, uint8_t *dst) {
    __m256i a0 = _mm256_set1_epi32(HALF), a1 = a0, a2 = a0, a3 = a0;
    for (int t = 0; t < taps; t++, row += stride) {
        __m256i w = _mm256_set1_epi32(k[t]);
        __m128i bytes = _mm_loadu_si128((const __m128i *)row), more = _mm_loadu_si128((const __m128i *)(row + 16));
        a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(bytes), w));
        a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)), w));
        a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(more), w));
        a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(more, 8)), w));
    }
    /* clip8: shift, then saturate int32 -> int16 -> uint8 (packs interleave 128-bit halves: undo) */
    a0 = _mm256_srai_epi32(a0, PRECISION_BITS), a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
    a2 = _mm256_srai_epi32(a2, PRECISION_BITS), a3 = _mm256_srai_epi32(a3, PRECISION_BITS);
    __m256i words01 = _mm256_packs_epi32(a0, a1), words23 = _mm256_packs_epi32(a2, a3);
    __m256i bytes = _mm256_packus_epi16(words01, words23);
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, bytes);
}
#endif

/* out[i][:] = clip8(sum_t kk[i][t] * in[bounds[2i] + t][:]) over rows of `length` bytes. */
static void convolve_rows(const uint8_t *in, size_t in_stride, uint8_t *out, size_t out_stride, int out_rows,
                          int length, const int *bounds, const int32_t *kk, int ksize) {
    for (int i = 0; i < out_rows; i++) {
        const int32_t *k = kk + (size_t)i * ksize;
        const uint8_t *first = in + (size_t)bounds[2 * i] * in_stride;
        int taps = bounds[2 * i + 1];
        uint8_t *dst = out + (size_t)i * out_stride;
        int j0 = 0;
#ifdef __AVX2__
        for (; j0 + BLOCK <= length; j0 += BLOCK) convolve_block(first + j0, in_stride, k, taps, dst + j0);
#endif
        for (int j = j0; j < length; j++) {
            int32_t sum = HALF;
            for (int t = 0; t < taps; t++) sum += (int32_t)first[(size_t)t * in_stride + j] * k[t];
            dst[j] = clip8(sum);
        }
    }
}

/* [rows, cols] pixels of `channels` bytes -> [cols, rows]. */
static void transpose_pixels(const uint8_t *in, size_t in_stride, int rows, int cols, int channels, uint8_t *out) {
    const int block = 32;
    size_t out_stride = (size_t)rows * channels;
    for (int r0 = 0; r0 < rows; r0 += block) {
        int r1 = r0 + block < rows ? r0 + block : rows;
        for (int c0 = 0; c0 < cols; c0 += block) {
            int c1 = c0 + block < cols ? c0 + block : cols;
            for (int r = r0; r < r1; r++) {
                const uint8_t *src = in + (size_t)r * in_stride;
                for (int c = c0; c < c1; c++)
                    for (int b = 0; b < channels; b++) out[(size_t)c * out_stride + (size_t)r * channels + b] = src[(size_t)c * channels + b];
            }
        }
    }
}

/* Horizontal pass: out[r][x] = sum_t kk[x][t] * in[r][bounds[2x] + t] for rows [0, rows), run as
 * convolve_rows on the transposed columns the output reads. */
static int horizontal_pass(const uint8_t *in, size_t in_stride, int rows, int channels, uint8_t *out, int out_w,
                           const int *bounds, const int32_t *kk, int ksize) {
    int first = bounds[0], last = bounds[0] + bounds[1];
    for (int i = 1; i < out_w; i++) {
        if (bounds[2 * i] < first) first = bounds[2 * i];
        if (bounds[2 * i] + bounds[2 * i + 1] > last) last = bounds[2 * i] + bounds[2 * i + 1];
    }
    int cols = last - first;
    size_t column_bytes = (size_t)rows * channels;
    uint8_t *columns = scratch(0, column_bytes * (size_t)(cols > 0 ? cols : 1) + 1);
    uint8_t *result = scratch(1, column_bytes * (size_t)out_w + 1);
    int *shifted = calloc(2 * (size_t)out_w, sizeof(int));
    if (!columns || !result || !shifted) {
        free(shifted);
        return -1;
    }
    for (int i = 0; i < out_w; i++) {
        shifted[2 * i] = bounds[2 * i] - first;
        shifted[2 * i + 1] = bounds[2 * i + 1];
    }
    if (cols > 0) transpose_pixels(in + (size_t)first * channels, in_stride, rows, cols, channels, columns);
    convolve_rows(columns, column_bytes, result, column_bytes, out_w, (int)column_bytes, shifted, kk, ksize);
    transpose_pixels(result, column_bytes, out_w, rows, channels, out);
    free(shifted);
    return 0;
}

static int vertical_pass(const uint8_t *in, size_t in_stride, int width, int channels, uint8_t *out, int out_h,
                         const int *bounds, const int32_t *kk, int ksize) {
    int length = width * channels;
    convolve_rows(in, in_stride, out, (size_t)length, out_h, length, bounds, kk, ksize);
    return 0;
}

/* Image.resize((out_w, out_h), BICUBIC, box=(box[0], box[1], box[2], box[3])) of a packed
 * [in_h, in_w, channels] uint8 image into out ([out_h, out_w, channels]). vertical_first_rule: the
 * Pillow in use runs the vertical pass first when the height shrinks by more than twice what the
 * width does (Pillow 13; older releases always ran the horizontal pass first). The caller has
 * handled Pillow's shortcuts (same size and full box: a copy; an integer box of the output's size:
 * a crop) and checked the box. Returns 0, or -1 when out of memory. */
int vitjax_resize_bicubic_u8(const uint8_t *in, int in_h, int in_w, int channels, const float *box, int out_w,
                             int out_h, int vertical_first_rule, uint8_t *out) {
    int need_horizontal = out_w != in_w || box[0] != 0.0f || box[2] != out_w;
    int need_vertical = out_h != in_h || box[1] != 0.0f || box[3] != out_h;
    int horizontal_first = !(vertical_first_rule && in_h - out_h > 0 && in_h - out_h > (in_w - out_w) * 2);
    int *bounds_x = NULL, *bounds_y = NULL;
    int32_t *kk_x = NULL, *kk_y = NULL;
    int ksize_x = 0, ksize_y = 0, status = -1;
    uint8_t *temp = NULL;
    size_t in_stride = (size_t)in_w * channels;

    if (need_vertical || (need_horizontal && horizontal_first)) {
        ksize_y = axis_coefficients(in_h, box[1], box[3], out_h, &bounds_y, &kk_y);
        if (!ksize_y) goto end;
    }
    if (need_horizontal) {
        ksize_x = axis_coefficients(in_w, box[0], box[2], out_w, &bounds_x, &kk_x);
        if (!ksize_x) goto end;
    }
    if (!need_horizontal && !need_vertical) {
        memcpy(out, in, (size_t)in_h * in_stride);
        status = 0;
        goto end;
    }
    if (horizontal_first) {
        if (!need_horizontal) {
            status = vertical_pass(in, in_stride, in_w, channels, out, out_h, bounds_y, kk_y, ksize_y);
            goto end;
        }
        int first = bounds_y[0];
        int last = bounds_y[2 * out_h - 2] + bounds_y[2 * out_h - 1];
        if (!need_vertical) {  /* rows [first, last) are the image's rows here */
            status = horizontal_pass(in + (size_t)first * in_stride, in_stride, last - first, channels, out, out_w,
                                     bounds_x, kk_x, ksize_x);
            goto end;
        }
        temp = scratch(2, (size_t)(last - first) * out_w * channels + 1);
        if (!temp) goto end;
        if (horizontal_pass(in + (size_t)first * in_stride, in_stride, last - first, channels, temp, out_w, bounds_x,
                            kk_x, ksize_x))
            goto end;
        for (int i = 0; i < out_h; i++) bounds_y[2 * i] -= first;
        status = vertical_pass(temp, (size_t)out_w * channels, out_w, channels, out, out_h, bounds_y, kk_y, ksize_y);
    } else {
        if (!need_horizontal) {
            status = vertical_pass(in, in_stride, in_w, channels, out, out_h, bounds_y, kk_y, ksize_y);
            goto end;
        }
        temp = scratch(2, (size_t)out_h * in_stride + 1);
        if (!temp) goto end;
        if (vertical_pass(in, in_stride, in_w, channels, temp, out_h, bounds_y, kk_y, ksize_y)) goto end;
        status = horizontal_pass(temp, in_stride, out_h, channels, out, out_w, bounds_x, kk_x, ksize_x);
    }
end:
    free(bounds_x), free(bounds_y), free(kk_x), free(kk_y);
    return status;
}

/* vitjax_resize_bicubic_u8 of each image of a batch ([batch, in_h, in_w, channels]) with its own
 * box (boxes[4 i .. 4 i + 3]) into out ([batch, out_h, out_w, channels]), all to the same size: one
 * call for a batch of small images, whose cost is otherwise the calls. The caller has handled
 * Pillow's crop shortcut (an integer box of the output's size). Returns 0, or -1 when out of memory. */
int vitjax_resize_bicubic_batch_u8(const uint8_t *in, int batch, int in_h, int in_w, int channels, const float *boxes,
                                   int out_w, int out_h, int vertical_first_rule, uint8_t *out) {
    size_t in_size = (size_t)in_h * in_w * channels, out_size = (size_t)out_h * out_w * channels;
    for (int i = 0; i < batch; i++)
        if (vitjax_resize_bicubic_u8(in + i * in_size, in_h, in_w, channels, boxes + 4 * (size_t)i, out_w, out_h,
                                     vertical_first_rule, out + i * out_size))
            return -1;
    return 0;
}

/* Pillow's BICUBIC macro, the cubic through v1..v4 at d, in the same operations. For the first
 * level Pillow forms the differences of pixel values in int before converting; on values that
 * small, double arithmetic gives the same exact integers, so one function serves both levels. */
static inline double cubic(double v1, double v2, double v3, double v4, double d) {
    double p1 = v2;
    double p2 = -v1 + v3;
    double p3 = 2 * (v1 - v2) + v3 - v4;
    double p4 = -v1 + v2 - v3 + v4;
    return p1 + d * (p2 + d * (p3 + d * p4));
}

/* Pillow's conversion of a sample to 8 bits: clamped, then truncated. */
static inline uint8_t sample_to_u8(double value) { return value <= 0.0 ? 0 : (value >= 255.0 ? 255 : (uint8_t)value); }

#define CHUNK 32 /* output pixels whose coordinates and cubics are computed together (vectorised) */

#ifdef __AVX2__
/* Pillow's bicubic sample of an RGB pixel whose 4 columns x..x+3 lie inside the image, the three
 * bands at once: per row, the 12 bytes of the 4 pixels are spread into taps of (r, g, b, 0) int32,
 * the cubic's integer coefficients formed in int (as Pillow's int promotion does), then converted
 * and evaluated in double with Pillow's operations in Pillow's order (mul and add, no FMA). */
static inline void affine_pixel_rgb(const uint8_t *in, const int32_t *row_at, int32_t x, double dx, double dy,
                                    uint8_t *dst) {
    const __m128i pick0 = _mm_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, -1, -1, -1, -1);
    const __m128i step = _mm_setr_epi8(3, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0);
    const __m128i pick1 = _mm_add_epi8(pick0, step), pick2 = _mm_add_epi8(pick1, step), pick3 = _mm_add_epi8(pick2, step);
    __m256d d = _mm256_set1_pd(dx), v[4];
    for (int j = 0; j < 4; j++) {
        __m128i px = _mm_loadu_si128((const __m128i *)(in + row_at[j] + x * 3));
        __m128i t0 = _mm_shuffle_epi8(px, pick0), t1 = _mm_shuffle_epi8(px, pick1);
        __m128i t2 = _mm_shuffle_epi8(px, pick2), t3 = _mm_shuffle_epi8(px, pick3);
        __m128i p2 = _mm_sub_epi32(t2, t0);
        __m128i p3 = _mm_sub_epi32(_mm_add_epi32(_mm_slli_epi32(_mm_sub_epi32(t0, t1), 1), t2), t3);
        __m128i p4 = _mm_add_epi32(_mm_sub_epi32(_mm_sub_epi32(t1, t0), t2), t3);
        __m256d inner = _mm256_add_pd(_mm256_cvtepi32_pd(p3), _mm256_mul_pd(d, _mm256_cvtepi32_pd(p4)));
        inner = _mm256_add_pd(_mm256_cvtepi32_pd(p2), _mm256_mul_pd(d, inner));
        v[j] = _mm256_add_pd(_mm256_cvtepi32_pd(t1), _mm256_mul_pd(d, inner));
    }
    d = _mm256_set1_pd(dy);
    __m256d p2 = _mm256_sub_pd(v[2], v[0]);
    __m256d p3 = _mm256_sub_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_set1_pd(2.0), _mm256_sub_pd(v[0], v[1])), v[2]), v[3]);
    __m256d p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_sub_pd(v[1], v[0]), v[2]), v[3]);
    __m256d inner = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
    inner = _mm256_add_pd(p2, _mm256_mul_pd(d, inner));
    __m256d value = _mm256_add_pd(v[1], _mm256_mul_pd(d, inner));
    value = _mm256_min_pd(_mm256_max_pd(value, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    __m128i ints = _mm256_cvttpd_epi32(value);
    __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(ints, ints), _mm_setzero_si128());
    uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(bytes);
    dst[0] = (uint8_t)rgb, dst[1] = (uint8_t)(rgb >> 8), dst[2] = (uint8_t)(rgb >> 16);
}
#endif

/* Image.transform(size, AFFINE, a, resample=BICUBIC, fillcolor=fill) of a packed [in_h, in_w,
 * channels] uint8 image (channels <= 4) into out ([out_h, out_w, channels]); output pixel (x, y)
 * samples the input at (a0 (x + .5) + a1 (y + .5) + a2, a3 (x + .5) + a4 (y + .5) + a5).
 *
 * Pillow's filter reads the 4x4 pixels around the sample, columns clamped to the image, and
 * replaces a row past the top or bottom by the previous row's value, which is the value of the
 * nearest row inside: so rows are clamped like columns here. Where d = 0 (shears and translations
 * along the other axis) a cubic is its second value exactly (p1 + 0 * (...) = p1), so a chunk of
 * pixels whose dy (dx) are all 0 reads one row (column) of 4 instead of 4 x 4. Pixels are done
 * CHUNK at a time: coordinates and cubics over the chunk (vectorised), the reads per pixel. */
void vitjax_affine_bicubic_u8(const uint8_t *in, int in_h, int in_w, int channels, const double *a, const uint8_t *fill,
                              int out_w, int out_h, uint8_t *out) {
    int32_t stride = in_w * channels;
    double xs[CHUNK], ys[CHUNK], dx[CHUNK], dy[CHUNK], v[4][CHUNK], value[CHUNK];
    int32_t inside[CHUNK], row_at[4][CHUNK], col_at[4][CHUNK], first_col[CHUNK], taps[4][4][CHUNK];
    size_t last_load = (size_t)in_h * stride;  /* a 16-byte load from the 4 columns must end before this */
    for (int oy = 0; oy < out_h; oy++) {
        double yo = oy + 0.5;
        for (int ox0 = 0; ox0 < out_w; ox0 += CHUNK) {
            int n = out_w - ox0 < CHUNK ? out_w - ox0 : CHUNK;
            uint8_t *dst = out + ((size_t)oy * out_w + ox0) * channels;
            for (int i = 0; i < CHUNK; i++) {
                double xo = ox0 + i + 0.5;
                xs[i] = a[0] * xo + a[1] * yo + a[2];
                ys[i] = a[3] * xo + a[4] * yo + a[5];
            }
            for (int i = 0; i < CHUNK; i++) {
                int in_range = (i < n) & (xs[i] >= 0.0) & (xs[i] < in_w) & (ys[i] >= 0.0) & (ys[i] < in_h);
                inside[i] = in_range;
                double xm = in_range ? xs[i] - 0.5 : 0.0, ym = in_range ? ys[i] - 0.5 : 0.0;
                double fx = floor(xm), fy = floor(ym);
                dx[i] = xm - fx, dy[i] = ym - fy;
                int32_t x = (int32_t)fx - 1, y = (int32_t)fy - 1;
                first_col[i] = x;
                for (int t = 0; t < 4; t++) {
                    int32_t c = x + t, r = y + t;
                    c = c < 0 ? 0 : (c < in_w ? c : in_w - 1);
                    r = r < 0 ? 0 : (r < in_h ? r : in_h - 1);
                    col_at[t][i] = c * channels;
                    row_at[t][i] = r * stride;
                }
            }
            int any_x = 0, any_y = 0, count = 0;
            for (int i = 0; i < CHUNK; i++) {
                any_x |= inside[i] & (dx[i] != 0.0);
                any_y |= inside[i] & (dy[i] != 0.0);
                count += inside[i];
            }
            if (!count) {
                for (int i = 0; i < n; i++)
                    for (int b = 0; b < channels; b++) dst[i * channels + b] = fill[b];
                continue;
            }
#ifdef __AVX2__
            if (channels == 3 && any_x && any_y) {
                for (int i = 0; i < n; i++) {
                    uint8_t *pixel = dst + i * 3;
                    int32_t x = first_col[i];
                    int interior = x >= 0 && x + 3 < in_w;
                    for (int j = 0; j < 4 && interior; j++) interior = (size_t)row_at[j][i] + (size_t)x * 3 + 16 <= last_load;
                    if (!inside[i]) {
                        pixel[0] = fill[0], pixel[1] = fill[1], pixel[2] = fill[2];
                    } else if (interior) {
                        int32_t rows[4] = {row_at[0][i], row_at[1][i], row_at[2][i], row_at[3][i]};
                        affine_pixel_rgb(in, rows, x, dx[i], dy[i], pixel);
                    } else {
                        for (int b = 0; b < 3; b++) {
                            double w[4];
                            for (int j = 0; j < 4; j++) {
                                const uint8_t *row = in + row_at[j][i] + b;
                                w[j] = cubic(row[col_at[0][i]], row[col_at[1][i]], row[col_at[2][i]],
                                                       row[col_at[3][i]], dx[i]);
                            }
                            pixel[b] = sample_to_u8(cubic(w[0], w[1], w[2], w[3], dy[i]));
                        }
                    }
                }
                continue;
            }
#endif
            int rows_from = any_y ? 0 : 1, rows_to = any_y ? 4 : 2, cols_from = any_x ? 0 : 1, cols_to = any_x ? 4 : 2;
            for (int b = 0; b < channels; b++) {
                const uint8_t *band = in + b;
                for (int j = rows_from; j < rows_to; j++)
                    for (int t = cols_from; t < cols_to; t++)
                        for (int i = 0; i < CHUNK; i++) taps[j][t][i] = band[row_at[j][i] + col_at[t][i]];
                for (int j = rows_from; j < rows_to; j++)
                    for (int i = 0; i < CHUNK; i++)
                        v[j][i] = any_x ? cubic(taps[j][0][i], taps[j][1][i], taps[j][2][i], taps[j][3][i], dx[i])
                                        : taps[j][1][i];
                for (int i = 0; i < CHUNK; i++)
                    value[i] = any_y ? cubic(v[0][i], v[1][i], v[2][i], v[3][i], dy[i]) : v[1][i];
                for (int i = 0; i < n; i++) dst[i * channels + b] = inside[i] ? sample_to_u8(value[i]) : fill[b];
            }
        }
    }
}

/* Mirrors each row of a packed [h, w, channels] image in place (the training pipeline's
 * horizontal flip, done on the resized crop before it leaves native code). */
void vitjax_mirror_rows_u8(uint8_t *image, int h, int w, int channels) {
    for (int y = 0; y < h; y++) {
        uint8_t *left = image + (size_t)y * w * channels, *right = left + (size_t)(w - 1) * channels;
        for (; left < right; left += channels, right -= channels)
            for (int b = 0; b < channels; b++) {
                uint8_t t = left[b];
                left[b] = right[b], right[b] = t;
            }
    }
}

/* ---- RandAugment's point and blend operations (Pillow's ImageOps and ImageEnhance) ---- */

/* Image.point(tables) of a packed image: band b of every pixel through tables[256 b ..]. */
void vitjax_lut_u8(const uint8_t *in, size_t pixels, int channels, const uint8_t *tables, uint8_t *out) {
    if (channels == 3) {
        const uint8_t *r = tables, *g = tables + 256, *b = tables + 512;
        for (size_t p = 0; p < pixels; p++, in += 3, out += 3) out[0] = r[in[0]], out[1] = g[in[1]], out[2] = b[in[2]];
        return;
    }
    for (size_t p = 0; p < pixels; p++)
        for (int b = 0; b < channels; b++, in++, out++) *out = tables[256 * b + *in];
}

/* Image.histogram(): counts[256 b + v] pixels have value v in band b (zeroed here). Four partial
 * histograms per band, so that runs of equal values do not wait on one counter. */
void vitjax_histogram_u8(const uint8_t *in, size_t pixels, int channels, int64_t *counts) {
    int64_t (*partial)[256] = calloc(4 * (size_t)channels, sizeof *partial);
    memset(counts, 0, sizeof(int64_t) * 256 * channels);
    if (!partial) { /* no 8 KB to spare: one counter per value */
        for (size_t i = 0; i < pixels * channels; i++) counts[256 * (i % channels) + in[i]]++;
        return;
    }
    size_t p = 0;
    for (; p + 4 <= pixels; p += 4, in += 4 * channels)
        for (int k = 0; k < 4; k++)
            for (int b = 0; b < channels; b++) partial[4 * b + k][in[k * channels + b]]++;
    for (; p < pixels; p++, in += channels)
        for (int b = 0; b < channels; b++) partial[4 * b][in[b]]++;
    for (int b = 0; b < channels; b++)
        for (int v = 0; v < 256; v++)
            counts[256 * b + v] = partial[4 * b][v] + partial[4 * b + 1][v] + partial[4 * b + 2][v] + partial[4 * b + 3][v];
    free(partial);
}

/* Image.convert("L") of packed RGB (ITU-R 601-2 luma in Pillow's 16-bit fixed point), written to
 * each of out_channels bands (1: an L image; 3: convert("L").convert("RGB")). */
void vitjax_gray_u8(const uint8_t *in, size_t pixels, int out_channels, uint8_t *out) {
    if (out_channels == 3) {
        for (size_t p = 0; p < pixels; p++) {
            const uint8_t *rgb = in + 3 * p;
            uint8_t v = (uint8_t)(((int32_t)rgb[0] * 19595 + (int32_t)rgb[1] * 38470 + (int32_t)rgb[2] * 7471 + 0x8000) >> 16);
            out[3 * p] = v, out[3 * p + 1] = v, out[3 * p + 2] = v;
        }
        return;
    }
    for (size_t p = 0; p < pixels; p++) {
        const uint8_t *rgb = in + 3 * p;
        out[p] = (uint8_t)(((int32_t)rgb[0] * 19595 + (int32_t)rgb[1] * 38470 + (int32_t)rgb[2] * 7471 + 0x8000) >> 16);
    }
}

/* Image.blend(degenerate, image, alpha), as ImageEnhance's enhance(alpha) calls it: in float,
 * degenerate + alpha (image - degenerate), clamped to [0, 255] and truncated (Pillow clamps only
 * when alpha is outside [0, 1], where nothing else can leave the range). degenerate is an image
 * of values values, or (degenerate_values 1) one value for all. */
void vitjax_blend_u8(const uint8_t *degenerate, size_t degenerate_values, const uint8_t *image, size_t values,
                     float alpha, uint8_t *out) {
    if (degenerate_values == 1) {
        int32_t d = degenerate[0];
        float base = (float)d;
        for (size_t i = 0; i < values; i++) {
            float t = base + alpha * (float)((int32_t)image[i] - d);
            out[i] = t <= 0.0f ? 0 : (t >= 255.0f ? 255 : (uint8_t)t);
        }
        return;
    }
    for (size_t i = 0; i < values; i++) {
        int32_t d = degenerate[i];
        float t = (float)d + alpha * (float)((int32_t)image[i] - d);
        out[i] = t <= 0.0f ? 0 : (t >= 255.0f ? 255 : (uint8_t)t);
    }
}

/* Image.filter(ImageFilter.SMOOTH) of a packed [h, w, channels] image: Pillow's 3x3 kernel
 * (1 1 1 / 1 5 1 / 1 1 1) / 13 in float, taps summed row by row (the row below first, as Pillow's
 * convolution orders them) plus 0.5, clamped and truncated; the border rows and columns copied.
 * An image under 3 pixels wide or high is copied whole. */
void vitjax_smooth_u8(const uint8_t *in, int h, int w, int channels, uint8_t *out) {
    const float side = 1.0f / 13.0f, centre = 5.0f / 13.0f;
    size_t stride = (size_t)w * channels;
    if (h < 3 || w < 3) {
        memcpy(out, in, (size_t)h * stride);
        return;
    }
    memcpy(out, in, stride);
    for (int y = 1; y < h - 1; y++) {
        const uint8_t *up = in + (size_t)(y - 1) * stride, *row = up + stride, *down = row + stride;
        uint8_t *dst = out + (size_t)y * stride;
        size_t c = (size_t)channels, last = stride - c;
        memcpy(dst, row, c);
        for (size_t i = c; i < last; i++) {
            float ss = 0.5f;
            ss += (float)down[i - c] * side + (float)down[i] * side + (float)down[i + c] * side;
            ss += (float)row[i - c] * side + (float)row[i] * centre + (float)row[i + c] * side;
            ss += (float)up[i - c] * side + (float)up[i] * side + (float)up[i + c] * side;
            ss = ss < 0.0f ? 0.0f : ss;
            ss = ss > 255.0f ? 255.0f : ss;
            dst[i] = (uint8_t)ss;
        }
        memcpy(dst + last, row + last, c);
    }
    memcpy(out + (size_t)(h - 1) * stride, in + (size_t)(h - 1) * stride, stride);
}
