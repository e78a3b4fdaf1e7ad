/// A size or count that does not fit in `Int`: the config describes a model no machine could hold,
/// and the formula stopped instead of wrapping or trapping.
public struct SizeOverflow: Error, Equatable, Sendable {
    /// What was being computed, e.g. "parameters of 'model.layers.0.self_attn.w_uk.weight'".
    public let quantity: String

    public init(_ quantity: String) { self.quantity = quantity }
}

/// Overflow-checked arithmetic for every size, count and accounting formula that starts from numbers
/// read from a file or the command line: a hostile `config.json` must cost one error line, not a trap.
public enum CheckedSize {
    /// The product of `factors`, or `SizeOverflow(quantity)` if it does not fit.
    public static func product(_ factors: Int..., of quantity: @autoclosure () -> String) throws -> Int {
        try product(factors, of: quantity())
    }

    public static func product(_ factors: [Int], of quantity: @autoclosure () -> String) throws -> Int {
        var result = 1
        for f in factors {
            let (p, overflow) = result.multipliedReportingOverflow(by: f)
            if overflow { throw SizeOverflow(quantity()) }
            result = p
        }
        return result
    }

    /// The sum of `terms`, or `SizeOverflow(quantity)` if it does not fit.
    public static func sum(_ terms: Int..., of quantity: @autoclosure () -> String) throws -> Int {
        var result = 0
        for t in terms {
            let (s, overflow) = result.addingReportingOverflow(t)
            if overflow { throw SizeOverflow(quantity()) }
            result = s
        }
        return result
    }

    /// ⌈n / d⌉ for n ≥ 0 and d > 0, without the n + d − 1 that overflows when d is near `Int.max`.
    public static func ceilDiv(_ n: Int, _ d: Int) -> Int { n / d + (n % d == 0 ? 0 : 1) }
}
