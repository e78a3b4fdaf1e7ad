/// One option of a command: `--name VALUE` (or `--name=VALUE`), or a flag when `valueName` is nil.
public struct OptionSpec: Sendable {
    /// What an option's value is, checked when the arguments are parsed.
    public enum ValueKind: Sendable, Equatable {
        /// A word, number or pattern.
        case text
        /// A file or directory; "" and "-" are usage errors ("-" would otherwise become a file named
        /// "-" where a user of Unix tools expects standard output).
        case path
        /// A file to write, or "-" for standard output (`ParsedArguments.output`).
        case pathOrStandardOutput
        /// A file to read, or "-" for standard input (`ParsedArguments.input`).
        case pathOrStandardInput
    }

    public let name: String
    public let short: Character?
    public let valueName: String?
    public let valueKind: ValueKind
    public let help: String
    public let repeatable: Bool

    /// A flag (no `value`) or an option whose value is text.
    public init(_ name: String, short: Character? = nil, value valueName: String? = nil, repeatable: Bool = false, help: String) {
        self.init(name, short: short, valueName: valueName, kind: .text, repeatable: repeatable, help: help)
    }

    /// An option whose value is a path: `standardOutput` (an output) or `standardInput` (an input)
    /// lets "-" mean that stream.
    public init(_ name: String, path valueName: String, standardOutput: Bool = false, standardInput: Bool = false, repeatable: Bool = false,
                help: String) {
        precondition(!(standardOutput && standardInput), "an option is an input or an output")
        let kind: ValueKind = standardOutput ? .pathOrStandardOutput : standardInput ? .pathOrStandardInput : .path
        self.init(name, short: nil, valueName: valueName, kind: kind, repeatable: repeatable, help: help)
    }

    private init(_ name: String, short: Character?, valueName: String?, kind: ValueKind, repeatable: Bool, help: String) {
        self.name = name
        self.short = short
        self.valueName = valueName
        self.valueKind = kind
        self.repeatable = repeatable
        self.help = help
    }
}

/// Where an output option sends its result.
public enum OutputTarget: Sendable, Equatable {
    case standardOutput
    case file(String)
}

/// Where an input option's bytes come from.
public enum InputSource: Sendable, Equatable {
    case standardInput
    case file(String)
}

/// A positional argument: a path, refused when "" or "-" as `.path` options' values are.
public struct PositionalSpec: Sendable {
    public let name: String
    public let help: String
    public let optional: Bool

    public init(_ name: String, optional: Bool = false, help: String) {
        self.name = name
        self.optional = optional
        self.help = help
    }
}

/// What a command accepts, and the text of its `--help`.
public struct CommandSpec: Sendable {
    public let name: String
    public let abstract: String
    public let discussion: String
    public let positionals: [PositionalSpec]
    public let options: [OptionSpec]

    public init(name: String, abstract: String, discussion: String = "", positionals: [PositionalSpec] = [], options: [OptionSpec]) {
        self.name = name
        self.abstract = abstract
        self.discussion = discussion
        self.positionals = positionals
        self.options = options
    }

    /// `--help` text for the command invoked as `invocation`.
    public func helpText(invocation: String) -> String {
        var usage = "USAGE: \(invocation)"
        for p in positionals { usage += p.optional ? " [\(p.name)]" : " \(p.name)" }
        if !options.isEmpty { usage += " [options]" }
        var lines = ["OVERVIEW: \(abstract)", "", usage]
        if !discussion.isEmpty { lines += ["", discussion] }
        if !positionals.isEmpty {
            lines += ["", "ARGUMENTS:"]
            for p in positionals { lines.append("  " + pad(p.name, 28) + p.help) }
        }
        lines += ["", "OPTIONS:"]
        for o in options + [OptionSpec("help", short: "h", help: "Show help information.")] {
            var left = o.short.map { "-\($0), " } ?? ""
            left += "--\(o.name)"
            if let v = o.valueName { left += " \(v)" }
            lines.append("  " + pad(left, 28) + o.help)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + "  " : s + String(repeating: " ", count: width - s.count)
    }
}

/// A usage mistake: reported with the command's usage line and exit code 64 (EX_USAGE).
public struct UsageError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Parsed command-line arguments.
public struct ParsedArguments: Sendable {
    public var positionals: [String] = []
    public var flags: Set<String> = []
    public var values: [String: [String]] = [:]

    public func flag(_ name: String) -> Bool { flags.contains(name) }
    public func value(_ name: String) -> String? { values[name]?.last }
    public func all(_ name: String) -> [String] { values[name] ?? [] }

    /// The value of a required option. An empty value is refused: `--output ""` would otherwise
    /// name the current directory.
    public func required(_ name: String) throws -> String {
        guard let v = value(name) else { throw UsageError("missing required option --\(name)") }
        guard !v.isEmpty else { throw UsageError("--\(name) must not be empty") }
        return v
    }

    /// The value of an optional path option; empty is refused as for `required`.
    public func path(_ name: String) throws -> String? {
        guard let v = value(name) else { return nil }
        guard !v.isEmpty else { throw UsageError("--\(name) must not be empty") }
        return v
    }

