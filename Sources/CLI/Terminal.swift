import Foundation
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
public final class Terminal: @unchecked Sendable {
    public static let shared = Terminal()
    private let lock = NSLock()
    private var progressShown = false
    /// True when stderr is a terminal: progress redraws one line; otherwise it prints plain lines.
    public let stderrIsTTY = isatty(STDERR_FILENO) == 1

    public func out(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    /// A one-line diagnostic: embedded newlines are folded so each error stays one line.
    public func error(_ prefix: String, _ message: String) {
        let line = message.split(whereSeparator: \.isNewline).joined(separator: " ")
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
        FileHandle.standardError.write(Data("\(prefix): error: \(line)\n".utf8))
    }

    public func note(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Progress of long work: redrawn in place on a TTY, a plain line otherwise.
    public func progress(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        if stderrIsTTY {
            FileHandle.standardError.write(Data("\r\u{1B}[2K\(text)".utf8))
            progressShown = true
        } else {
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
    }

    public func endProgress() {
        lock.lock(); defer { lock.unlock() }
        clearProgressLocked()
    }

    private func clearProgressLocked() {
        if progressShown {
            FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8))
            progressShown = false
        }
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
            FileHandle.standardError.write(Data(overview().utf8))
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
        let terminal = Terminal.shared
        do {
            switch try ArgumentParser.parse(arguments, spec: command.spec) {
            case .help:
                terminal.out(command.spec.helpText(invocation: invocation).trimmingCharacters(in: .newlines))
                return ExitCode.success
            case let .arguments(parsed):
                return try command.run(parsed, terminal: terminal)
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
