// The C kernels' umbrella header: FP8 block kernels and encoders, llama.cpp block quantizers,
// products with stored weights, causal attention, widening weights for OpenBLAS.
#include "attention.h"
#include "fp8_kernels.h"
#include "ggml_quants.h"
#include "stored_gemm.h"
#include "widen.h"