    /// An output option declared with `standardOutput: true`: "-" is standard output.
    public func output(_ name: String) throws -> OutputTarget? {
        guard let v = try path(name) else { return nil }
        return v == "-" ? .standardOutput : .file(v)
    }

    /// An input option declared with `standardInput: true`: "-" is standard input.
    public func input(_ name: String) throws -> InputSource? {
        guard let v = try path(name) else { return nil }
        return v == "-" ? .standardInput : .file(v)
    }

    /// An integer option within `range`.
    public func integer(_ name: String, default fallback: Int, in range: ClosedRange<Int> = Int.min...Int.max) throws -> Int {
        guard let text = value(name) else { return fallback }
        guard let v = Int(text), range.contains(v) else {
            throw UsageError("--\(name) takes a whole number in \(range.lowerBound)...\(range.upperBound), got '\(text)'")
        }
        return v
    }

    /// A choice among the cases of `T`, spelled as their raw values: the word is decoded here,
    /// once, and the command switches over the case. `among` narrows the cases offered.
    public func choice<T: CaseIterable & RawRepresentable>(_ name: String, default fallback: T, among choices: [T] = Array(T.allCases)) throws -> T
    where T.RawValue == String {
        guard let text = value(name) else { return fallback }
        guard let picked = choices.first(where: { $0.rawValue == text }) else {
            throw UsageError("--\(name) takes one of \(choices.map(\.rawValue).joined(separator: ", ")), got '\(text)'")
        }
        return picked
    }
}

public enum ParseResult: Sendable {
    case arguments(ParsedArguments)
    case help
}

public enum ArgumentParser {
    /// The argument after option `o`, its value; one that is itself an option is a value left out
    /// (found by an audit: `forward --output --force` wrote a file named --force), as
    /// swift-argument-parser reads it. --name=VALUE or ./--x gives a value that starts with dashes.
    private static func nextValue(of o: OptionSpec, _ arguments: [String], at index: inout Int, spec: CommandSpec) throws -> String {
        guard index < arguments.count else { throw UsageError("--\(o.name) needs a value \(o.valueName!)") }
        let value = arguments[index]
        let shortOption = value.count == 2 && value.hasPrefix("-") && (value == "-h" || spec.options.contains { $0.short == value.last })
        if value.hasPrefix("--") || shortOption {
            throw UsageError("--\(o.name) needs a value \(o.valueName!) before '\(value)' (--\(o.name)=\(value) if that is the value)")
        }
        index += 1
        return value
    }

    /// Parses `arguments` (without the program name) against `spec`.
    public static func parse(_ arguments: [String], spec: CommandSpec) throws -> ParseResult {
        var result = ParsedArguments()
        var index = 0
        var onlyPositionals = false
        func option(named name: String) -> OptionSpec? { spec.options.first { $0.name == name } }
        while index < arguments.count {
            let arg = arguments[index]
            index += 1
            if onlyPositionals || arg == "-" || !arg.hasPrefix("-") {
                result.positionals.append(arg)
                continue
            }
            if arg == "--" { onlyPositionals = true; continue }
            if arg == "-h" || arg == "--help" { return .help }
            var name: String
            var inlineValue: String?
            if arg.hasPrefix("--") {
                name = String(arg.dropFirst(2))
                if let eq = name.firstIndex(of: "=") {
                    inlineValue = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
            } else {
                guard arg.count == 2, let o = spec.options.first(where: { $0.short == arg.last }) else {
                    throw UsageError("unknown option '\(arg)'")
                }
                name = o.name
            }
            guard let o = option(named: name) else { throw UsageError("unknown option '--\(name)'") }
            if o.valueName == nil {
                if inlineValue != nil { throw UsageError("--\(name) takes no value") }
                result.flags.insert(name)
                continue
            }
            let value = try inlineValue ?? nextValue(of: o, arguments, at: &index, spec: spec)
            try check(value, of: o)
            if !o.repeatable, result.values[name] != nil { throw UsageError("--\(name) given more than once") }
            result.values[name, default: []].append(value)
        }
        let required = spec.positionals.filter { !$0.optional }.count
        if result.positionals.count < required {
            throw UsageError("missing argument \(spec.positionals[result.positionals.count].name)")
        }
        if result.positionals.count > spec.positionals.count {
            throw UsageError("unexpected argument '\(result.positionals[spec.positionals.count])'")
        }
        // Positionals name files, as path options do: "" would be the current directory and "-" is
        // read from nowhere (found by an audit: `inspect ''` inspected the working directory).
        for (value, positional) in zip(result.positionals, spec.positionals) where value.isEmpty || value == "-" {
            throw UsageError("\(positional.name) takes a path, not '\(value)'" + (value == "-" ? " (./- names a file called '-')" : ""))
        }
        return .arguments(result)
    }

    /// Refuses a path option's value that names no file of the user's.
    private static func check(_ value: String, of option: OptionSpec) throws {
        switch option.valueKind {
        case .text:
            return
        case .path, .pathOrStandardOutput, .pathOrStandardInput:
            // "" would name the current directory.
            guard !value.isEmpty else { throw UsageError("--\(option.name) must not be empty") }
            if option.valueKind == .path, value == "-" {
                throw UsageError("--\(option.name) takes a path, not '-' (standard input or output is not read or written here; ./- names a file called '-')")
            }
        }
    }
}
