import Numerics

/// The per-token MLA cache formats (DESIGN §6): what one layer stores for one token. The codecs
/// and the one size formula live in `KVCacheCodec`; this is the model's accounting view of them.
public typealias KVCacheFormat = KVCacheCodec.Format

extension KVCacheCodec.Format {
    /// Bytes one layer caches per token for a latent of `kvLoraRank` and a rotary key of `ropeDim`.
    ///
    /// A final partial group (when `kvLoraRank` is not a multiple of the group) still gets its own scale.
    public func bytesPerTokenPerLayer(kvLoraRank: Int, ropeDim: Int) -> Int {
        KVCacheCodec.bytes(self, latent: kvLoraRank, rope: ropeDim)
    }

    /// Average bits per cached element.
    public func bitsPerElement(kvLoraRank: Int, ropeDim: Int) -> Double {
        Double(8 * bytesPerTokenPerLayer(kvLoraRank: kvLoraRank, ropeDim: ropeDim)) / Double(kvLoraRank + ropeDim)
    }
}
