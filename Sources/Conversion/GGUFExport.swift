import DeepSeekModel
import Foundation
import GGUF
import ReferenceModel
import SafeTensors

/// `dsconvert export --gguf`: one streaming pass from a checkpoint (bf16 or FP8, which is dequantized
/// block by block as it is read) to llama.cpp's GGUF for its `deepseek2` architecture.
///
/// Tensors as llama.cpp's own converter names and shapes them (kv_b_proj split per head into attn_k_b,
/// transposed, and attn_v_b; each layer's routed experts stacked into one 3-D tensor per projection; the
/// MTP layers left out), each encoded by `GGUFTypeRule`'s choice for the file type; metadata as its
/// converter writes it; the vocabulary from the checkpoint's tokenizer.json. Memory holds one tensor
/// (one expert of a stacked tensor, a chunk of rows of a large matrix) at a time.
public enum GGUFExport {
    public struct Options: Sendable {
        public var type: GGUFFileType
        /// llama.cpp's name for the pre-tokenizer (its converter finds it by hashing the tokenizer's output).
        public var tokenizerPre: String?
        /// Where tokenizer.json (and tokenizer_config.json) are; default: the checkpoint directory.
        public var tokenizer: URL?
        /// `general.name` (default: the checkpoint directory's name) and `general.size_label` (default: none).
        public var name: String?
        public var sizeLabel: String?
        /// Values per chunk of rows when a large matrix is read (memory holds one chunk, not the tensor).
        public var chunkElements = 16 << 20
        /// Split the output as llama.cpp's gguf-split --split-max-size does (nil: one file).
        public var splitMaxSize: Int?

        public init(type: GGUFFileType, tokenizerPre: String? = nil, tokenizer: URL? = nil, name: String? = nil, sizeLabel: String? = nil) {
            self.type = type
            self.tokenizerPre = tokenizerPre
            self.tokenizer = tokenizer
            self.name = name
            self.sizeLabel = sizeLabel
        }
    }

    public struct Summary: Sendable {
        public let tensors: Int
        public let bytes: Int
        public let types: [String: Int]
        /// The files written (one, or gguf-split's `-0000i-of-0000N.gguf` names).
        public let files: [String]
    }

    /// Writes the GGUF file(s) and `dsconvert.json` into the directory `output`, through the checkpoint
    /// writer: written in order with direct I/O and hashed as they go, committed by renaming the whole
    /// directory, and with `resume` a file an interrupted run finished is kept (verified by its SHA-256).
    public static func run(input: URL, output: URL, options: Options, force: Bool, resume: Bool = false,
                           progress: ((String) -> Void)? = nil) throws -> Summary {
        let source = try CheckpointSource(directory: input)
        let config = source.config
        let path = input.path
        switch config.attentionForm {
        case .mla, .split: break
        case .fold:
            throw ConversionError.unsupportedInput(path: path, reason: "export --gguf reads the published or the absorbed split form; llama.cpp has no tensor for absorb --mode fold's products (attention is \(config.attentionForm.rawValue))")
        }
        guard config.placement == nil else { throw ConversionError.unsupportedInput(path: path, reason: "export --gguf reads a checkpoint before shard") }
        if let reason = GGUFNames.invalidAbsorption(config) {
            throw ConversionError.unsupportedInput(path: input.appendingPathComponent("config.json").path, reason: reason)
        }
        let planned = try GGUFNames.tensors(config).map { t -> GGUFPlannedTensor in
            do {
                return GGUFPlannedTensor(name: t.name, shape: t.shape, type: try GGUFTypeRule.type(t.name, shape: t.shape, fileType: options.type, config: config), recipe: t.recipe)
            } catch let e as GGUFTypeRule.Unsupported {
                throw ConversionError.unsupportedInput(path: path, reason: "\(t.name): \(e.reason)")
            }
        }
        let name = options.name ?? input.lastPathComponent
        let metadata = self.metadata(config: config, fileType: options.type, name: name,
                                     sizeLabel: options.sizeLabel, vocabulary: try vocabulary(source: source, options: options))
        let files = try GGUFSplit.files(planned, metadata: metadata, base: fileBase(name: name, type: options.type),
                                        maxBytes: options.splitMaxSize, output: output)
        let plans = files.map(\.plan)
        let out = try ConversionOutput(input: input, output: output, force: force, layout: CheckpointLayout(files: plans),
                                       stage: stage(options, input: input), resume: resume, otherInputs: options.tokenizer.map { [$0] } ?? [])
        let weights = CheckpointWeights(checkpoint: source.checkpoint, fp8Block: config.quantization?.block)
        var done = 0
        for file in files {
            for (tensor, info) in zip(file.tensors, file.infos) {
                done += 1
                guard !out.writer.isWritten(tensor.name) else { continue }
                progress?("export: \(done)/\(planned.count) tensors (\(tensor.name), \(tensor.type.name))")
                try out.writer.write(tensor.name, count: GGUFEncoder.padded(info.byteCount)) { append in
                    let bytes = try write(tensor, from: source, weights: weights, config: config, chunkElements: options.chunkElements, to: append)
                    precondition(bytes == info.byteCount, "\(tensor.name): encoded \(bytes) bytes, the layout has \(info.byteCount)")
                    let padding = [UInt8](repeating: 0, count: GGUFEncoder.padded(bytes) - bytes)
                    try padding.withUnsafeBytes { try append($0) }
                }
            }
        }
        try out.commit()
        return Summary(tensors: planned.count, bytes: plans.reduce(0) { $0 + $1.fileSize },
                       types: Dictionary(planned.map { ($0.type.name, 1) }, uniquingKeysWith: +), files: files.map(\.name))
    }

