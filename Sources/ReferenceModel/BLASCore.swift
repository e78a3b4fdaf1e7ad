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
public enum BLASCore {
    /// The core OpenBLAS runs, and whether dsconvert chose it.
    public struct Selection: Sendable, Equatable, CustomStringConvertible {
        /// OpenBLAS's name of the kernels that run ("SkylakeX", "Haswell", "Prescott", …).
        public let core: String
        /// The core OpenBLAS had chosen itself, when dsconvert replaced it.
        public let replaced: String?

        /// One line for benchmarks: "OpenBLAS 0.3.21 … core SkylakeX (OpenBLAS took this CPU for Prescott)".
        public var description: String {
            let config = String(cString: openblas_get_config()).trimmingCharacters(in: .whitespaces)
            let chosen = replaced.map { " (OpenBLAS took this CPU for \($0); dsconvert selected \(core) from its instruction set)" } ?? ""
            return "\(config), core \(core)\(chosen)"
        }
    }

    /// Made once, before the first BLAS call of the process: every entry point in `Linear` reads it.
    public static let selection: Selection = select()

    /// The core for this CPU's best instruction-set level, or nil below AVX2.
    static func coreForThisCPU() -> String? {
        switch dsconvert_fp8_best_isa() {
        case Int32(DSCONVERT_ISA_AVX512): return "SkylakeX"
        case Int32(DSCONVERT_ISA_AVX2): return dsconvert_cpu_has_fma() == 1 ? "Haswell" : nil
        default: return nil
        }
    }

    private static func currentCore() -> String {
        String(cString: openblas_get_corename()).trimmingCharacters(in: .whitespaces)
    }

    private static func select() -> Selection {
        let chosen = currentCore()
        guard chosen.lowercased() == "prescott", ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
              let better = coreForThisCPU(), dsconvert_openblas_select_core(better) == 1 else {
            return Selection(core: chosen, replaced: nil)
        }
        let now = currentCore()
        return Selection(core: now, replaced: now == chosen ? nil : chosen)
    }
}
