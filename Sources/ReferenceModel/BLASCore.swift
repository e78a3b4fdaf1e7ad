import CKernels
import COpenBLAS
import Foundation

/// Which OpenBLAS kernels the process runs, and the one correction dsconvert makes to OpenBLAS's choice.
///
/// A DYNAMIC_ARCH OpenBLAS (Debian's `libopenblas0-pthread`) chooses its kernels from the CPU's
/// family and model when it loads. A release older than the CPU does not know the model and falls
/// back to its SSE3 "Prescott" kernels: Debian 12's 0.3.21 on a Xeon of family 6 model 207 (Emerald
/// Rapids) ran `cblas_sgemm` at 63 GFLOP/s on 2 cores where its AVX-512 "SkylakeX" kernels run 287.
/// Every figure of the forward pass and of `validate` would be 4.5x off. So, before the first BLAS
/// call, when OpenBLAS took the Prescott fallback, `OPENBLAS_CORETYPE` was not set by the user, and
/// the CPU (and the kernel, which must save its registers) has AVX-512 F+BW (SkylakeX) or AVX2
/// (Haswell), the selection is re-run for that core, as `OPENBLAS_CORETYPE` would at load time.
/// Results stay within the reference's tolerances (another kernel only sums in another order) and
/// are the same at any thread count for a given core.
///
/// A core the user forced with `OPENBLAS_CORETYPE` stands, but when it is below the CPU's level
/// (this workplace's Zen 5 machines set `OPENBLAS_CORETYPE=Haswell`, AVX2, where OpenBLAS 0.3.21
/// itself picks its AVX-512 "Cooperlake": 254 against 405-421 GFLOP/s) the benchmarks' `blas:` line
/// says so, because every "of sgemm" ratio is then measured against a handicapped sgemm.
public enum BLASCore {
    /// The core OpenBLAS runs, and whether dsconvert chose it.
    public struct Selection: Sendable, Equatable, CustomStringConvertible {
        /// OpenBLAS's name of the kernels that run ("SkylakeX", "Haswell", "Prescott", …).
        public let core: String
        /// The core OpenBLAS had chosen itself, when dsconvert replaced it.
        public let replaced: String?
        /// The core of this CPU's level, when `OPENBLAS_CORETYPE` holds OpenBLAS below it.
        public let heldBelow: String?

        public init(core: String, replaced: String?, heldBelow: String? = nil) {
            self.core = core
            self.replaced = replaced
            self.heldBelow = heldBelow
        }

        /// One line for benchmarks: "OpenBLAS 0.3.21 … core SkylakeX (OpenBLAS took this CPU for Prescott)".
        public var description: String {
            let config = String(cString: openblas_get_config()).trimmingCharacters(in: .whitespaces)
            let chosen = replaced.map { " (OpenBLAS took this CPU for \($0); dsconvert selected \(core) from its instruction set)" } ?? ""
            let held = heldBelow.map {
                "; OPENBLAS_CORETYPE holds it below this CPU's \($0) kernels: sgemm here is not this machine's best"
            } ?? ""
            return "\(config), core \(core)\(chosen)\(held)"
        }
    }

    /// Made once, before the first BLAS call of the process: every entry point in `Linear` reads it.
    public static let selection: Selection = select()

    /// The OpenBLAS cores dsconvert selects or compares against: one per instruction-set level it
    /// knows, named as `OPENBLAS_CORETYPE` and `openblas_get_corename` name them.
    enum Level: String, Sendable {
        /// AVX-512 F+BW.
        case skylakeX = "SkylakeX"
        /// AVX2 with FMA.
        case haswell = "Haswell"
    }

    /// The core for this CPU's best instruction-set level, or nil below AVX2.
    static func coreForThisCPU() -> Level? {
        switch dsconvert_fp8_best_isa() {
        case Int32(DSCONVERT_ISA_AVX512): return .skylakeX
        case Int32(DSCONVERT_ISA_AVX2): return dsconvert_cpu_has_fma() == 1 ? .haswell : nil
        default: return nil
        }
    }

    private static func currentCore() -> String {
        String(cString: openblas_get_corename()).trimmingCharacters(in: .whitespaces)
    }

    /// OpenBLAS's x86-64 cores with AVX-512 kernels, and those without AVX2 ones.
    private static let avx512Cores: Set<String> = ["skylakex", "cooperlake", "sapphirerapids"]
    private static let belowAVX2Cores: Set<String> = [
        "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2", "penryn", "dunnington", "nehalem",
        "athlon", "opteron", "opteron_sse3", "barcelona", "nano", "sandybridge", "bobcat", "bulldozer", "piledriver",
        "steamroller",
    ]

    /// Whether kernels `core` are below a CPU whose level calls for `better`: on AVX-512 any core
    /// without AVX-512 kernels, on AVX2 any without AVX2 ones. A name OpenBLAS may add later counts
    /// as not below on AVX2.
    static func isBelow(_ core: String, better: Level) -> Bool {
        let name = core.lowercased()
        switch better {
        case .skylakeX: return !avx512Cores.contains(name)
        case .haswell: return belowAVX2Cores.contains(name)
        }
    }

    private static func select() -> Selection {
        let chosen = currentCore()
        let better = coreForThisCPU()
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil {
            let held = better.flatMap { isBelow(chosen, better: $0) ? $0.rawValue : nil }
            return Selection(core: chosen, replaced: nil, heldBelow: held)
        }
        guard chosen.lowercased() == "prescott", let better, dsconvert_openblas_select_core(better.rawValue) == 1 else {
            return Selection(core: chosen, replaced: nil)
        }
        let now = currentCore()
        return Selection(core: now, replaced: now == chosen ? nil : chosen)
    }
}
