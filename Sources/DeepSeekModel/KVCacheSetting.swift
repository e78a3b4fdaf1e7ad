import Numerics

/// The KV cache a forward pass runs through: a format and, for mla-kv6c, every layer's calibrated codec.
///
/// Built once from `config.json`'s `dsconvert_kv_cache` (or from `--kv-cache`), checked there, so the
/// forward pass only asks for a layer's codec.
public struct KVCacheSetting: Sendable, Equatable {
    public let format: KVCacheFormat
    /// mla-kv6c only: the codec of layer i at index i.
    private let layerCodecs: [KVChannelCodec]
    /// The main stack's layers, which under mla-kv6c must each have a codec.
    private let mainLayerCount: Int

    /// A format that needs no calibrated parameters; nil for mla-kv6c, which only a checkpoint can declare.
    public init?(fixed format: KVCacheFormat) {
        guard format.fixedCodec != nil else { return nil }
        self.format = format
        layerCodecs = []
        mainLayerCount = 0
    }

    /// The format `config` declares, checked against its dimensions: a known format, its byte count, and
    /// for mla-kv6c one valid codec per layer whose entry has exactly the declared bytes.
    public init(declaredBy config: DeepSeekConfig, path: String) throws {
        guard let record = config.kvCache else { throw Self.bad(path, "no dsconvert_kv_cache") }
        guard let format = KVCacheFormat(rawValue: record.format) else {
            throw Self.bad(path, "format '\(record.format)' is not one of \(KVCacheFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let l = config.kvLoraRank, r = config.qkRopeHeadDim
        let bytes = format.bytesPerTokenPerLayer(kvLoraRank: l, ropeDim: r)
        guard record.bytesPerTokenPerLayer == bytes else {
            throw Self.bad(path, "bytes_per_token_per_layer is \(record.bytesPerTokenPerLayer), \(format.rawValue) of \(l) + \(r) channels takes \(bytes)")
        }
        self.format = format
        mainLayerCount = config.numHiddenLayers
        guard format == .mlaKV6C else {
            if record.channels != nil { throw Self.bad(path, "channels are only read for mla-kv6c") }
            layerCodecs = []
            return
        }
        let channels = record.channels ?? []
        // The main stack's layers, and the first MTP layer's when calibrated with it (earlier outputs
        // have none: their MTP layer then runs with an fp32 cache). A V3-family checkpoint whose MTP
        // weights were dropped after calibration (as transformers saves it) keeps that entry, unused.
        // (Only the V3 family has MTP layers: `mtpLayerCount` is 0 for every other architecture.)
        let mtpEntry = config.architecture == .deepseekV3 ? 1 : 0
        let main = Array(0..<config.numHiddenLayers), withMTP = Array(0..<(config.numHiddenLayers + mtpEntry))
        guard channels.map(\.layer) == main || channels.map(\.layer) == withMTP else {
            throw Self.bad(path, "mla-kv6c needs channels for layers 0..<\(config.numHiddenLayers) in order"
                           + (withMTP.count > main.count ? " (or 0..<\(withMTP.count), the MTP layer's too)" : ""))
        }
        layerCodecs = try channels.map { entry in
            guard entry.bits.count == l + r, entry.steps.count == l + r else {
                throw Self.bad(path, "layer \(entry.layer): \(entry.bits.count) widths and \(entry.steps.count) steps for \(l + r) channels")
            }
            guard let codec = entry.codec else {
                throw Self.bad(path, "layer \(entry.layer): widths must be 0 or 2...\(KVChannelCodec.maxBits) and steps non-negative finite f32 values")
            }
            guard codec.totalBits == 6 * (l + r), codec.byteCount == bytes else {
                throw Self.bad(path, "layer \(entry.layer): widths sum to \(codec.totalBits) bits, mla-kv6c's are 6 x \(l + r) = \(6 * (l + r))")
            }
            return codec
        }
    }

    /// The codec of `layer`'s cache entries; nil (an fp32 cache) for an MTP layer under mla-kv6c
    /// declared without its channels.
    public func codec(layer: Int) -> KVCacheCodec.Codec? {
        if let fixed = format.fixedCodec { return fixed }
        if layerCodecs.indices.contains(layer) { return .channelwise(layerCodecs[layer]) }
        // `init` checked a codec for every main layer of the config it read: a main layer without one
        // would be a setting paired with another model's config.
        precondition(layer >= mainLayerCount, "mla-kv6c has no codec for main-stack layer \(layer)")
        return nil
    }

    private static func bad(_ path: String, _ reason: String) -> DeepSeekModelError {
        .invalidConfig(path: path, reason: "dsconvert_kv_cache: \(reason)")
    }
}
