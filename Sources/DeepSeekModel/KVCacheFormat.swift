import Numerics

/// The per-token MLA cache formats (README "The 6-bit KV cache"): what one layer stores for one token. The codecs
/// and the one size formula live in `KVCacheCodec`; this is the model's accounting view of them.
public typealias KVCacheFormat = KVCacheCodec.Format

extension KVCacheCodec.Format {
    /// Bytes one layer caches per token for a latent of `kvLoraRank` and a rotary key of `ropeDim`.
    ///
    /// A final partial group (when `kvLoraRank` is not a multiple of the group) still gets its own scale.
    public func bytesPerTokenPerLayer(kvLoraRank: Int, ropeDim: Int) -> Int {
        KVCacheCodec.bytes(self, latent: kvLoraRank, rope: ropeDim)
    }

    /// `bytesPerTokenPerLayer`, refusing widths whose byte count would not fit in `Int` (the codec's
    /// formula multiplies the widths by small constants).
    public func checkedBytesPerTokenPerLayer(kvLoraRank: Int, ropeDim: Int) throws -> Int {
        // Every format stores at most 2 bytes per element plus a scale per element and 16 bytes of padding.
        _ = try CheckedSize.product(CheckedSize.sum(kvLoraRank, ropeDim, 16, of: "KV cache elements"), 8, of: "KV cache bytes per token per layer")
        return bytesPerTokenPerLayer(kvLoraRank: kvLoraRank, ropeDim: ropeDim)
    }

    /// Average bits per cached element.
    public func bitsPerElement(kvLoraRank: Int, ropeDim: Int) -> Double {
        Double(8 * bytesPerTokenPerLayer(kvLoraRank: kvLoraRank, ropeDim: ropeDim)) / Double(kvLoraRank + ropeDim)
    }
}
