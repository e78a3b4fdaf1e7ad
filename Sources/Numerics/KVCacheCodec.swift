/// Per-token MLA cache codecs (README "The 6-bit KV cache"): what one layer stores for one token, the latent c
/// (kv_lora channels) and the rotated k_pe (rope channels).
///
/// Layouts, for latent width L and rope width R (V2: L = 512, R = 64):
/// - bf16: [L bf16][R bf16] = 2(L+R) bytes (1152).
/// - fp8_ds_mla (FlashMLA): [L E4M3][⌈L/128⌉ fp32 scales][R bf16] (656). Each 128-channel tile is
///   scaled by a power of two, 2^⌈log2(amax/448)⌉, so q = e4m3(x / s) and x ≈ q · s.
/// - mla-kv6 (ours): [⌈5L/8⌉ bytes int5 codes][⌈L/32⌉ fp16 scales][R int8 codes][1 fp16 scale][zero pad to 16]
///   (320 + 32 + 64 + 2 + 14 = 432 = 6.000 bits per element). Latent groups of 32 channels (the last
///   one partial when L is not a multiple of 32) have a scale
///   (absmax/15 rounded up to fp16, so no code leaves its range) and codes round-to-nearest-even(x / scale) clamped to −15…15, stored as 5-bit two's complement, eight per
///   five bytes, value i at bits 5i…5i+4 of the little-endian 40-bit word (the last word zero-padded);
///   k_pe has one scale absmax/127 (rounded up to fp16) and int8 codes clamped to −127…127. A zero group has scale 0
///   and zero codes.
/// - mla-kv6c (ours, calibrated): ⌈6(L+R)/8⌉ bytes of codes, each channel with its own bit width and static
///   step from the checkpoint, k_pe before rotation (`KVChannelCodec`); 432 bytes for V2.
public enum KVCacheCodec {
    public enum Format: String, CaseIterable, Sendable {
        /// Latent and rotary key in bf16.
        case bf16
        /// FlashMLA's layout: E4M3 latent, one fp32 scale per 128 channels, bf16 rotary key.
        case fp8DSMLA = "fp8_ds_mla"
        /// Ours: int5 latent with an fp16 scale per 32 channels, int8 rotary key with one fp16 scale,
        /// padded to a 16-byte multiple (432 bytes = 6.000 bits/element for V2's 512 + 64).
        case mlaKV6 = "mla-kv6"
        /// Ours, calibrated: per-channel bit widths and static steps stored in the checkpoint, no per-token
        /// scales, k_pe cached before rotation; 6 bits per element on average (`KVChannelCodec`).
        case mlaKV6C = "mla-kv6c"

        /// The codec of a format that needs no calibrated parameters; nil for mla-kv6c.
        public var fixedCodec: Codec? {
            switch self {
            case .bf16: return .bf16
            case .fp8DSMLA: return .fp8DSMLA
            case .mlaKV6: return .mlaKV6
            case .mlaKV6C: return nil
            }
        }
    }

    /// A format with everything it needs to encode one layer's entries.
    public enum Codec: Sendable, Equatable {
        case bf16, fp8DSMLA, mlaKV6
        case channelwise(KVChannelCodec)

        public var format: Format {
            switch self {
            case .bf16: return .bf16
            case .fp8DSMLA: return .fp8DSMLA
            case .mlaKV6: return .mlaKV6
            case .channelwise: return .mlaKV6C
            }
        }

        /// Bytes of one token's entry (a declared mla-kv6c codec has exactly `bytes(.mlaKV6C, …)`).
        public func entryBytes(latent l: Int, rope r: Int) -> Int {
            if case .channelwise(let channels) = self { return channels.byteCount }
            return KVCacheCodec.bytes(format, latent: l, rope: r)
        }

        /// Whether k_pe is cached before the rotary embedding (the reader rotates after decoding).
        public var cachesRopeBeforeRotation: Bool {
            if case .channelwise = self { return true }
            return false
        }
    }