    /// The file name before `.gguf` (or the split suffix): llama.cpp's convention, `NAME-TYPE`, with any
    /// character a file name should not carry (a `/` in `--name`, spaces) replaced by `-`.
    static func fileBase(name: String, type: GGUFFileType) -> String {
        let safe = String(name.unicodeScalars.map { c -> Character in
            (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "." || c == "_" || c == "-") && c.isASCII ? Character(c) : "-"
        })
        let trimmed = safe.drop { $0 == "." || $0 == "-" }
        return (trimmed.isEmpty ? "model" : String(trimmed)) + "-" + type.fileLabel
    }

    /// What the manifest records of this run (and what identifies it for `--resume`).
    static func stage(_ options: Options, input: URL) -> ConversionManifest.Stage {
        var recorded = ["format": "gguf", "type": options.type.rawValue]
        recorded["tokenizer_pre"] = options.tokenizerPre
        recorded["tokenizer"] = options.tokenizer?.path
        recorded["name"] = options.name
        recorded["size_label"] = options.sizeLabel
        recorded["split_max_size"] = options.splitMaxSize.map(String.init)
        return ConversionManifest.Stage(stage: .export, options: recorded, input: input.path)
    }

    /// Encodes one tensor from its recipe and hands the bytes to `append`; returns the bytes produced.
    static func write(_ tensor: GGUFPlannedTensor, from source: TensorSource, weights: CheckpointWeights, config: DeepSeekConfig,
                      chunkElements: Int, to append: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        try withoutActuallyEscaping(append) { append in
            let encoder = GGUFTensorEncoder(tensor: tensor, source: source, weights: weights, config: config, chunkElements: chunkElements, append: append)
            switch tensor.recipe {
            case .tensor(let name): return try encoder.rows(name, divisor: 1)
            case .divided(let name, let divisor): return try encoder.rows(name, divisor: divisor)
            case .ones: return try encoder.emit([Float](repeating: 1, count: tensor.shape.reduce(1, *)))
            case .transposedHeads(let name): return try encoder.transposedHeads(name)
            case .keyAbsorb(let layer): return try encoder.kvB(layer, keys: true)
            case .valueAbsorb(let layer): return try encoder.kvB(layer, keys: false)
            case .experts(let layer, let projection): return try encoder.experts(layer, projection)
            }
        }
    }

    static func finite(_ values: [Float], name: String, source: TensorSource) throws -> [Float] {
        guard values.allSatisfy(\.isFinite) else {
            throw ConversionError.unsupportedInput(path: source.path(of: name), reason: "tensor '\(name)' holds NaN or Inf; refusing to export it")
        }
        return values
    }

    static func vocabulary(source: TensorSource, options: Options) throws -> [GGUFMetadata] {
        // --tokenizer names a tokenizer.json or the directory holding one, as forward and validate take it.
        let given = options.tokenizer ?? source.directory
        var isDirectory: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: given.path, isDirectory: &isDirectory) && isDirectory.boolValue
            ? given.appendingPathComponent("tokenizer.json") : given
        guard FileEntry.lstat(file.path) != nil else {
            throw ConversionError.unsupportedInput(path: file.path, reason: "missing: llama.cpp needs the vocabulary (give --tokenizer PATH)")
        }
        let config = source.config
        let pre = options.tokenizerPre ?? (config.architecture == .deepseekV3 ? "deepseek-v3" : "deepseek-llm")
        do {
            return try GGUFVocabulary(tokenizerFile: file, config: config, configJSON: source.document.json, pre: pre).metadata
        } catch let e as GGUFVocabulary.Invalid {
            throw ConversionError.unsupportedInput(path: e.path, reason: e.reason)
        }
    }
}

