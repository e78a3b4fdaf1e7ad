/// The per-token MLA cache formats (DESIGN §6): what one layer stores for one token.
public enum KVCacheFormat: String, CaseIterable, Codable, Sendable {
    /// Latent and rotary key in bf16.
    case bf16
    /// FlashMLA's layout: E4M3 latent, one fp32 scale per 128 channels, bf16 rotary key.
    case fp8DSMLA = "fp8_ds_mla"
    /// Ours: int5 latent with an fp16 scale per 32 channels, int8 rotary key with one fp16 scale,
    /// padded to a 16-byte multiple (432 bytes = 6.000 bits/element for V2's 512 + 64).
    case mlaKV6 = "mla-kv6"

    /// Channels per fp32 scale in `fp8_ds_mla`.
    public static let fp8GroupSize = 128
    /// Channels per fp16 scale of the int5 latent in `mla-kv6`.
    public static let kv6GroupSize = 32

    /// Bytes one layer caches per token for a latent of `kvLoraRank` and a rotary key of `ropeDim`.
    ///
    /// A final partial group (when `kvLoraRank` is not a multiple of the group) still gets its own scale.
    public func bytesPerTokenPerLayer(kvLoraRank: Int, ropeDim: Int) -> Int {
        switch self {
        case .bf16:
            return 2 * (kvLoraRank + ropeDim)
        case .fp8DSMLA:
            return kvLoraRank + 4 * ceilDiv(kvLoraRank, Self.fp8GroupSize) + 2 * ropeDim
        case .mlaKV6:
            let latent = ceilDiv(kvLoraRank * 5, 8) + 2 * ceilDiv(kvLoraRank, Self.kv6GroupSize)
            let rope = ropeDim + 2
            return ceilDiv(latent + rope, 16) * 16
        }
    }

    /// Average bits per cached element.
    public func bitsPerElement(kvLoraRank: Int, ropeDim: Int) -> Double {
        Double(8 * bytesPerTokenPerLayer(kvLoraRank: kvLoraRank, ropeDim: ropeDim)) / Double(kvLoraRank + ropeDim)
    }
}

@inline(__always) func ceilDiv(_ a: Int, _ b: Int) -> Int { (a + b - 1) / b }