    public static func bytes(_ format: Format, latent l: Int, rope r: Int) -> Int {
        switch format {
        case .bf16: return 2 * (l + r)
        case .fp8DSMLA: return l + 4 * ((l + 127) / 128) + 2 * r
        case .mlaKV6: return ((5 * l + 7) / 8 + 2 * ((l + 31) / 32) + r + 2 + 15) / 16 * 16
        case .mlaKV6C: return (6 * (l + r) + 7) / 8
        }
    }

    /// Encodes one token's latent and rope into `out` (which must hold `bytes(format, …)` bytes).
    public static func encode(_ codec: Codec, latent: UnsafeBufferPointer<Float>, rope: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawBufferPointer) {
        let l = latent.count, r = rope.count
        for i in 0..<out.count { out[i] = 0 }
        switch codec {
        case .channelwise(let channels):
            channels.encode(latent: latent, rope: rope, into: out)
        case .bf16:
            for i in 0..<l { out.storeBytes(of: FloatConversion.floatToBF16(latent[i]), toByteOffset: 2 * i, as: UInt16.self) }
            for i in 0..<r { out.storeBytes(of: FloatConversion.floatToBF16(rope[i]), toByteOffset: 2 * (l + i), as: UInt16.self) }
        case .fp8DSMLA:
            let tiles = (l + 127) / 128
            for t in 0..<tiles {
                let range = (t * 128)..<min(l, (t + 1) * 128)
                var amax: Float = 0
                for i in range { amax = max(amax, abs(latent[i])) }
                // 1 when amax / 448 is 0 (a zero tile, or f32 subnormals below ~6e-43): a zero scale
                // would make 0/0 NaN codes; with 1 the tile's codes are ±0, as for a zero tile.
                let scale = amax / 448 == 0 ? 1 : powerOfTwoAtLeast(amax / 448)
                out.storeBytes(of: scale, toByteOffset: l + 4 * t, as: Float.self)
                for i in range { out[i] = FP8Codec.encode(latent[i] / scale, .e4m3) }
            }
            let ropeOffset = l + 4 * tiles
            for i in 0..<r { out.storeBytes(of: FloatConversion.floatToBF16(rope[i]), toByteOffset: ropeOffset + 2 * i, as: UInt16.self) }
        case .mlaKV6:
            let codeBytes = (5 * l + 7) / 8, groups = (l + 31) / 32
            var codes = [Int32](repeating: 0, count: (l + 7) / 8 * 8)
            for g in 0..<groups {
                let range = (g * 32)..<min(l, (g + 1) * 32)
                var amax: Float = 0
                for i in range { amax = max(amax, abs(latent[i])) }
                let scale = fp16Scale(amax / 15)
                out.storeBytes(of: scale.bitPattern, toByteOffset: codeBytes + 2 * g, as: UInt16.self)
                let s = Float(scale)
                for i in range { codes[i] = s == 0 ? 0 : Int32(max(-15, min(15, (latent[i] / s).rounded(.toNearestOrEven)))) }
            }
            for word in 0..<(codes.count / 8) {
                var bits: UInt64 = 0
                for j in 0..<8 { bits |= UInt64(UInt32(bitPattern: codes[word * 8 + j]) & 0x1F) << (5 * UInt64(j)) }
                for b in 0..<5 where word * 5 + b < codeBytes { out[word * 5 + b] = UInt8(truncatingIfNeeded: bits >> (8 * UInt64(b))) }
            }
            let ropeOffset = codeBytes + 2 * groups
            var amax: Float = 0
            for i in 0..<r { amax = max(amax, abs(rope[i])) }
            let scale = fp16Scale(amax / 127), s = Float(scale)
            for i in 0..<r { out[ropeOffset + i] = UInt8(bitPattern: s == 0 ? 0 : Int8(max(-127, min(127, (rope[i] / s).rounded(.toNearestOrEven))))) }
            out.storeBytes(of: scale.bitPattern, toByteOffset: ropeOffset + r, as: UInt16.self)
        }
    }

