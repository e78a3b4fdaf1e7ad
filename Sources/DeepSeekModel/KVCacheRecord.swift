import Foundation
import Numerics

/// What `quantize --kv6` declared, in `config.json` under `dsconvert_kv_cache`
/// (Schemas/kv-cache.schema.json).
public struct KVCacheRecord: Codable, Equatable, Sendable {
    public struct Field: Codable, Equatable, Sendable {
        public var field: String
        public var offset: Int
        public var bytes: Int
        public var encoding: String
    }

    public struct Calibration: Codable, Equatable, Sendable {
        public var source: String
        public var tokens: Int
        /// How s_c was chosen from the per-channel absmax a_c.
        public var rule: String

        public init(source: String, tokens: Int, rule: String) {
            self.source = source
            self.tokens = tokens
            self.rule = rule
        }
    }

    /// One layer's mla-kv6c parameters: per cached channel (the latent's, then k_pe's before rotation) its
    /// bit width and its step (an f32 value, written as the JSON number of that value so it reads back exactly).
    public struct LayerChannels: Codable, Equatable, Sendable {
        public var layer: Int
        public var bits: [Int]
        public var steps: [Double]

        public init(layer: Int, codec: KVChannelCodec) {
            self.layer = layer
            bits = codec.bits.map(Int.init)
            steps = codec.steps.map(Double.init)
        }

        /// The codec these parameters describe; nil when a width, a step or the counts are not a codec's.
        public var codec: KVChannelCodec? {
            guard bits.allSatisfy({ (0...KVChannelCodec.maxBits).contains($0) }),
                  steps.allSatisfy({ Double(Float($0)) == $0 }) else { return nil }
            return try? KVChannelCodec(bits: bits.map { UInt8($0) }, steps: steps.map { Float($0) })
        }
    }

    public var format: String
    public var bytesPerTokenPerLayer: Int
    public var bitsPerElement: Double
    /// Per-channel power-of-two equalization folded into the weights: the cache holds c / s_c.
    public var equalized: Bool
    public var calibration: Calibration?
    public var layout: [Field]
    /// mla-kv6c: every layer's channel widths and steps (absent for the other formats).
    public var channels: [LayerChannels]?

    enum CodingKeys: String, CodingKey {
        case format
        case bytesPerTokenPerLayer = "bytes_per_token_per_layer"
        case bitsPerElement = "bits_per_element"
        case equalized, calibration, layout, channels
    }

    public init(format: String, bytesPerTokenPerLayer: Int, bitsPerElement: Double, equalized: Bool, calibration: Calibration?, layout: [Field],
                channels: [LayerChannels]? = nil) {
        self.format = format
        self.bytesPerTokenPerLayer = bytesPerTokenPerLayer
        self.bitsPerElement = bitsPerElement
        self.equalized = equalized
        self.calibration = calibration
        self.layout = layout
        self.channels = channels
    }

    public static let configKey = "dsconvert_kv_cache"

    /// The byte layout of `format` for latent width `l` and rope width `r`.
    public static func layout(_ format: KVCacheFormat, latent l: Int, rope r: Int) -> [Field] {
        switch format {
        case .bf16:
            return [Field(field: "latent", offset: 0, bytes: 2 * l, encoding: "bf16 x \(l)"),
                    Field(field: "k_pe", offset: 2 * l, bytes: 2 * r, encoding: "bf16 x \(r), after rotation")]
        case .fp8DSMLA:
            let tiles = (l + 127) / 128
            return [Field(field: "latent", offset: 0, bytes: l, encoding: "E4M3 x \(l), x / s of its 128-channel tile"),
                    Field(field: "latent_scales", offset: l, bytes: 4 * tiles, encoding: "fp32 x \(tiles), s = 2^ceil(log2(amax/448)) per 128 channels"),
                    Field(field: "k_pe", offset: l + 4 * tiles, bytes: 2 * r, encoding: "bf16 x \(r), after rotation")]
        case .mlaKV6:
            let codes = (5 * l + 7) / 8, groups = (l + 31) / 32
            let total = format.bytesPerTokenPerLayer(kvLoraRank: l, ropeDim: r)
            return [Field(field: "latent_codes", offset: 0, bytes: codes, encoding: "int5 two's complement -15..15, 8 per 5 bytes, value i at bits 5i..5i+4 little-endian"),
                    Field(field: "latent_scales", offset: codes, bytes: 2 * groups, encoding: "fp16 x \(groups), absmax/15 rounded up, per 32 channels (last group partial when \(l) % 32 != 0)"),
                    Field(field: "k_pe_codes", offset: codes + 2 * groups, bytes: r, encoding: "int8 -127..127 x \(r), after rotation"),
                    Field(field: "k_pe_scale", offset: codes + 2 * groups + r, bytes: 2, encoding: "fp16, absmax/127 rounded up"),
                    Field(field: "padding", offset: codes + 2 * groups + r + 2, bytes: total - (codes + 2 * groups + r + 2), encoding: "zero bytes to a 16-byte multiple")]
        case .mlaKV6C:
            return [Field(field: "codes", offset: 0, bytes: format.bytesPerTokenPerLayer(kvLoraRank: l, ropeDim: r),
                          encoding: "per channel (\(l) latent, then \(r) k_pe before rotation) round-half-even(x / step) clamped to +-(2^(bits-1) - 1), bits-bit two's complement, packed little-endian from bit 0 in channel order; bits and step per layer under channels"),
            ]
        }
    }
}
