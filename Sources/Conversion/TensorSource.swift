import DeepSeekModel
import Foundation
import Numerics
import SafeTensors
import ReferenceModel

/// A tensor's data as a conversion step hands it on.
public enum TensorPayload {
    /// Unchanged bytes of an input file (written with an in-kernel copy, never faulted in).
    case view(TensorView)
    /// Bytes a step computed.
    case bytes([UInt8])
    /// Bytes a step computes piece by piece as the writer takes them, so a large computed tensor is
    /// never whole in memory.
    case pieces(TensorPieces)

    /// The whole tensor's bytes (for steps that need all of it at once).
    func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        switch self {
        case let .view(view): return try body(view.bytes)
        case let .bytes(bytes): return try bytes.withUnsafeBytes(body)
        case let .pieces(pieces): return try pieces.materialize().withUnsafeBytes(body)
        }
    }
}

/// A computed tensor's bytes in consecutive pieces of at most `pieceBytes`.
public struct TensorPieces {
    public let count: Int
    public let pieceBytes: Int
    /// Fills `buffer` with the tensor's bytes from `offset` on (`offset` a multiple of `pieceBytes`).
    public let produce: (_ offset: Int, _ buffer: UnsafeMutableRawBufferPointer) throws -> Void

    public init(count: Int, pieceBytes: Int, produce: @escaping (Int, UnsafeMutableRawBufferPointer) throws -> Void) {
        self.count = count
        self.pieceBytes = max(1, pieceBytes)
        self.produce = produce
    }

    func materialize() throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { raw in
            for offset in stride(from: 0, to: count, by: pieceBytes) {
                try produce(offset, UnsafeMutableRawBufferPointer(rebasing: raw[offset..<min(count, offset + pieceBytes)]))
            }
        }
        return out
    }
}

/// A checkpoint as a stream of tensors: the input on disk, or a conversion step over another source.
///
/// Every stage is a step over a source and one writer at the end, so `dsconvert convert` chains the
/// same steps in one pass and produces the same bytes as the stages run one after another.
public protocol TensorSource: AnyObject {
    /// The input checkpoint directory (side files and messages).
    var directory: URL { get }
    /// `config.json` of this step's output: its JSON and its typed view.
    var document: ConfigDocument { get }
    /// The manifest's stages up to and including this step.
    var stages: [ConversionManifest.Stage] { get }
    /// The output's tensors in production order (which decides how they are split into shards).
    var planned: [PlannedTensor] { get }
    func info(_ name: String) -> PlannedTensor?
    /// The data of tensor `name`; a source may compute it on demand.
    func payload(_ name: String) throws -> TensorPayload
    /// Tensor `name` as fp32 (a default reads `payload`; a step that holds more precise values than
    /// it writes, as dequantization does, gives those).
    func floats(_ name: String) throws -> [Float]
    /// Lets go of anything held for `name` after it has been written.
    func release(_ name: String)
    /// The input file a tensor comes from, for error messages.
    func path(of name: String) -> String
}

extension TensorSource {
    /// The model as this step's output declares it.
    public var config: DeepSeekConfig { document.model }

    /// Tensor `name` as fp32: widened, or for an FP8 block weight the exact f32 product of each code
    /// and its block's scale (the companion `_scale_inv` from this same source).
    public func floats(_ name: String) throws -> [Float] {
        guard let info = info(name) else { throw DeepSeekModelError.missingTensor(file: directory.path, tensor: name, expectedShape: []) }
        if let format = FP8Format(dtype: info.dtype) { return try dequantized(name, shape: info.shape, format: format) }
        let payload = try payload(name)
        if case let .view(view) = payload { return try view.floats() }
        do {
            let count = info.shape.reduce(1, *)
            var out = [Float](repeating: 0, count: count)
            let widened = try payload.withBytes { raw in out.withUnsafeMutableBufferPointer { TensorView.widen(raw, dtype: info.dtype, count: count, into: $0) } }
            guard widened else {
                throw SafeTensorsError.invalidTensorEntry(file: path(of: name), tensor: name, reason: "dtype \(info.dtype.rawValue) cannot be read as real values here")
            }
            return out
        }
    }