/// Produces one exported tensor's bytes from its recipe, a piece at a time (see `GGUFExport.write`).
struct GGUFTensorEncoder {
    let tensor: GGUFPlannedTensor
    let source: TensorSource
    let weights: CheckpointWeights
    let config: DeepSeekConfig
    let chunkElements: Int
    let append: (UnsafeRawBufferPointer) throws -> Void

    /// Encodes `values` (whole blocks) and appends them; returns the bytes.
    func emit(_ values: [Float]) throws -> Int {
        let bytes = tensor.type.encode(values)
        try bytes.withUnsafeBytes { try append($0) }
        return bytes.count
    }

    private func checked(_ name: String) throws -> [Float] { try GGUFExport.finite(source.floats(name), name: name, source: source) }

    /// A checkpoint tensor, each value divided by `divisor` (in f64, rounded once) unless it is 1. A large matrix
    /// (the embedding, the output head, an FP8 dense MLP) goes through in chunks of rows, so memory holds a chunk,
    /// not the tensor; chunks are whole FP8 scale blocks of rows.
    func rows(_ name: String, divisor: Double) throws -> Int {
        defer { source.release(name) }
        // Checked again after the division: a value near f32's largest can overflow when the scale is divided out.
        func divided(_ values: [Float]) throws -> [Float] {
            divisor == 1 ? values : try GGUFExport.finite(values.map { Float(Double($0) / divisor) }, name: name, source: source)
        }
        guard tensor.shape.count == 2, tensor.shape[0] * tensor.shape[1] > chunkElements else { return try emit(divided(checked(name))) }
        let (rows, columns) = (tensor.shape[0], tensor.shape[1])
        // An FP8 matrix is read in whole scale blocks of rows (at least one), so each chunk dequantizes only its rows.
        let fit = max(1, chunkElements / columns)
        let step = config.quantization.map { max($0.block, fit / $0.block * $0.block) } ?? fit
        var total = 0
        for start in stride(from: 0, to: rows, by: step) {
            let chunk = try weights.rows(name, shape: tensor.shape, range: start..<min(rows, start + step))
            total += try emit(try divided(try GGUFExport.finite(chunk, name: name, source: source)))
        }
        weights.release(name)
        return total
    }

    /// attn_k_b [heads, kv_lora, nope] from `w`, whose head h starts at row h·`rowsPerHead` with its `nope` key rows
    /// of kv_lora columns: attn_k_b[h][r][c] = w[h·rowsPerHead + c][r], each head's key rows transposed.
    private func keysTransposed(_ w: [Float], rowsPerHead: Int) -> [Float] {
        let heads = config.numAttentionHeads, nope = config.qkNopeHeadDim, kvl = config.kvLoraRank
        var out = [Float](repeating: 0, count: heads * kvl * nope)
        for h in 0..<heads { for r in 0..<kvl { for c in 0..<nope { out[(h * kvl + r) * nope + c] = w[(h * rowsPerHead + c) * kvl + r] } } }
        return out
    }

    /// An absorbed checkpoint's W_UK [heads, nope, kv_lora] as attn_k_b.
    func transposedHeads(_ name: String) throws -> Int {
        defer { source.release(name) }
        return try emit(keysTransposed(try checked(name), rowsPerHead: config.qkNopeHeadDim))
    }

    /// kv_b_proj's key rows of every head, transposed per head (attn_k_b), or its value rows (attn_v_b). The
    /// value tensor comes second in llama.cpp's order, so it releases kv_b_proj's pages.
    func kvB(_ layer: Int, keys: Bool) throws -> Int {
        let name = TensorNames.name(.kvBProj, layer: layer)
        let w = try checked(name)
        let heads = config.numAttentionHeads, nope = config.qkNopeHeadDim, dv = config.vHeadDim, kvl = config.kvLoraRank
        if keys { return try emit(keysTransposed(w, rowsPerHead: nope + dv)) }
        // attn_v_b[h][j][r] = kv_b_proj[h·(nope+v) + nope + j][r].
        var out = [Float](repeating: 0, count: heads * dv * kvl)
        for h in 0..<heads { for j in 0..<dv { for r in 0..<kvl { out[(h * dv + j) * kvl + r] = w[(h * (nope + dv) + nope + j) * kvl + r] } } }
        source.release(name)
        return try emit(out)
    }

    /// A layer's routed experts' projection, stacked: each expert read, encoded and released in turn.
    func experts(_ layer: Int, _ projection: MLPProjection) throws -> Int {
        var total = 0
        for e in 0..<(config.nRoutedExperts ?? 0) {
            let name = TensorNames.expert(layer, e, projection)
            total += try emit(try checked(name))
            source.release(name)
        }
        return total
    }
}
