import CKernels
import Numerics

/// llama.cpp's tensor element types that `export --gguf` writes (ggml's type ids), with their block
/// layouts and quantizers (bit-exact with ggml's reference quantizers: `CKernels/ggml_quants.c`).
public enum GGMLType: UInt32, CaseIterable, Sendable {
    case f32 = 0
    case f16 = 1
    case q5_0 = 6
    case q8_0 = 8
    case q4K = 12
    case q6K = 14
    case bf16 = 30

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q5_0, .q8_0: return 32
        case .q4K, .q6K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q5_0: return 22
        case .q8_0: return 34
        case .q4K: return 144
        case .q6K: return 210
        }
    }

    /// ggml's name of the type (as `gguf-py` and llama.cpp's logs print it).
    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q5_0: return "Q5_0"
        case .q8_0: return "Q8_0"
        case .q4K: return "Q4_K"
        case .q6K: return "Q6_K"
        }
    }

    /// Bytes of `count` elements (a multiple of the block size).
    public func bytes(elements count: Int) -> Int { count / blockSize * blockBytes }

    /// Encodes `values` (a multiple of the block size) into `out` (`bytes(elements:)` bytes).
    public func encode(_ values: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawBufferPointer) {
        precondition(values.count % blockSize == 0 && out.count >= bytes(elements: values.count))
        let n = Int64(values.count)
        guard let x = values.baseAddress, let o = out.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        switch self {
        case .f32: out.baseAddress!.copyMemory(from: x, byteCount: 4 * values.count)
        case .f16: for i in 0..<values.count { out.storeBytes(of: dsconvert_f32_to_f16(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .bf16: for i in 0..<values.count { out.storeBytes(of: FloatConversion.floatToBF16(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .q5_0: dsconvert_quantize_q5_0(x, o, n)
        case .q8_0: dsconvert_quantize_q8_0(x, o, n)
        case .q4K: dsconvert_quantize_q4_k(x, o, n)
        case .q6K: dsconvert_quantize_q6_k(x, o, n)
        }
    }

    /// `encode` into a new array, split into runs of whole blocks over `Parallel.threads` threads (blocks are
    /// encoded independently, so the bytes are the same at any thread count).
    public func encode(_ values: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: bytes(elements: values.count))
        let blocks = values.count / blockSize
        let runs = blocks < 4096 ? 1 : min(Parallel.threads * 4, blocks)
        values.withUnsafeBufferPointer { v in out.withUnsafeMutableBytes { o in
            let input = UnsafeBufferPointer(start: v.baseAddress, count: v.count)
            let output = o
            Parallel.forEach(runs) { run in
                let range = (blocks * run / runs)..<(blocks * (run + 1) / runs)
                encode(UnsafeBufferPointer(rebasing: input[(range.lowerBound * blockSize)..<(range.upperBound * blockSize)]),
                       into: UnsafeMutableRawBufferPointer(rebasing: output[(range.lowerBound * blockBytes)..<(range.upperBound * blockBytes)]))
            }
        } }
        return out
    }
}