    private func dequantized(_ name: String, shape: [Int], format: FP8Format) throws -> [Float] {
        let scaleName = name + QuantizationConfig.scaleSuffix
        guard let block = config.quantization?.block, shape.count >= 2 else {
            throw DeepSeekModelError.fp8WithoutQuantizationConfig(file: path(of: name), tensor: name)
        }
        guard info(scaleName) != nil else {
            throw DeepSeekModelError.missingScale(file: path(of: name), tensor: name, expectedShape: QuantizationConfig.scaleShape(of: shape, block: block))
        }
        let scales = try floats(scaleName)
        release(scaleName)
        func run(_ codes: UnsafeRawBufferPointer) throws -> [Float] {
            try FP8BlockWeights.dequantize(codes: codes, shape: shape, format: format, scales: scales, block: block,
                                           weight: name, codesFile: path(of: name), scalesFile: path(of: scaleName))
        }
        return try payload(name).withBytes(run)
    }

    /// Reads tensor `name` from this source into `writer` (an in-kernel copy for unchanged bytes),
    /// then lets go of it.
    func write(_ name: String, to writer: CheckpointWriter) throws {
        switch try payload(name) {
        case let .view(view): try writer.write(name, view: view)
        case let .bytes(bytes): try writer.write(name, bytes: bytes)
        case let .pieces(pieces): try writer.write(name, count: pieces.count, pieceBytes: pieces.pieceBytes, produce: pieces.produce)
        }
        release(name)
    }

    /// The stages this run adds to those its input already carried.
    func newStages(after input: [ConversionManifest.Stage]) -> [ConversionManifest.Stage] { Array(stages.dropFirst(input.count)) }
}

/// A checkpoint directory on disk, validated against its config.
public final class CheckpointSource: TensorSource {
    public let checkpoint: Checkpoint
    public let directory: URL
    public let document: ConfigDocument
    public let stages: [ConversionManifest.Stage]
    public let planned: [PlannedTensor]

    /// Opens `directory` and runs the checker (shapes, dtypes, names against config.json).
    public init(directory: URL) throws {
        self.directory = directory
        let checkpoint = try Checkpoint(directory: directory)
        document = try ConfigDocument.load(directory: directory).matching(checkpoint)
        self.checkpoint = checkpoint
        if let problem = CheckpointChecker.check(config: document.model, checkpoint: checkpoint).problems.first { throw problem }
        stages = try ConversionManifest.load(directory: directory)?.stages ?? []
        planned = checkpoint.tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
    }

    public func info(_ name: String) -> PlannedTensor? {
        checkpoint.info(name).map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
    }

    public func payload(_ name: String) throws -> TensorPayload { .view(try checkpoint.view(name)) }
    public func release(_ name: String) { checkpoint.release(name) }
    public func path(of name: String) -> String { checkpoint.path(of: name) }
}

/// A source's tensors as fp32 weights for a forward pass (calibration over a step's output).
final class SourceWeights: WeightProvider {
    let source: TensorSource
    var label: String { source.directory.path }

    init(_ source: TensorSource) { self.source = source }

    func floats(_ name: String, shape: [Int]) throws -> [Float] {
        guard let info = source.info(name) else {
            throw DeepSeekModelError.missingTensor(file: source.directory.path, tensor: name, expectedShape: shape)
        }
        guard info.shape == shape else {
            throw ReferenceModelError.wrongShape(file: source.path(of: name), tensor: name, expected: shape, actual: info.shape)
        }
        return try source.floats(name)
    }

    func release(_ name: String) { source.release(name) }
}

extension ConversionOutput {
    /// Writes every tensor of `source` into one checkpoint at `output`, with the source's config,
    /// the input's side files and a manifest of all its stages.
    static func write(_ source: TensorSource, to output: URL, inputStages: [ConversionManifest.Stage], force: Bool,
                      shardSize: ShardSize, resume: Bool, label: String, progress: ((String) -> Void)?) throws -> CheckpointLayout {
        let layout = CheckpointLayout(tensors: source.planned, maxShardSize: shardSize.resolve(input: source.directory, tensors: source.planned))
        let out = try ConversionOutput(input: source.directory, output: output, force: force, layout: layout,
                                       stages: source.stages, newStages: source.newStages(after: inputStages), resume: resume)
        // Each shard front to back, so the writer hashes it as it is written instead of reading it
        // back; shards interleaved, so their hashes run side by side.
        let names = WriteSchedule.interleaved(layout.shards.map(\.tensors)) { $0.byteCount }.map(\.name)
        for (i, name) in names.enumerated() {
            if !out.writer.isWritten(name) { try source.write(name, to: out.writer) }
            if i % 32 == 0 || i == names.count - 1 { progress?("\(label): \(i + 1)/\(names.count) tensors") }
        }
        try out.copySideFiles()
        try out.writeFile("config.json", data: source.document.data)
        try out.commit()
        return layout
    }
}
