import Foundation

/// A Unicode normalization form of the `normalizer` (a `Sequence` is flattened).
///
/// `tokenizers` normalizes with the `unicode-normalization-alignments` crate, whose tables are
/// Unicode 9.0, while Foundation's are this toolchain's (17.0): a code point dated later (U+1FBF0
/// SEGMENTED DIGIT ZERO, 13.0, is "0" under NFKC here and itself there; U+1DF8, 10.0, has no
/// combining class there) is to the library an unassigned starter, which no mapping changes and
/// nothing composes or reorders across. So the text is cut at such code points, the pieces between
/// are normalized, and those code points stay as they are.
///
/// Foundation's whole-string NFC/NFKC is not used: measured against the library it leaves marks a
/// decomposition brings in unsorted (U+0F80 U+0F81 stays 0F80 0F71 0F80, where 0F71's class 129
/// sorts first), does not compose the Hangul jamo NFKC makes of compatibility jamo (U+314E U+314F
/// stays 1112 1161, not U+D558), and drops scalars from a long run of marks (U+0305...U+0344 lost
/// U+0344's 0308 0301). Here each scalar is decomposed alone (Foundation on one scalar), the marks
/// are put in canonical order, and the canonical composition algorithm runs with Foundation asked
/// only whether one pair composes. The cross-check compares every code point, alone and in one
/// run, with the library.
enum NormalizerStep: Sendable {
    case nfc, nfkc

    /// The Unicode version of the library's normalization tables.
    static let libraryUnicode = (major: 9, minor: 0)

    func apply(_ scalars: ArraySlice<UInt32>) -> [UInt32] {
        var result: [UInt32] = []
        result.reserveCapacity(scalars.count)
        var start = scalars.startIndex
        for i in scalars.indices where Self.isAfterLibraryUnicode(scalars[i]) {
            result += normalized(scalars[start..<i])
            result.append(scalars[i])
            start = i + 1
        }
        return result + normalized(scalars[start...])
    }

    private static func isAfterLibraryUnicode(_ value: UInt32) -> Bool {
        Unicode.Scalar(value).map { UnicodeTables.isDated($0, after: libraryUnicode) } ?? false
    }

    private func normalized(_ scalars: ArraySlice<UInt32>) -> [UInt32] {
        var decomposed: [Unicode.Scalar] = []
        decomposed.reserveCapacity(scalars.count)
        // Foundation is asked once per distinct scalar of the piece.
        var decompositions: [UInt32: [Unicode.Scalar]] = [:]
        for value in scalars {
            guard let scalar = Unicode.Scalar(value) else { continue }
            if scalar.isASCII { decomposed.append(scalar); continue }
            if let known = decompositions[value] { decomposed += known; continue }
            let alone = String(String.UnicodeScalarView([scalar]))
            let parts: [Unicode.Scalar]
            switch self {
            case .nfc: parts = Array(alone.decomposedStringWithCanonicalMapping.unicodeScalars)
            case .nfkc: parts = Array(alone.decomposedStringWithCompatibilityMapping.unicodeScalars)
            }
            decompositions[value] = parts
            decomposed += parts
        }
        Self.orderCanonically(&decomposed)
        return Self.composeCanonically(decomposed).map(\.value)
    }

    /// The canonical composition algorithm: each scalar joins the last starter before it when
    /// nothing between blocks it (a scalar of class 0, or of a class not below its own) and the two
    /// have a primary composite.
    static func composeCanonically(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var result: [Unicode.Scalar] = []
        result.reserveCapacity(scalars.count)
        var starter: Int?
        var composites: [UInt64: Unicode.Scalar?] = [:]
        for scalar in scalars {
            let cc = scalar.properties.canonicalCombiningClass.rawValue
            if let s = starter {
                let adjacent = s == result.count - 1
                let lastClass = result[result.count - 1].properties.canonicalCombiningClass.rawValue
                // No primary composite ends in an ASCII scalar.
                if !scalar.isASCII, adjacent || (lastClass != 0 && lastClass < cc) {
                    let key = UInt64(result[s].value) << 32 | UInt64(scalar.value)
                    let composite = composites[key] ?? primaryComposite(result[s], scalar)
                    composites[key] = composite
                    if let composite {
                        result[s] = composite
                        continue
                    }
                }
            }
            if cc == 0 { starter = result.count }
            result.append(scalar)
        }
        return result
    }

    /// The scalar `first` and `second` compose to: Hangul by the standard's arithmetic (Foundation
    /// does not compose a syllable with a trailing consonant), the rest asked of Foundation on the
    /// pair alone, `first` decomposed.
    private static func primaryComposite(_ first: Unicode.Scalar, _ second: Unicode.Scalar) -> Unicode.Scalar? {
        let (s, l, v, t) = (UInt32(0xAC00), UInt32(0x1100), UInt32(0x1161), UInt32(0x11A7))
        let (a, b) = (first.value, second.value)
        if (l..<l + 19).contains(a), (v..<v + 21).contains(b) { return Unicode.Scalar(s + ((a - l) * 21 + (b - v)) * 28) }
        if (s..<s + 11172).contains(a), (a - s) % 28 == 0, (t + 1..<t + 28).contains(b) { return Unicode.Scalar(a + (b - t)) }
        // Asked with `first` decomposed: Foundation composes 0CC6 0CC2 0CD5 to U+0CCB but leaves 0CCA 0CD5.
        var pair = Array(String(String.UnicodeScalarView([first])).decomposedStringWithCanonicalMapping.unicodeScalars)
        pair.append(second)
        let composed = String(String.UnicodeScalarView(pair)).precomposedStringWithCanonicalMapping.unicodeScalars
        return composed.count == 1 ? composed.first : nil
    }

    /// The canonical ordering algorithm: each run of marks (combining class above 0) sorted by
    /// class, stably.
    static func orderCanonically(_ scalars: inout [Unicode.Scalar]) {
        var i = 0
        while i < scalars.count {
            guard scalars[i].properties.canonicalCombiningClass.rawValue != 0 else { i += 1; continue }
            var end = i + 1
            while end < scalars.count, scalars[end].properties.canonicalCombiningClass.rawValue != 0 { end += 1 }
            if end - i > 1 {
                // Swift's sort is not stable; the index breaks ties in the original order.
                let run = scalars[i..<end].enumerated().sorted {
                    let (a, b) = ($0.element.properties.canonicalCombiningClass.rawValue, $1.element.properties.canonicalCombiningClass.rawValue)
                    return a != b ? a < b : $0.offset < $1.offset
                }
                scalars.replaceSubrange(i..<end, with: run.map(\.element))
            }
            i = end
        }
    }
}
