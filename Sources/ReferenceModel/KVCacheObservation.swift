/// One layer's cache entries and queries on a batch, as `ReferenceForward`'s cache observer sees them
/// (the calibration of the mla-kv6c cache reads these; a forward pass with an observer runs without a codec).
///
/// Rows are tokens, batch-major: row b · seq + i is sequence b's position i.
public struct KVCacheObservation {
    public let layer: Int
    public let batch: Int
    public let seq: Int
    /// [t, kv_lora]: what the cache holds, RMSNorm(c_kv) with the layer's latent gain.
    public let latent: [Float]
    /// [t, rope]: k_pe before the rotary embedding.
    public let ropeBeforeRotation: [Float]
    /// [t, rope]: k_pe after it, as attention reads it.
    public let rope: [Float]
    /// [t, heads, kv_lora + rope]: every head's query in the cache's space, q_lat = q_nope · W_UK and the
    /// rotated q_pe, so a score is softmaxScale · queries[t, h] · [latent | rope][t'].
    public let queries: [Float]
    public let softmaxScale: Float
}
