/// One layer's `mla-kv6c` cache codec: every cached channel has its own bit width and its own static step,
/// both calibrated once and stored in the checkpoint, so a token's entry is nothing but codes.
///
/// Channels are the latent's L channels, then k_pe's R channels *before* the rotary embedding (as KVQuant
/// caches pre-RoPE keys): rotation mixes each pair of channels by an angle that depends on the position,
/// so only pre-rotation channels have magnitudes a static per-channel step can follow. A reader decodes and
/// then rotates k_pe for the token's position.
///
/// Encoding channel c with bit width b_c ∈ {0, 2…16} and step s_c ≥ 0:
/// - code = round-half-to-even(x / s_c) clamped to ±(2^(b_c−1) − 1); 0 when s_c is 0, x is NaN or b_c is 0;
/// - stored as b_c-bit two's complement at bit offset Σ_{j<c} b_j of the entry, bit k of the entry being bit
///   k mod 8 of byte ⌊k/8⌋ (little-endian bit order); the last byte's unused bits are zero;
/// - decoded as Float(code) · s_c (a channel of width 0 decodes to 0).
///
/// The entry is ⌈Σ b_c / 8⌉ bytes; the calibration gives every layer Σ b_c = 6·(L+R), so 6.000 bits per
/// element (432 bytes for DeepSeek-V2's 512 + 64) with no per-token scale at all.
public struct KVChannelCodec: Sendable, Equatable {
    /// Why a codec's parameters were refused.
    public enum Invalid: Error, Equatable, Sendable {
        case countMismatch(bits: Int, steps: Int)
        case width(channel: Int, bits: Int)
        case step(channel: Int, step: Float)
    }

    /// The widest code a channel may have.
    public static let maxBits = 16

    public let bits: [UInt8]
    public let steps: [Float]
    /// Σ bits: the entry's payload in bits.
    public let totalBits: Int

    public init(bits: [UInt8], steps: [Float]) throws(Invalid) {
        guard bits.count == steps.count else { throw .countMismatch(bits: bits.count, steps: steps.count) }
        for (c, b) in bits.enumerated() where b == 1 || Int(b) > Self.maxBits { throw .width(channel: c, bits: Int(b)) }
        for (c, s) in steps.enumerated() where !(s.isFinite && s >= 0) { throw .step(channel: c, step: s) }
        self.bits = bits
        self.steps = steps
        totalBits = bits.reduce(0) { $0 + Int($1) }
    }

    public var channels: Int { bits.count }
    /// Bytes of one token's entry.
    public var byteCount: Int { (totalBits + 7) / 8 }

    /// The code of x for a channel of `bits` bits and step `step` (bits ≥ 2).
    @inline(__always)
    public static func code(_ x: Float, step: Float, bits: Int) -> Int32 {
        guard step > 0, !x.isNaN else { return 0 }
        let limit = Float((1 << (bits - 1)) - 1)
        return Int32(max(-limit, min(limit, (x / step).rounded(.toNearestOrEven))))
    }

    /// Encodes one token: `latent` then `rope` (pre-rotation) are the codec's channels in order; `out` holds
    /// `byteCount` bytes.
    public func encode(latent: UnsafeBufferPointer<Float>, rope: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawBufferPointer) {
        precondition(latent.count + rope.count == channels && out.count >= byteCount)
        var accumulator: UInt64 = 0, pending = 0, position = 0
        for c in 0..<channels {
            let b = Int(bits[c])
            guard b > 0 else { continue }
            let x = c < latent.count ? latent[c] : rope[c - latent.count]
            let code = Self.code(x, step: steps[c], bits: b)
            accumulator |= (UInt64(UInt32(bitPattern: code)) & ((1 << UInt64(b)) - 1)) << UInt64(pending)
            pending += b
            while pending >= 8 {
                out[position] = UInt8(truncatingIfNeeded: accumulator)
                accumulator >>= 8
                pending -= 8
                position += 1
            }
        }
        if pending > 0 { out[position] = UInt8(truncatingIfNeeded: accumulator); position += 1 }
        for i in position..<out.count { out[i] = 0 }
    }

    /// Decodes one token's entry into `latent` and `rope` (pre-rotation).
    public func decode(_ bytes: UnsafeRawBufferPointer, latent: UnsafeMutableBufferPointer<Float>, rope: UnsafeMutableBufferPointer<Float>) {
        precondition(latent.count + rope.count == channels && bytes.count >= byteCount)
        var accumulator: UInt64 = 0, available = 0, position = 0
        for c in 0..<channels {
            let b = Int(bits[c])
            var value: Float = 0
            if b > 0 {
                while available < b {
                    accumulator |= UInt64(bytes[position]) << UInt64(available)
                    available += 8
                    position += 1
                }
                let raw = Int32(truncatingIfNeeded: accumulator & ((1 << UInt64(b)) - 1))
                accumulator >>= UInt64(b)
                available -= b
                // Sign-extend the b-bit two's complement code.
                let code = raw >= (1 << (b - 1)) ? raw - (1 << b) : raw
                value = Float(code) * steps[c]
            }
            if c < latent.count { latent[c] = value } else { rope[c - latent.count] = value }
        }
    }
}
