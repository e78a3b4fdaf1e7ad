import DeepSeekModel
import Foundation
import Numerics
import SafeTensors

/// Errors of the reference forward pass: its weights, its tokens, its outputs.
public enum ReferenceModelError: LocalizedError, Equatable, Sendable {
    case wrongShape(file: String, tensor: String, expected: [Int], actual: [Int])
    case unreadableTensor(file: String, tensor: String, reason: String)
    case invalidTokens(path: String, reason: String)
    /// A key twice in one object of a tokens file.
    case duplicateTokensKey(path: String, key: String)
    /// A token id the model's vocabulary does not have.
    case tokenOutOfVocabulary(path: String, id: Int, vocabSize: Int)
    /// Sequences longer than the model's `max_position_embeddings`.
    case sequenceTooLong(path: String, length: Int, maxPositions: Int)
    /// Tokens whose forward pass would need more memory than `TokenFile.memoryBudget`.
    case tokensTooLarge(path: String, what: String, bytes: String, budget: Int)
    case nonFiniteOutput(model: String, what: String)
    /// `--mtp` asked of a model without a multi-token-prediction layer: the model's fault, not the usage's.
    case noMTPLayer(model: String)
    /// A device directory of a sharded output whose weight file is not the one `placement.json`
    /// records (`placement` is that file's path, `file` the device's).
    case deviceNotAsPlaced(placement: String, file: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .wrongShape(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), the forward pass needs \(expected)"
        case let .unreadableTensor(file, tensor, reason):
            return "\(file): tensor '\(tensor)': \(reason)"
        case let .invalidTokens(path, reason):
            return "\(path): invalid tokens: \(reason)"
        case let .duplicateTokensKey(path, key):
            return "\(path): invalid tokens: duplicate key '\(key)'"
        case let .tokenOutOfVocabulary(path, id, vocabSize):
            return "\(path): token id \(id) is outside the vocabulary 0..<\(vocabSize)"
        case let .sequenceTooLong(path, length, maxPositions):
            return "\(path): sequences of \(length) tokens exceed max_position_embeddings \(maxPositions)"
        case let .tokensTooLarge(path, what, bytes, budget):
            return "\(path): \(what) would take \(bytes) bytes, over the forward pass's budget of \(budget) bytes"
        case let .nonFiniteOutput(model, what):
            return "\(model): the forward pass produced NaN or Inf in \(what)"
        case let .noMTPLayer(model):
            return "\(model): no MTP layer to run for --mtp (num_nextn_predict_layers is 0 or absent, or its weights are not in the checkpoint)"
        case let .deviceNotAsPlaced(placement, file, reason):
            return "\(file): not the file \(placement) records (\(reason)): device directories of different shard runs?"
        }
    }
}

/// Where the forward pass gets its weights, as fp32.
///
/// Each conversion stage's output gets its own provider (FP8 dequantizes per block, a sharded
/// output gathers experts from their devices); the forward pass only sees fp32 matrices.
///
/// Concurrency: the forward pass runs routed experts on several threads at once, so `floats(_:shape:into:)`,
/// `stored`, `release` and `retire` must be safe to call concurrently for different names (every
/// provider here is immutable after creation or guards its state with a `Mutex`).
public protocol WeightProvider: AnyObject {
    /// The weight `name` as fp32, row-major, checked to have `shape`.
    func floats(_ name: String, shape: [Int]) throws -> [Float]
    /// Lets go of any memory held for `name` after its last use.
    func release(_ name: String)
    /// A label for messages (the checkpoint directory).
    var label: String { get }
    /// Rows `range` of the 2-D weight `name` (checked to have `shape`) as fp32: the embedding rows a
    /// batch looks up and `lm_head` in vocabulary chunks, so a vocabulary-sized matrix (V3: 129,280 x
    /// 7,168, 3.7 GB in fp32) is never widened whole.
    func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float]
    /// The weight `name` (checked to have `shape`) as fp32 written into `destination`, which holds
    /// at least its element count: the forward pass widens into buffers it reuses.
    func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws
    /// Rows `range` of the 2-D weight `name` written into `destination` (at least range.count x shape[1]).
    func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws
    /// The 2-D weight `name` (checked to have `shape`) as stored, for products that convert it a few
    /// rows at a time inside the product (`StoredWeight.product`); nil when the provider has it only
    /// as fp32 (the caller widens it whole).
    /// Valid until `release(name)`.
    func stored(_ name: String, shape: [Int]) throws -> StoredWeight?
    /// Starts reading `names` (in the order they will be used) into memory ahead of their use.
    func prefetch(_ names: [String])
    /// Starts reading rows `rows` (best ascending) of the 2-D weight `name` (of `shape`) at once,
    /// without waiting: a lookup's scattered rows, which read one by one would each wait for the disk.
    func willNeedRows(_ name: String, shape: [Int], rows: [Int])
    /// The forward pass is done with `names` (a layer's tensors, used or not): nothing more of them
    /// needs reading ahead.
    func retire(_ names: [String])
    /// Stops reading ahead and returns what the prefetch reads did.
    func prefetchTotals() -> WeightPrefetcher.Totals
}

