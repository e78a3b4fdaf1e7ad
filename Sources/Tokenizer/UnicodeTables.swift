import Synchronization
/// Per-scalar Unicode facts the regex classes and the added-token rules need, looked up once.
///
/// The general category of every code point is read from the Swift runtime's Unicode data into
/// one byte per code point (1.1 MB) the first time a tokenizer is built; classes are then bitsets.
///
/// The runtime's Unicode can be newer than the `tokenizers` library's: this toolchain's is 17.0,
/// while the Oniguruma inside tokenizers 0.23.3 knows Unicode 16.0 (measured: the 16.0 letters of
/// Kirat Rai and Garay are `\p{L}` there, the 17.0 ones of Tolong Siki unassigned). A code point the
/// runtime dates after `libraryUnicode` is therefore read as unassigned, as the library reads it;
/// the cross-check compares every code point's class with the library's.
enum UnicodeTables {
    /// The Unicode version of the regex engine in the `tokenizers` release dsconvert matches.
    static let libraryUnicode = (major: 16, minor: 0)

    /// True for a scalar the library's Unicode does not have yet.
    static func isAfterLibraryUnicode(_ scalar: Unicode.Scalar) -> Bool { isDated(scalar, after: libraryUnicode) }

    /// True for a scalar that Unicode assigned after `version` (the runtime's `age` of it).
    static func isDated(_ scalar: Unicode.Scalar, after version: (major: Int, minor: Int)) -> Bool {
        guard let age = scalar.properties.age else { return false }
        return (age.major, age.minor) > version
    }

    /// Planes 4 to 13, where `libraryUnicode` (16.0) assigns nothing: whatever the runtime's Unicode
    /// puts there is dated after it, so the table reads them as unassigned without asking (0.65M of
    /// the 1.1M lookups; `UnicodeTablesTests` checks it against the runtime).
    static let unassignedPlanes: Range<UInt32> = 0x40000..<0xE0000

    /// General category code of every code point (surrogates: `.surrogate`).
    static let categories: [UInt8] = {
        var table = [UInt8](repeating: Category.unassigned.rawValue, count: 0x110000)
        for value in 0..<UInt32(0x110000) where !unassignedPlanes.contains(value) {
            guard let scalar = Unicode.Scalar(value) else { table[Int(value)] = Category.surrogate.rawValue; continue }
            let category = scalar.properties.generalCategory
            // Only an assigned code point can be dated after the library's Unicode, and private use
            // has been assigned since Unicode 2.0: their age (a second lookup) is read for the rest,
            // about a third of the code points looked up.
            switch category {
            case .unassigned: continue
            case .privateUse: break
            default: if isAfterLibraryUnicode(scalar) { continue }
            }
            table[Int(value)] = Category(category).rawValue
        }
        return table
    }()

