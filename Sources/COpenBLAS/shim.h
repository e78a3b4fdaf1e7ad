#include <cblas.h>
#include <dlfcn.h>
#include <stdlib.h>

/// Ends OpenBLAS's worker threads (the next multi-threaded call starts them again, as after a fork).
/// After each multi-threaded call they spin on sched_yield for up to 2^28 cycles waiting for more
/// work, taking turns on the cores with whatever runs next. Returns 0 if this OpenBLAS has no such
/// entry point (nothing done).
/// (Looked up on every call, a few times per layer: no shared state to race on.)
static inline int dsconvert_openblas_park_threads(void) {
    int (*shutdown_threads)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
    if (!shutdown_threads) return 0;
    shutdown_threads();
    return 1;
}

/// Re-runs OpenBLAS's kernel selection as if the process had started with OPENBLAS_CORETYPE=`core`.
/// A DYNAMIC_ARCH OpenBLAS (Debian's) picks its kernels by CPU model in a load-time constructor; one
/// older than the CPU falls back to its SSE3 "Prescott" kernels. Must run before any BLAS call.
/// Returns 1 if this OpenBLAS has the dynamic selection entry points, else 0 (nothing changed).
static inline int dsconvert_openblas_select_core(const char *core) {
    void (*quit)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit");
    void (*init)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init");
    if (!quit || !init) return 0;
    // Called only when the variable is unset; unset again after, so child processes choose for
    // themselves as this process did.
    setenv("OPENBLAS_CORETYPE", core, 1);
    quit();
    init();
    unsetenv("OPENBLAS_CORETYPE");
    return 1;
}