    /// Decodes one token's cache entry back into latent and rope.
    public static func decode(_ codec: Codec, _ bytes: UnsafeRawBufferPointer, latent: UnsafeMutableBufferPointer<Float>, rope: UnsafeMutableBufferPointer<Float>) {
        let l = latent.count, r = rope.count
        switch codec {
        case .channelwise(let channels):
            channels.decode(bytes, latent: latent, rope: rope)
        case .bf16:
            for i in 0..<l { latent[i] = FloatConversion.bf16ToFloat(bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
            for i in 0..<r { rope[i] = FloatConversion.bf16ToFloat(bytes.loadUnaligned(fromByteOffset: 2 * (l + i), as: UInt16.self)) }
        case .fp8DSMLA:
            let tiles = (l + 127) / 128
            for i in 0..<l { latent[i] = FP8Codec.decode(bytes[i], .e4m3) * bytes.loadUnaligned(fromByteOffset: l + 4 * (i / 128), as: Float.self) }
            for i in 0..<r { rope[i] = FloatConversion.bf16ToFloat(bytes.loadUnaligned(fromByteOffset: l + 4 * tiles + 2 * i, as: UInt16.self)) }
        case .mlaKV6:
            let codeBytes = (5 * l + 7) / 8, groups = (l + 31) / 32
            for word in 0..<((l + 7) / 8) {
                var bits: UInt64 = 0
                for b in 0..<5 where word * 5 + b < codeBytes { bits |= UInt64(bytes[word * 5 + b]) << (8 * UInt64(b)) }
                for j in 0..<8 where word * 8 + j < l {
                    let raw = Int32((bits >> (5 * UInt64(j))) & 0x1F)
                    let code = raw >= 16 ? raw - 32 : raw
                    let i = word * 8 + j
                    latent[i] = Float(code) * Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: codeBytes + 2 * (i / 32), as: UInt16.self)))
                }
            }
            let ropeOffset = codeBytes + 2 * groups
            let s = Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: ropeOffset + r, as: UInt16.self)))
            for i in 0..<r { rope[i] = Float(Int8(bitPattern: bytes[ropeOffset + i])) * s }
        }
    }

    /// Encodes then decodes every token's entry in place: what a kernel reading the cache sees.
    public static func roundTrip(_ codec: Codec, latent: inout [Float], rope: inout [Float], tokens: Int) {
        let l = latent.count / max(tokens, 1), r = rope.count / max(tokens, 1)
        var buffer = [UInt8](repeating: 0, count: codec.entryBytes(latent: l, rope: r))
        latent.withUnsafeMutableBufferPointer { lp in rope.withUnsafeMutableBufferPointer { rp in buffer.withUnsafeMutableBytes { bp in
            for t in 0..<tokens {
                let lat = UnsafeMutableBufferPointer(rebasing: lp[(t * l)..<((t + 1) * l)])
                let ro = UnsafeMutableBufferPointer(rebasing: rp[(t * r)..<((t + 1) * r)])
                encode(codec, latent: UnsafeBufferPointer(lat), rope: UnsafeBufferPointer(ro), into: bp)
                decode(codec, UnsafeRawBufferPointer(bp), latent: lat, rope: ro)
            }
        } } }
    }

    /// The smallest power of two ≥ x (FlashMLA's scale rounding), for positive finite x.
    static func powerOfTwoAtLeast(_ x: Float) -> Float {
        let p = Float(sign: .plus, exponent: x.exponent, significand: 1)
        return p < x ? p * 2 : p
    }

    /// A positive fp16 scale not below x (so |x / scale| ≤ the code range), saturating at fp16's max.
    static func fp16Scale(_ x: Float) -> Float16 {
        if x == 0 { return 0 }
        var h = Float16(min(x, 65504))
        if Float(h) < x, h < Float16.greatestFiniteMagnitude { h = h.nextUp }
        return h
    }
}
