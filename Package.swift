// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "dsconvert",
    products: [
        .executable(name: "dsconvert", targets: ["dsconvert"]),
        .executable(name: "dsconvert-absorb", targets: ["dsconvert-absorb"]),
        .executable(name: "dsconvert-quantize", targets: ["dsconvert-quantize"]),
        .executable(name: "dsconvert-shard", targets: ["dsconvert-shard"]),
        .executable(name: "dsconvert-validate", targets: ["dsconvert-validate"]),
        .executable(name: "dsconvert-bench", targets: ["dsconvert-bench"]),
        .executable(name: "dsconvert-export", targets: ["dsconvert-export"]),
        .library(name: "SafeTensors", targets: ["SafeTensors"]),
        .library(name: "DeepSeekModel", targets: ["DeepSeekModel"]),
    ],
    targets: [
        // Format: mmap reader with the reference implementation's validation, streaming writer, index.
        .target(name: "SafeTensors", dependencies: ["Numerics", "COpenSSL", "CSystemCalls", "CMappingGuard"]),
        // The SIGBUS handler for mapped inputs truncated during a run (in C: it must be async-signal-safe).
        .target(name: "CMappingGuard"),
        // Linux system calls Swift's Glibc module leaves out (copy_file_range).
        .systemLibrary(name: "CSystemCalls"),
        // libcrypto's SHA-256 (SHA-NI where the CPU has it): every shard written is hashed for the manifest.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Element codecs and kernels (bf16/f16/f32), no I/O.
        .target(name: "Numerics", dependencies: ["CKernels"]),
        // The FP8 block kernel and ggml's block quantizers in C, compiled per x86-64 level (baseline, AVX2, AVX-512)
        // and picked at run time; q4k_search_simd.inc is a template ggml_quants.c includes once per level.
        .target(name: "CKernels", exclude: ["q4k_search_simd.inc"]),
        // config.json model, tensor naming, shape checker, parameter and cache accounting.
        .target(name: "DeepSeekModel", dependencies: ["SafeTensors", "Numerics"]),
        // The conversion stages and what they share: output directories, manifests.
        .target(name: "Conversion", dependencies: ["SafeTensors", "DeepSeekModel", "Numerics", "ReferenceModel", "GGUF", "Tokenizer"]),
        // OpenBLAS, the reference backend of the validation forward pass.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        // The reference forward pass (fp32, OpenBLAS): weight providers, attention, router, rotary embedding.
        .target(name: "ReferenceModel", dependencies: ["COpenBLAS", "CKernels", "CSystemCalls", "SafeTensors", "DeepSeekModel", "Numerics"]),
        // Drift of a candidate against a reference: metrics and reports.
        .target(name: "Validation", dependencies: ["ReferenceModel", "SafeTensors", "DeepSeekModel", "Numerics"]),
        // llama.cpp's GGUF container (writer and checked reader) and its block types, quantized bit-exactly.
        .target(name: "GGUF", dependencies: ["CKernels", "Numerics"]),
        // Hugging Face tokenizer.json (BPE, DeepSeek's pre-tokenizers) encoding and decoding as `tokenizers` does.
        .target(name: "Tokenizer", dependencies: ["SafeTensors", "Numerics"]),
        // Argument parsing, diagnostics and terminal output shared by every executable.
        .target(name: "CLI"),
        // The commands themselves; every executable is a thin wrapper over one of these.
        // The convert benchmark's machinery: timed child processes and how they ended, output checks, statistics.
        .target(name: "Benchmark", dependencies: ["SafeTensors", "Conversion", "GGUF"]),
        .target(name: "DSConvertCommands", dependencies: ["CLI", "SafeTensors", "DeepSeekModel", "Numerics", "Conversion", "ReferenceModel", "Validation", "Benchmark", "Tokenizer", "GGUF"]),
        .executableTarget(name: "dsconvert", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-absorb", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-quantize", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-shard", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-validate", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-bench", dependencies: ["DSConvertCommands", "CLI"]),
        .executableTarget(name: "dsconvert-export", dependencies: ["DSConvertCommands", "CLI"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors", "Numerics"]),
        .testTarget(name: "NumericsTests", dependencies: ["Numerics", "CKernels"]),
        .testTarget(name: "DeepSeekModelTests", dependencies: ["DeepSeekModel", "SafeTensors"]),
        .testTarget(name: "ValidationTests", dependencies: ["Validation", "ReferenceModel", "SafeTensors", "DeepSeekModel", "Conversion", "Tokenizer"]),
        .testTarget(name: "ConversionTests", dependencies: ["Conversion", "SafeTensors", "DeepSeekModel", "Numerics"]),
        .testTarget(name: "BenchmarkTests", dependencies: ["Benchmark", "Conversion"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "Numerics"]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "CKernels"]),
        .testTarget(name: "EndToEndTests", dependencies: ["SafeTensors", "DeepSeekModel", "Conversion", "GGUF", "Tokenizer"]),
    ]
)
