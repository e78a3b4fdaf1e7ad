import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Exit codes shared by every executable.
public enum ExitCode {
    public static let success: Int32 = 0
    /// The command ran and found a problem (invalid input, validation over threshold, I/O failure).
    public static let failure: Int32 = 1
    /// EX_USAGE from sysexits.h.
    public static let usage: Int32 = 64
}

/// Results on stdout, diagnostics and progress on stderr.
///
/// Writes go straight to the descriptors and their errors are ignored: a closed pipe
/// (`dsconvert … | head -1`) or a full disk behind a redirected stderr must not stop a conversion
/// half way (SIGPIPE is ignored for the same reason).
public final class Terminal: Sendable {
    public static let shared = Terminal()
    private let progressShown = Mutex(false)
    /// True when stderr is a terminal: progress redraws one line; otherwise it prints plain lines.
    public let stderrIsTTY = isatty(STDERR_FILENO) == 1

    public func out(_ text: String) {
        outExactly(Array((text + "\n").utf8))
    }


    /// Writes `bytes` to stdout as they are (no newline added): a result that is a file's content,
    /// such as decoded text. Failures are kept as `out`'s are.
    public func outExactly(_ bytes: [UInt8]) {
        progressShown.withLock { shown in
            clearProgress(&shown)
            let error = Self.write(STDOUT_FILENO, bytes)
            // A reader that left (EPIPE) wanted no more; any other failure loses results.
            if let error, error != EPIPE { lostResults.withLock { $0 = $0 ?? error } }
        }
    }

    /// The first error (other than EPIPE) that lost part of the results on stdout, e.g. a full disk
    /// behind `inspect --json > report.json`: the command then fails instead of exiting 0.
    public var resultsLost: Int32? { lostResults.withLock { $0 } }
    private let lostResults = Mutex<Int32?>(nil)

    /// A one-line diagnostic: embedded newlines are folded and control characters escaped, so each
    /// error stays one line and a name read from a file cannot drive the terminal.
    public func error(_ prefix: String, _ message: String) {
        let line = Self.escaped(message.split(whereSeparator: \.isNewline).joined(separator: " "))
        progressShown.withLock { shown in
            clearProgress(&shown)
            Self.write(STDERR_FILENO, "\(prefix): error: \(line)\n")
        }
    }

    public func note(_ text: String) {
        progressShown.withLock { shown in
            clearProgress(&shown)
            Self.write(STDERR_FILENO, Self.escaped(text) + "\n")
        }
    }

    /// Progress of long work: redrawn in place on a TTY; otherwise a plain line, at most one a second
    /// (a log of a V3 export would otherwise hold a line per tensor), the first one at once.
    public func progress(_ text: String) {
        let line = Self.escaped(text)
        progressShown.withLock { shown in
            if stderrIsTTY {
                Self.write(STDERR_FILENO, "\r\u{1B}[2K\(line)")
                shown = true
            } else {
                let now = DispatchTime.now().uptimeNanoseconds
                let due = lastPlainProgress.withLock { last in
                    guard last.map({ now - $0 >= 1_000_000_000 }) ?? true else { return false }
                    last = now
                    return true
                }
                if due { Self.write(STDERR_FILENO, line + "\n") }
            }
        }
    }

    /// When the last plain progress line was written (uptime nanoseconds), off a TTY.
    private let lastPlainProgress = Mutex<UInt64?>(nil)

    public func endProgress() {
        progressShown.withLock { clearProgress(&$0) }
    }

    private func clearProgress(_ shown: inout Bool) {
        if shown {
            Self.write(STDERR_FILENO, "\r\u{1B}[2K")
            shown = false
        }
    }

    /// Writes all of `text`, retrying short writes and EINTR; any other error drops the rest and is returned.
    @discardableResult
    static func write(_ descriptor: Int32, _ text: String) -> Int32? {
        write(descriptor, Array(text.utf8))
    }

    @discardableResult
    static func write(_ descriptor: Int32, _ all: [UInt8]) -> Int32? {
        var bytes = all[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return written < 0 ? errno : EIO }
            bytes = bytes.dropFirst(written)
        }
        return nil
    }

    /// Control characters (ANSI escapes, NUL, DEL, C1, line separators) as `\u{…}`: tensor and
    /// file names come from files a user did not write.
    public static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0..<0x20, 0x7F..<0xA0, 0x2028, 0x2029:
                out += "\\u{\(String(scalar.value, radix: 16))}"
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// A command an executable can run: its spec and its body.
public protocol Command: Sendable {
    static var spec: CommandSpec { get }
    /// Runs with parsed arguments; returns the exit code. Thrown errors become one-line diagnostics.
    static func run(_ arguments: ParsedArguments, terminal: Terminal) throws -> Int32
}

/// Entry points for `dsconvert <command>` and the single-command `dsconvert-<stage>` executables.
public enum CommandLineTool {
    /// Runs one command as a whole program (`dsconvert-absorb …`).
    public static func runSingle(_ command: Command.Type, invocation: String, arguments: [String]) -> Int32 {
        execute(command, invocation: invocation, arguments: arguments)
    }

    /// Runs `tool <command> …`, dispatching on the first argument.
    public static func runFront(tool: String, abstract: String, commands: [Command.Type], arguments: [String]) -> Int32 {
        let terminal = Terminal.shared
        func overview() -> String {
            var lines = ["OVERVIEW: \(abstract)", "", "USAGE: \(tool) <command> [options]", "", "COMMANDS:"]
            for c in commands {
                let name = c.spec.name
                lines.append("  " + name + String(repeating: " ", count: max(2, 14 - name.count)) + c.spec.abstract)
            }
            lines += ["", "See '\(tool) <command> --help' for a command's options."]
            return lines.joined(separator: "\n") + "\n"
        }
        guard let first = arguments.first else {
            Terminal.write(STDERR_FILENO, overview())
            return ExitCode.usage
        }
        if first == "-h" || first == "--help" || first == "help" {
            terminal.out(overview().trimmingCharacters(in: .newlines))
            return ExitCode.success
        }
        guard let command = commands.first(where: { $0.spec.name == first }) else {
            terminal.error(tool, "unknown command '\(first)' (commands: \(commands.map { $0.spec.name }.joined(separator: ", ")))")
            return ExitCode.usage
        }
        return execute(command, invocation: "\(tool) \(first)", arguments: Array(arguments.dropFirst()))
    }

    private static func execute(_ command: Command.Type, invocation: String, arguments: [String]) -> Int32 {
        // A file-size limit (RLIMIT_FSIZE) must surface as a write error naming the file, not kill the run.
        signal(SIGXFSZ, SIG_IGN)
        // A reader that goes away (`| head -1`) must not kill a conversion half way: writes to it fail instead.
        signal(SIGPIPE, SIG_IGN)
        let terminal = Terminal.shared
        do {
            switch try ArgumentParser.parse(arguments, spec: command.spec) {
            case .help:
                terminal.out(command.spec.helpText(invocation: invocation).trimmingCharacters(in: .newlines))
                return ExitCode.success
            case let .arguments(parsed):
                let status = try command.run(parsed, terminal: terminal)
                if status == ExitCode.success, let lost = terminal.resultsLost {
                    terminal.error(invocation, "standard output: results could not be written (\(String(cString: strerror(lost))))")
                    return ExitCode.failure
                }
                return status
            }
        } catch let error as UsageError {
            terminal.error(invocation, "\(error.message) (see '\(invocation) --help')")
            return ExitCode.usage
        } catch {
            terminal.error(invocation, (error as? LocalizedError)?.errorDescription ?? "\(error)")
            return ExitCode.failure
        }
    }
}