    /// Unicode White_Space: Oniguruma's `\s`, Rust's `char::is_whitespace` and `regex`'s `\s`.
    static func isWhitespace(_ v: UInt32) -> Bool {
        switch v {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// Rust `regex`'s Unicode `\w` (Alphabetic, marks, decimal digits, connector punctuation,
    /// Join_Control): what an added token's `single_word` rule looks at.
    static func isWordCharacter(_ v: UInt32) -> Bool {
        if v == 0x200C || v == 0x200D { return true }
        guard let scalar = Unicode.Scalar(v), !isAfterLibraryUnicode(scalar) else { return false }
        if scalar.properties.isAlphabetic { return true }
        switch Category(rawValue: categories[Int(v)]) {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// Unicode general categories, in one byte.
    enum Category: UInt8, CaseIterable {
        case uppercaseLetter, lowercaseLetter, titlecaseLetter, modifierLetter, otherLetter
        case nonspacingMark, spacingMark, enclosingMark
        case decimalNumber, letterNumber, otherNumber
        case connectorPunctuation, dashPunctuation, openPunctuation, closePunctuation
        case initialPunctuation, finalPunctuation, otherPunctuation
        case mathSymbol, currencySymbol, modifierSymbol, otherSymbol
        case spaceSeparator, lineSeparator, paragraphSeparator
        case control, format, surrogate, privateUse, unassigned

        init(_ category: Unicode.GeneralCategory) {
            switch category {
            case .uppercaseLetter: self = .uppercaseLetter
            case .lowercaseLetter: self = .lowercaseLetter
            case .titlecaseLetter: self = .titlecaseLetter
            case .modifierLetter: self = .modifierLetter
            case .otherLetter: self = .otherLetter
            case .nonspacingMark: self = .nonspacingMark
            case .spacingMark: self = .spacingMark
            case .enclosingMark: self = .enclosingMark
            case .decimalNumber: self = .decimalNumber
            case .letterNumber: self = .letterNumber
            case .otherNumber: self = .otherNumber
            case .connectorPunctuation: self = .connectorPunctuation
            case .dashPunctuation: self = .dashPunctuation
            case .openPunctuation: self = .openPunctuation
            case .closePunctuation: self = .closePunctuation
            case .initialPunctuation: self = .initialPunctuation
            case .finalPunctuation: self = .finalPunctuation
            case .otherPunctuation: self = .otherPunctuation
            case .mathSymbol: self = .mathSymbol
            case .currencySymbol: self = .currencySymbol
            case .modifierSymbol: self = .modifierSymbol
            case .otherSymbol: self = .otherSymbol
            case .spaceSeparator: self = .spaceSeparator
            case .lineSeparator: self = .lineSeparator
            case .paragraphSeparator: self = .paragraphSeparator
            case .control: self = .control
            case .format: self = .format
            case .surrogate: self = .surrogate
            case .privateUse: self = .privateUse
            case .unassigned: self = .unassigned
            @unknown default: self = .unassigned
            }
        }

        /// The categories a `\p{NAME}` property name stands for, or nil for a name not supported.
        static func named(_ name: String) -> [Category]? {
            switch name {
            case "L", "Letter": return [.uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter]
            case "Lu": return [.uppercaseLetter]
            case "Ll": return [.lowercaseLetter]
            case "Lt": return [.titlecaseLetter]
            case "Lm": return [.modifierLetter]
            case "Lo": return [.otherLetter]
            case "M", "Mark": return [.nonspacingMark, .spacingMark, .enclosingMark]
            case "Mn": return [.nonspacingMark]
            case "Mc": return [.spacingMark]
            case "Me": return [.enclosingMark]
            case "N", "Number": return [.decimalNumber, .letterNumber, .otherNumber]
            case "Nd": return [.decimalNumber]
            case "Nl": return [.letterNumber]
            case "No": return [.otherNumber]
            case "P", "Punctuation":
                return [.connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation, .finalPunctuation, .otherPunctuation]
            case "Pc": return [.connectorPunctuation]
            case "Pd": return [.dashPunctuation]
            case "Ps": return [.openPunctuation]
            case "Pe": return [.closePunctuation]
            case "Pi": return [.initialPunctuation]
            case "Pf": return [.finalPunctuation]
            case "Po": return [.otherPunctuation]
            case "S", "Symbol": return [.mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol]
            case "Sm": return [.mathSymbol]
            case "Sc": return [.currencySymbol]
            case "Sk": return [.modifierSymbol]
            case "So": return [.otherSymbol]
            case "Z", "Separator": return [.spaceSeparator, .lineSeparator, .paragraphSeparator]
            case "Zs": return [.spaceSeparator]
            case "Zl": return [.lineSeparator]
            case "Zp": return [.paragraphSeparator]
            case "C", "Other": return [.control, .format, .surrogate, .privateUse, .unassigned]
            case "Cc": return [.control]
            case "Cf": return [.format]
            case "Cs": return [.surrogate]
            case "Co": return [.privateUse]
            case "Cn": return [.unassigned]
            default: return nil
            }
        }
    }
}

/// A set of code points as a bitset over the whole code space (136 KB): one load per test.
struct ScalarSet: Sendable, Hashable {
    private(set) var words: [UInt64]

    /// All words folded into one before hashing (Hasher combining 17,408 words one by one costs
    /// several times the fold); sets that differ anywhere almost surely hash apart.
    func hash(into hasher: inout Hasher) {
        var folded: UInt64 = 0
        for (i, word) in words.enumerated() where word != 0 { folded = (folded ^ word ^ UInt64(i)) &* 0x9E37_79B9_7F4A_7C15 }
        hasher.combine(folded)
    }

    /// The scalars of each list of categories, built once per process: a pattern may name `\d`
    /// thousands of times, and each build reads the category of all 1.1 million code points.
    private static let categorySets = Mutex<[[UInt8]: ScalarSet]>([:])

    init() { words = [UInt64](repeating: 0, count: 0x110000 / 64) }

    @inline(__always)
    func contains(_ v: UInt32) -> Bool {
        v < 0x110000 && words[Int(v >> 6)] >> UInt64(v & 63) & 1 != 0
    }

    mutating func insert(_ v: UInt32) { words[Int(v >> 6)] |= 1 << UInt64(v & 63) }

    mutating func insert(_ range: ClosedRange<UInt32>) { for v in range { insert(v) } }

    mutating func insert(categories: [UnicodeTables.Category]) {
        let key = categories.map(\.rawValue)
        if let cached = Self.categorySets.withLock({ $0[key] }) { return formUnion(cached) }
        var set = ScalarSet()
        var wanted = [Bool](repeating: false, count: 256)
        for category in categories { wanted[Int(category.rawValue)] = true }
        let table = UnicodeTables.categories
        for v in 0..<table.count where wanted[Int(table[v])] { set.insert(UInt32(v)) }
        Self.categorySets.withLock { $0[key] = set }
        formUnion(set)
    }

    mutating func insertWhitespace() {
        for v in [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000] as [UInt32] { insert(v) }
        insert(0x2000...0x200A)
    }

    mutating func formUnion(_ other: ScalarSet) { for i in words.indices { words[i] |= other.words[i] } }

    mutating func invert() { for i in words.indices { words[i] = ~words[i] } }

    var isEmpty: Bool { words.allSatisfy { $0 == 0 } }
}

extension ScalarSet {
    mutating func remove(_ v: UInt32) { words[Int(v >> 6)] &= ~(1 << UInt64(v & 63)) }
}