extension WeightProvider {
    /// Nothing to read ahead for weights in memory.
    public func prefetch(_ names: [String]) {}
    /// Nothing to request for weights in memory.
    public func willNeedRows(_ name: String, shape: [Int], rows: [Int]) {}
    public func retire(_ names: [String]) {}
    public func stored(_ name: String, shape: [Int]) throws -> StoredWeight? { nil }
    public func prefetchTotals() -> WeightPrefetcher.Totals { .init() }

    /// The whole matrix, then the rows: for providers whose weights are in memory anyway.
    public func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] {
        try wholeRows(name, shape: shape, range: range)
    }

    /// Copies the array the provider returns: for providers whose weights are in memory anyway.
    public func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws {
        let values = try floats(name, shape: shape)
        precondition(destination.count >= values.count, "destination smaller than \(name)")
        _ = destination.initialize(from: values)
    }

    public func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let values = try rows(name, shape: shape, range: range)
        precondition(destination.count >= values.count, "destination smaller than rows of \(name)")
        _ = destination.initialize(from: values)
    }

    /// Rows `range` cut from the whole matrix.
    func wholeRows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] {
        let all = try floats(name, shape: shape)
        return Array(all[(range.lowerBound * shape[1])..<(range.upperBound * shape[1])])
    }
}

/// Weights read from a checkpoint through its memory mapping: bf16/f16/f32 widened, FP8 block
/// weights dequantized with their `_scale_inv` (w = q · scale per block, in f32).
public final class CheckpointWeights: WeightProvider {
    public let checkpoint: Checkpoint
    public let fp8Block: Int?
    public var label: String { checkpoint.directory.path }
    private let prefetcher = WeightPrefetcher()

    public func prefetch(_ names: [String]) { prefetcher.enqueue(names, in: checkpoint) }
    public func retire(_ names: [String]) { prefetcher.retire(names) }

    /// Each run of consecutive rows advised as one range (`Checkpoint.willNeed`). Advice only: a
    /// tensor the checkpoint lacks, of another shape, of a sub-byte dtype, or a row outside it gets
    /// none, and the read that follows reports the problem.
    public func willNeedRows(_ name: String, shape: [Int], rows: [Int]) {
        guard shape.count == 2, let info = checkpoint.info(name), info.shape == shape, let size = info.dtype.byteSize,
              let ranges = Self.rowByteRanges(rows, rowCount: shape[0], rowBytes: shape[1] * size) else { return }
        for range in ranges { checkpoint.willNeed(name, bytes: range) }
    }

    /// The byte ranges, from the tensor's first byte, of `rows` of a row-major tensor of `rowCount`
    /// rows of `rowBytes`: one range per run of consecutive rows, so a lookup of neighbouring ids is
    /// one request (rows out of order only make more ranges). Nil when a row is outside the tensor
    /// (nothing is advised for a bad id; the lookup itself then reports it).
    static func rowByteRanges(_ rows: [Int], rowCount: Int, rowBytes: Int) -> [Range<Int>]? {
        guard rows.allSatisfy((0..<rowCount).contains) else { return nil }
        var ranges: [Range<Int>] = []
        var i = 0
        while i < rows.count {
            var j = i + 1
            while j < rows.count, rows[j] == rows[j - 1] + 1 { j += 1 }
            ranges.append((rows[i] * rowBytes)..<((rows[j - 1] + 1) * rowBytes))
            i = j
        }
        return ranges
    }

    public func prefetchTotals() -> WeightPrefetcher.Totals { prefetcher.drain() }

    public init(checkpoint: Checkpoint, fp8Block: Int? = nil) {
        self.checkpoint = checkpoint
        self.fp8Block = fp8Block
    }

    public func floats(_ name: String, shape: [Int]) throws -> [Float] {
        let count = shape.reduce(1, *)
        var out = [Float](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }  // written whole below
        try out.withUnsafeMutableBufferPointer { try floats(name, shape: shape, into: $0) }
        return out
    }

    public func floats(_ name: String, shape: [Int], into destination: UnsafeMutableBufferPointer<Float>) throws {
        let info = try checkedInfo(name, shape: shape)
        precondition(destination.count >= info.elementCount, "destination smaller than \(name)")
        try readable(name) {
            let view = try checkpoint.view(name)
            if let format = FP8Format(dtype: view.dtype) {
                let (block, scales, scaleName) = try fp8Scales(of: view)
                return try FP8BlockWeights.dequantize(codes: view.bytes, shape: view.shape, format: format, scales: scales, block: block, weight: name,
                                                      codesFile: checkpoint.path(of: name), scalesFile: checkpoint.path(of: scaleName), into: destination,
                                                      streaming: true)
            }
            guard TensorView.widen(view.bytes, dtype: view.dtype, count: info.elementCount, into: destination) else {
                throw SafeTensorsError.invalidTensorEntry(file: view.owner.path, tensor: name, reason: "dtype \(view.dtype.rawValue) cannot be read as real values here")
            }
        }
    }

