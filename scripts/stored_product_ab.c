// Two builds of the C kernels' stored product, compared in one process: `scripts/stored-product-ab.sh`
// builds the kernels of a git revision and of the work tree as two shared libraries, and this program
// loads both (each with its own symbols) and times `dsconvert_stored_gemm` from each on the same
// weights, alternating run by run on every core at once (one product per core, as a routed expert's
// products run). On a shared host the neighbours' load moves a product's speed by 10-40% within
// minutes; runs of two separate processes then differ by more than most kernel changes do, while runs
// alternating inside one process meet the same load. Each library runs once untimed first, the
// threads start together, and the order alternates (before-after, then after-before). It also checks
// that both give the same bits. Both libraries are called through the work tree's `stored_gemm.h`:
// a revision whose `dsconvert_stored_matrix` or kinds differ cannot be compared this way.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stored_gemm.h"

typedef int (*gemm_fn)(int, const dsconvert_stored_matrix *, const float *, size_t, size_t, size_t, float *, size_t);

enum { WEIGHTS = 6, MAX_THREADS = 8 };

typedef struct {
    int kind, isa, runs;
    size_t rows, cols, m;
    gemm_fn gemm[2];
} settings;

typedef struct {
    const settings *s;
    pthread_barrier_t *start;
    uint8_t *w[WEIGHTS];
    float *scales[WEIGHTS], *x, *y;
    double *seconds[2];
} worker;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint32_t next_random(uint32_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

static size_t element_size(int kind) {
    return kind == DSCONVERT_STORED_F32 ? 4 : (kind == DSCONVERT_STORED_BF16 || kind == DSCONVERT_STORED_F16 ? 2 : 1);
}

// Finite weights of every kind: FP8 codes but NaN/Inf, bf16 and f16 of magnitude 2^-8..2, f32 in (-1, 1).
static void fill_weight(const settings *s, uint32_t *state, uint8_t *w, float *scales) {
    size_t n = s->rows * s->cols;
    for (size_t i = 0; i < n; i++) {
        uint32_t r = next_random(state);
        switch (s->kind) {
        case DSCONVERT_STORED_F32: {
            float v = (float)(int32_t)r * 0x1p-31f;
            memcpy(w + 4 * i, &v, 4);
            break;
        }
        case DSCONVERT_STORED_BF16: {
            uint16_t v = (uint16_t)((r & 0x8000u) | (0x3B80u + (r >> 16) % 0x0480u));
            memcpy(w + 2 * i, &v, 2);
            break;
        }
        case DSCONVERT_STORED_F16: {
            uint16_t v = (uint16_t)((r & 0x8000u) | (0x1C00u + (r >> 16) % 0x2400u));
            memcpy(w + 2 * i, &v, 2);
            break;
        }
        default: {
            uint8_t code = (uint8_t)r, special = s->kind == DSCONVERT_STORED_FP8_E5M2 ? 0x7C : 0x7F;
            w[i] = (code & 0x7F) >= special ? (uint8_t)(code & 0x80) : code;
        }
        }
    }
    size_t count = ((s->rows + 127) / 128) * ((s->cols + 127) / 128);
    for (size_t i = 0; i < count; i++) scales[i] = 1e-3f * (1.0f + (float)(next_random(state) % 100) / 100.0f);
}

// The seconds of one product over each of the worker's weights, on average.
static double time_products(const worker *k, int v) {
    const settings *s = k->s;
    double began = now();
    for (int i = 0; i < WEIGHTS; i++) {
        dsconvert_stored_matrix w = {s->kind, k->w[i], s->rows, s->cols, k->scales[i], 128};
        if (s->gemm[v](s->isa, &w, k->x, s->m, 0, s->rows, k->y, s->rows) != 0) {
            fprintf(stderr, "stored_product_ab: the %s product failed\n", v ? "after" : "before");
            exit(2);
        }
    }
    return (now() - began) / WEIGHTS;
}

static void *run(void *argument) {
    worker *k = argument;
    for (int v = 0; v < 2; v++) time_products(k, v);
    pthread_barrier_wait(k->start);
    for (int r = 0; r < k->s->runs; r++)
        for (int turn = 0; turn < 2; turn++) {
            int v = turn ^ (r & 1);
            k->seconds[v][r] = time_products(k, v);
        }
    return NULL;
}

static int ascending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void *load(const char *path, const char *symbol) {
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    void *f = library ? dlsym(library, symbol) : NULL;
    if (!f) {
        fprintf(stderr, "stored_product_ab: %s: %s\n", path, dlerror());
        exit(2);
    }
    return f;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: stored_product_ab BEFORE.so AFTER.so KIND ROWS COLS M ISA RUNS THREADS\n");
        return 64;
    }
    settings s = {atoi(argv[3]), atoi(argv[7]), atoi(argv[8]), (size_t)atol(argv[4]), (size_t)atol(argv[5]), (size_t)atol(argv[6]),
                  {(gemm_fn)load(argv[1], "dsconvert_stored_gemm"), (gemm_fn)load(argv[2], "dsconvert_stored_gemm")}};
    int threads = atoi(argv[9]), best = ((int (*)(void))load(argv[2], "dsconvert_fp8_best_isa"))();
    // A level the CPU lacks would stop the program on an illegal instruction: -1 asks for the best.
    if (s.isa < 0) s.isa = best;
    if (s.isa > best) {
        fprintf(stderr, "stored_product_ab: level %d is beyond this CPU's best, %d\n", s.isa, best);
        return 64;
    }
    if (threads < 1 || threads > MAX_THREADS || s.runs < 1 || s.rows == 0 || s.cols == 0 || s.m == 0) {
        fprintf(stderr, "stored_product_ab: threads 1-%d, and runs, rows, columns and rows of x above 0\n", MAX_THREADS);
        return 64;
    }
    worker workers[MAX_THREADS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    uint32_t state = 12345;
    for (int t = 0; t < threads; t++) {
        worker *k = &workers[t];
        k->s = &s;
        k->start = &start;
        for (int i = 0; i < WEIGHTS; i++) {
            k->w[i] = malloc(s.rows * s.cols * element_size(s.kind));
            k->scales[i] = malloc(((s.rows + 127) / 128) * ((s.cols + 127) / 128) * sizeof(float));
            fill_weight(&s, &state, k->w[i], k->scales[i]);
        }
        k->x = malloc(s.m * s.cols * sizeof(float));
        for (size_t i = 0; i < s.m * s.cols; i++) k->x[i] = (float)(int32_t)next_random(&state) * 0x1p-31f;
        k->y = malloc(s.m * s.rows * sizeof(float));
        k->seconds[0] = malloc(s.runs * sizeof(double));
        k->seconds[1] = malloc(s.runs * sizeof(double));
    }
    // The same bits from both, on the first weight.
    float *y[2] = {malloc(s.m * s.rows * sizeof(float)), malloc(s.m * s.rows * sizeof(float))};
    dsconvert_stored_matrix w = {s.kind, workers[0].w[0], s.rows, s.cols, workers[0].scales[0], 128};
    for (int v = 0; v < 2; v++)
        if (s.gemm[v](s.isa, &w, workers[0].x, s.m, 0, s.rows, y[v], s.rows) != 0) {
            fprintf(stderr, "stored_product_ab: the %s product failed\n", v ? "after" : "before");
            return 2;
        }
    int same = memcmp(y[0], y[1], s.m * s.rows * sizeof(float)) == 0;

    pthread_t ids[MAX_THREADS];
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run, &workers[t]);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);

    double flops = 2.0 * (double)s.m * (double)s.rows * (double)s.cols, median[2];
    size_t n = (size_t)threads * s.runs;
    double *all = malloc(n * sizeof(double));
    printf("kind %d, %zu x %zu weight, %zu rows of x, level %d, %d threads, %d runs each, alternating\n", s.kind, s.rows, s.cols, s.m,
           s.isa, threads, s.runs);
    for (int v = 0; v < 2; v++) {
        for (int t = 0; t < threads; t++) memcpy(all + (size_t)t * s.runs, workers[t].seconds[v], s.runs * sizeof(double));
        qsort(all, n, sizeof(double), ascending);
        median[v] = flops / all[n / 2] / 1e9;
        printf("%-6s GFLOP/s a core: median %.1f, best %.1f, quartiles %.1f-%.1f\n", v ? "after" : "before", median[v],
               flops / all[0] / 1e9, flops / all[3 * n / 4] / 1e9, flops / all[n / 4] / 1e9);
    }
    printf("after / before at the medians: %.3f; same bits: %s\n", median[1] / median[0], same ? "yes" : "NO");
    return same ? 0 : 1;
}
