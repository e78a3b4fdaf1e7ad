import Dispatch

/// Block-scaled FP8 quantization in the DeepSeek-V3 / Hugging Face convention read by vLLM and SGLang.
///
/// A matrix [rows, cols] is cut into block×block tiles (the last ones partial); each tile gets
/// scale = amax/max_finite over its real elements (f32 division), and each element becomes
/// fp8(x / scale) computed in f32 — DeepSeek's `weight_quant` kernel, so the bytes match torch's cast.
/// The stored companion `<name>_scale_inv` holds these scales (the dequantization multipliers,
/// despite the name): w ≈ q · scale. An all-zero tile gets scale 1 (0/0 would be NaN).
public struct FP8BlockQuantizer: Sendable {
    public let format: FP8Format
    public let block: Int

    public init(format: FP8Format = .e4m3, block: Int = 128) {
        self.format = format
        self.block = block
    }

    /// [ceil(rows/block), ceil(cols/block)]
    public func scaleShape(rows: Int, cols: Int) -> [Int] { [(rows + block - 1) / block, (cols + block - 1) / block] }

    /// Quantizes a row-major matrix of finite values (callers check: NaN would poison the block's
    /// amax); returns the FP8 codes and the row-major scales.
    public func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int) -> (codes: [UInt8], scales: [Float]) {
        let shape = scaleShape(rows: rows, cols: cols)
        var codes = [UInt8](repeating: 0, count: rows * cols)
        var scales = [Float](repeating: 1, count: shape[0] * shape[1])
        let input = SharedPointer(UnsafeMutablePointer(mutating: x))
        codes.withUnsafeMutableBufferPointer { cp in scales.withUnsafeMutableBufferPointer { sp in
            let out = SharedPointer(cp.baseAddress!), sc = SharedPointer(sp.baseAddress!)
            // Tasks own disjoint block rows: results do not depend on the thread count.
            Parallel.forEach(shape[0]) { br in
                for bc in 0..<shape[1] {
                    let r0 = br * block, r1 = min(rows, r0 + block), c0 = bc * block, c1 = min(cols, c0 + block)
                    // amax as the largest magnitude bit pattern: exact for finite inputs, and it vectorizes.
                    var largest: UInt32 = 0
                    for r in r0..<r1 {
                        let row = UnsafeRawPointer(input.pointer + r * cols).assumingMemoryBound(to: UInt32.self)
                        for c in c0..<c1 { largest = max(largest, row[c] & 0x7FFF_FFFF) }
                    }
                    let amax = Float(bitPattern: largest)
                    let scale = amax == 0 ? 1 : amax / format.maxFinite
                    sc.pointer[br * shape[1] + bc] = scale
                    for r in r0..<r1 {
                        let row = input.pointer + r * cols, dst = out.pointer + r * cols
                        switch format {
                        case .e4m3: for c in c0..<c1 { dst[c] = FP8Codec.encodeE4M3(row[c] / scale) }
                        case .e5m2: for c in c0..<c1 { dst[c] = FP8Codec.encodeE5M2(row[c] / scale) }
                        }
                    }
                }
            }
        } }
        return (codes, scales)
    }

    /// w = q · scale per block, in f32.
    public func dequantize(codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        let table = FP8Codec.decodeTable(format)
        let perRow = (cols + block - 1) / block
        for r in 0..<rows {
            let scaleRow = scales + (r / block) * perRow
            for c in 0..<cols { out[r * cols + c] = table[Int(codes[r * cols + c])] * scaleRow[c / block] }
        }
    }
}