    /// The entry of `name`, checked to exist with `shape`.
    private func checkedInfo(_ name: String, shape: [Int]) throws -> TensorInfo {
        guard let info = checkpoint.info(name) else {
            throw DeepSeekModelError.missingTensor(file: checkpoint.directory.path, tensor: name, expectedShape: shape)
        }
        guard info.shape == shape else {
            throw ReferenceModelError.wrongShape(file: checkpoint.path(of: name), tensor: name, expected: shape, actual: info.shape)
        }
        return info
    }

    /// Runs `body`, a read of `name`, reporting the reader's errors as the forward pass's, naming the file.
    private func readable<T>(_ name: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as SafeTensorsError {
            throw ReferenceModelError.unreadableTensor(file: checkpoint.path(of: name), tensor: name, reason: error.errorDescription ?? "\(error)")
        }
    }

    /// An FP8 weight's block size and scales, after the checks that it has both.
    private func fp8Scales(of view: TensorView) throws -> (block: Int, scales: [Float], scaleName: String) {
        let name = view.name, scaleName = name + QuantizationConfig.scaleSuffix
        guard let block = fp8Block, view.shape.count >= 2 else {
            throw DeepSeekModelError.fp8WithoutQuantizationConfig(file: checkpoint.path(of: name), tensor: name)
        }
        guard checkpoint.contains(scaleName) else {
            throw DeepSeekModelError.missingScale(file: checkpoint.path(of: name), tensor: name, expectedShape: QuantizationConfig.scaleShape(of: view.shape, block: block))
        }
        return (block, try checkpoint.view(scaleName).floats(), scaleName)
    }

    public func rows(_ name: String, shape: [Int], range: Range<Int>) throws -> [Float] {
        let count = range.count * (shape.count == 2 ? shape[1] : 0)
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBufferPointer { try rows(name, shape: shape, range: range, into: $0) }
        return out
    }

    public func stored(_ name: String, shape: [Int]) throws -> StoredWeight? {
        _ = try checkedInfo(name, shape: shape)
        guard shape.count == 2 else { return nil }
        return try readable(name) {
            let view = try checkpoint.view(name)
            guard let format = FP8Format(dtype: view.dtype) else { return StoredWeight.floating(view) }
            let (block, scales, scaleName) = try fp8Scales(of: view)
            return try StoredWeight.fp8(view, format: format, scales: scales, block: block,
                                        codesFile: checkpoint.path(of: name), scalesFile: checkpoint.path(of: scaleName))
        }
    }

    /// Only the rows' bytes are touched. An FP8 weight read in whole scale blocks of rows (the range starts
    /// on a block and ends on one, or at the last row) is dequantized for those rows alone (the GGUF export
    /// reads V3's 7168×18432 dense projections so); any other range dequantizes the whole weight, since a
    /// block is dequantized whole.
    public func rows(_ name: String, shape: [Int], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        if let info = checkpoint.info(name), FP8Format(dtype: info.dtype) != nil, let block = fp8Block, shape.count == 2, info.shape == shape,
           range.lowerBound % block == 0, range.upperBound % block == 0 || range.upperBound == shape[0],
           let stored = try stored(name, shape: shape) {
            precondition(destination.count >= range.count * shape[1], "destination smaller than rows of \(name)")
            try readable(name) { try stored.widen(range, into: destination.baseAddress!) }
            let view = try checkpoint.view(name)
            if let base = view.owner.base, let start = view.bytes.baseAddress {
                let from = start - base + range.lowerBound * shape[1]
                view.owner.release(from..<(from + range.count * shape[1]))
            }
            return
        }
        guard let info = checkpoint.info(name), info.shape == shape, shape.count == 2, let size = info.dtype.byteSize, info.dtype.isFloatingPoint else {
            let values = try wholeRows(name, shape: shape, range: range)
            _ = destination.initialize(from: values)
            return
        }
        precondition(destination.count >= range.count * shape[1], "destination smaller than rows of \(name)")
        try readable(name) {
            let view = try checkpoint.view(name)
            let rowBytes = shape[1] * size
            let bytes = UnsafeRawBufferPointer(rebasing: view.bytes[(range.lowerBound * rowBytes)..<(range.upperBound * rowBytes)])
            _ = TensorView.widen(bytes, dtype: info.dtype, count: range.count * shape[1], into: destination)
            // The rows' pages leave the resident set now: lm_head is read in chunks, and keeping the
            // chunks mapped until the end held its whole 1.85 GB (V3) in RSS.
            if let start = bytes.baseAddress, let base = view.owner.base, !bytes.isEmpty {
                view.owner.release((start - base)..<(start - base + bytes.count))
            }
        }
    }

    public func release(_ name: String) {
        prefetcher.retire([name, name + QuantizationConfig.scaleSuffix])
        checkpoint.release(name)
        checkpoint.release(name + QuantizationConfig.scaleSuffix)
    }
}
