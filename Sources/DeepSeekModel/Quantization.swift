import Foundation
import Numerics
import SafeTensors

/// `quantization_config` of an FP8 block-scaled checkpoint (DeepSeek-V3 / Hugging Face convention).
public struct QuantizationConfig: Codable, Equatable, Sendable {
    public var quantMethod: String
    public var fmt: String?
    public var activationScheme: String?
    public var weightBlockSize: [Int]?

    enum CodingKeys: String, CodingKey {
        case quantMethod = "quant_method"
        case fmt
        case activationScheme = "activation_scheme"
        case weightBlockSize = "weight_block_size"
    }

    public init(format: FP8Format, block: Int) {
        quantMethod = "fp8"
        fmt = format.rawValue
        activationScheme = "dynamic"
        weightBlockSize = [block, block]
    }

    /// The element format of the FP8 weights (`fmt`, E4M3 when absent; decode refuses anything but
    /// e4m3 and e5m2, so the fallback never hides a value).
    public var format: FP8Format { fmt.flatMap(FP8Format.init(rawValue:)) ?? .e4m3 }

    /// The block edge; 128 when the config gives none (validated by `validatedBlock` at load).
    public var block: Int { weightBlockSize?.first ?? 128 }

    /// The block edge `weight_block_size` declares: [b, b] with 1 ≤ b ≤ 2^24 (the dimension limit;
    /// a larger block only repeats one block per matrix, and near `Int.max` the scale-shape formulas
    /// would overflow), 128 when absent; else `invalidBlockSize` naming `path`.
    public static func validatedBlock(_ sizes: [Int]?, path: String) throws -> Int {
        guard let sizes else { return 128 }
        let limit = DeepSeekConfig.dimensionLimit
        guard sizes.count == 2, sizes[0] == sizes[1], (1...limit).contains(sizes[0]) else {
            throw DeepSeekModelError.invalidBlockSize(path: path, value: "\(sizes)", limit: limit)
        }
        return sizes[0]
    }

    /// `validatedBlock` for a raw `quantization_config` (dequantize reads configs of any
    /// architecture): every entry must be an integer literal, or the block is refused.
    public static func validatedBlock(rawQuantizationConfig raw: JSONValue?, path: String) throws -> Int {
        guard let value = raw?["weight_block_size"], value != .null else { return 128 }
        guard case let .array(items) = value else {
            throw DeepSeekModelError.invalidBlockSize(path: path, value: "\(value)", limit: DeepSeekConfig.dimensionLimit)
        }
        let sizes = items.map { $0.uint64.flatMap { $0 <= UInt64(Int.max) ? Int($0) : nil } ?? -1 }
        return try validatedBlock(sizes, path: path)
    }

    /// Suffix of the scale companion of an FP8 weight (DeepSeek-V3 names it `weight_scale_inv`).
    public static let scaleSuffix = TensorNames.scaleSuffix

    /// Shape of the scales of a weight: [ceil(rows/b), ceil(cols/b)], per head for 3-D weights.
    public static func scaleShape(of shape: [Int], block: Int) -> [Int] {
        guard shape.count >= 2 else { return [] }
        return Array(shape.dropLast(2)) + [CheckedSize.ceilDiv(shape[shape.count - 2], block), CheckedSize.ceilDiv(shape[shape.count - 1], block)]
    }
}

/// A pattern a tensor name is tested against (`--skip`): the matcher lives with the tokenizer's.
public protocol TensorNamePattern: Sendable {
    /// The pattern as given (what a manifest records).
    var pattern: String { get }
    /// Whether the pattern matches somewhere in `name`; throws when the matcher gives up on it.
    func matches(_ name: String) throws -> Bool
}

/// Which tensors `quantize --fp8` turns into FP8 (README "FP8 weights"): every 2-D linear weight except the
/// embeddings, lm_head, the norms, the router and `e_score_correction_bias`; 3-D per-head W_UK/W_UV
/// of absorbed checkpoints only on request (engines use them in bf16).
public struct FP8Policy: Sendable {
    public var quantizeAbsorbed: Bool
    /// `--skip`: a tensor any of these finds a match in keeps its dtype (compiled once, where given).
    public var skip: [any TensorNamePattern]
    /// Nothing becomes FP8 (weights already FP8 pass through): a stage run without `--fp8`.
    public private(set) var quantizesNothing = false

    public init(quantizeAbsorbed: Bool = false, skip: [any TensorNamePattern] = []) {
        self.quantizeAbsorbed = quantizeAbsorbed
        self.skip = skip
    }

    /// The policy of a stage that quantizes nothing.
    public static var none: FP8Policy {
        var policy = FP8Policy()
        policy.quantizesNothing = true
        return policy
    }

    /// The `--skip` patterns as given (what a manifest records).
    public var skipPatterns: [String] { skip.map(\.pattern) }

    /// Throws what a `--skip` pattern's matcher throws when it gives up on `name`.
    public func shouldQuantize(name: String, shape: [Int]) throws -> Bool {
        if quantizesNothing { return false }
        for pattern in skip where try pattern.matches(name) { return false }
        switch TensorNames.parse(name) {
        case .expert?: return shape.count == 2
        case let .layer(_, weight)?:
            guard weight.isBlockQuantizable else { return false }
            switch weight {
            case .wUK, .wUV: return shape.count == 3 && quantizeAbsorbed
            default: return shape.count == 2
            }
        case .embedding?, .finalNorm?, .lmHead?, nil:
            return false
        }
    }
}

/// Tensor-parallel degrees vLLM can load an FP8 block checkpoint with: every partition of a
/// column-parallel (output) or row-parallel (input) dimension must be a whole number of blocks.
public enum FP8Partitioning {

    /// How vLLM's DeepSeek models shard each linear weight under tensor parallelism.
    public static func split(of name: String) -> TensorParallelSplit {
        switch TensorNames.parse(name) {
        case let .layer(_, weight)?: return weight.tensorParallelSplit
        case let .expert(_, _, projection)?: return projection.tensorParallelSplit
        case .embedding?, .finalNorm?, .lmHead?, nil: return .columns
        }
    }

    /// Degrees among 1, 2, 4, … 64 that every FP8 tensor allows; with `expertParallel` routed
    /// experts are whole on a device and impose nothing.
    public static func supportedDegrees(fp8Tensors: [(name: String, shape: [Int])], block: Int, expertParallel: Bool) -> [Int] {
        [1, 2, 4, 8, 16, 32, 64].filter { t in
            t == 1 || fp8Tensors.allSatisfy { tensor in
                if expertParallel, TensorNames.expertIndex(of: tensor.name) != nil { return true }
                let shape = tensor.shape
                guard shape.count >= 2 else { return true }
                let dim: Int
                switch split(of: tensor.name) {
                case .replicated: return true
                case .columns: dim = shape[shape.count - 2]
                case .rows: dim = shape[shape.count - 1]
                }
                return dim % t == 0 && (dim / t) % block == 0
            }
        }
    }
}
