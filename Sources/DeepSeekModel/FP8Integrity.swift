import Numerics
import SafeTensors

/// The values of an FP8 block checkpoint that no quantizer writes and no dequantization survives:
/// NaN or infinite codes, and block scales that are zero, negative, NaN or infinite (w = q · scale
/// would pass them on as NaN, Inf or silent zeros). `--dequantize`, the forward pass and `inspect`
/// refuse them, naming the file and tensor.
public enum FP8Integrity {
    /// The index of the first code that is not a finite number: E4M3FN's NaN (0x7F/0xFF), E5M2's
    /// infinities and NaNs (exponent 31), or nil.
    public static func firstNonFiniteCode(_ codes: UnsafeRawBufferPointer, format: FP8Format) -> Int? {
        // Magnitudes at or above the first non-finite pattern; checked per chunk with a max
        // reduction (which vectorizes), then located in the one chunk that has one.
        let threshold: UInt8 = format == .e4m3 ? 0x7F : 0x7C
        let bytes = codes.bindMemory(to: UInt8.self)
        let chunk = 1 << 14
        for start in stride(from: 0, to: bytes.count, by: chunk) {
            let end = min(bytes.count, start + chunk)
            var largest: UInt8 = 0
            for i in start..<end { largest = max(largest, bytes[i] & 0x7F) }
            if largest >= threshold { return (start..<end).first { bytes[$0] & 0x7F >= threshold } }
        }
        return nil
    }

    /// The index of the first scale that is not positive and finite, or nil.
    public static func firstInvalidScale(_ scales: UnsafeBufferPointer<Float>) -> Int? {
        scales.firstIndex { !($0 > 0 && $0.isFinite) }
    }

    /// Checks an FP8 weight's codes and its scales (already read as f32), throwing `nonFiniteCode`
    /// or `invalidScale` naming their files.
    public static func check(codes: UnsafeRawBufferPointer, format: FP8Format, codesFile: String, weight: String,
                             scales: UnsafeBufferPointer<Float>, scalesFile: String) throws {
        if let i = firstInvalidScale(scales) {
            throw DeepSeekModelError.invalidScale(file: scalesFile, tensor: weight + QuantizationConfig.scaleSuffix, index: i, value: scales[i])
        }
        if let i = firstNonFiniteCode(codes, format: format) {
            throw DeepSeekModelError.nonFiniteCode(file: codesFile, tensor: weight, index: i, code: codes[i])
        }
    }

    /// Every FP8 weight of `checkpoint` whose scale tensor is present as F32 (the checker reports
    /// missing or misshapen ones): the first problem of each, in checkpoint order.
    public static func problems(in checkpoint: Checkpoint) -> [DeepSeekModelError] {
        var problems: [DeepSeekModelError] = []
        for info in checkpoint.tensors {
            guard let format = FP8Format(dtype: info.dtype) else { continue }
            let scaleName = info.name + QuantizationConfig.scaleSuffix
            guard checkpoint.info(scaleName)?.dtype == .f32 else { continue }
            do {
                let scales = try checkpoint.view(scaleName).floats()
                let codes = try checkpoint.view(info.name)
                try scales.withUnsafeBufferPointer { sp in
                    try check(codes: codes.bytes, format: format, codesFile: checkpoint.path(of: info.name), weight: info.name,
                              scales: sp, scalesFile: checkpoint.path(of: scaleName))
                }
            } catch let problem as DeepSeekModelError {
                problems.append(problem)
            } catch {
                problems.append(.unreadableTensor(file: checkpoint.path(of: info.name), tensor: info.name, reason: "\(error)"))
            }
            checkpoint.release(info.name)
            checkpoint.release(scaleName)
        }
        return problems
    }
}

/// FP8 block weights back to real values (README "FP8 weights"): w = code · scale of its block,
/// the f32 product, as DeepSeek's `weight_dequant` computes it before any rounding.
public enum FP8BlockWeights {
    /// The f32 values of `codes` ([…, rows, cols], one matrix after another) with their block scales,
    /// after `FP8Integrity.check` (no NaN codes, finite positive scales); errors name the files.
    public static func dequantize(codes: UnsafeRawBufferPointer, shape: [Int], format: FP8Format, scales: [Float], block: Int,
                                  weight: String, codesFile: String, scalesFile: String) throws -> [Float] {
        let count = shape.reduce(1, *)
        var out = [Float](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }  // every element is written below
        try out.withUnsafeMutableBufferPointer {
            try dequantize(codes: codes, shape: shape, format: format, scales: scales, block: block, weight: weight,
                           codesFile: codesFile, scalesFile: scalesFile, into: $0)
        }
        return out
    }

    /// The same values written into `destination` (at least the shape's element count): the forward
    /// pass dequantizes into buffers it reuses, so no weight costs fresh pages. With `streaming`, a
    /// large weight is written with streaming stores (`FP8BlockQuantizer.dequantize`): for one widened
    /// for the product that reads it next.
    public static func dequantize(codes: UnsafeRawBufferPointer, shape: [Int], format: FP8Format, scales: [Float], block: Int,
                                  weight: String, codesFile: String, scalesFile: String, into destination: UnsafeMutableBufferPointer<Float>,
                                  streaming: Bool = false) throws {
        let rows = shape[shape.count - 2], cols = shape[shape.count - 1]
        let matrices = shape.dropLast(2).reduce(1, *)
        let quantizer = FP8BlockQuantizer(format: format, block: block)
        let perMatrix = quantizer.scaleShape(rows: rows, cols: cols).reduce(1, *)
        let count = matrices * rows * cols
        // The kernel reads raw pointers: the sizes must be what the shape and block imply.
        guard shape.count >= 2, codes.count == count, destination.count >= count else {
            throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: weight, reason: "\(codes.count) bytes of codes for shape \(shape)")
        }
        guard scales.count == matrices * perMatrix else {
            throw DeepSeekModelError.wrongScale(file: scalesFile, tensor: weight + QuantizationConfig.scaleSuffix,
                                                expected: QuantizationConfig.scaleShape(of: shape, block: block), actual: [scales.count], dtype: "F32")
        }
        // The kernel flags NaN/Inf codes and overflowing products itself; the full check runs only
        // then, to name the code or scale (a separate scan of every code would read them twice).
        let bytes = codes.bindMemory(to: UInt8.self)
        let finite = count == 0 || scales.withUnsafeBufferPointer { sp in
            (0..<matrices).allSatisfy { m in
                quantizer.dequantize(codes: bytes.baseAddress! + m * rows * cols, scales: sp.baseAddress! + m * perMatrix,
                                     rows: rows, cols: cols, into: destination.baseAddress! + m * rows * cols,
                                     streaming: streaming && count >= FloatConversion.streamingMinimumCount)
            }
        }
        try scales.withUnsafeBufferPointer { sp in
            if let i = FP8Integrity.firstInvalidScale(sp) {
                throw DeepSeekModelError.invalidScale(file: scalesFile, tensor: weight + QuantizationConfig.scaleSuffix, index: i, value: sp[i])
            }
            if !finite {
                try FP8Integrity.check(codes: codes, format: format, codesFile: codesFile, weight: weight, scales: sp, scalesFile: scalesFile)
                throw DeepSeekModelError.unreadableTensor(file: codesFile, tensor: weight, reason: "code x scale overflows f32")
            }
        }
    }
}
