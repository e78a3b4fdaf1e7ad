import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why a command refuses to write where it was told to. One case per rule.
public enum OutputSafetyError: LocalizedError, Equatable, Sendable {
    case outputInsideInput(output: String, input: String)
    case outputContainsInput(output: String, input: String)
    case outputContainsWorkingDirectory(output: String, workingDirectory: String)
    case parentMissing(output: String, parent: String)
    case symbolicLink(output: String)
    case notReplaceable(output: String, holds: String)
    /// A result file's path (forward's outputs, validate's --json) that holds something other than a file.
    case resultNotAFile(output: String, holds: String)
    case workDirectoryNotOwn(path: String)
    case anotherConversion(output: String, pid: Int32)
    case keepsChanging(path: String, attempts: Int)

    public var errorDescription: String? {
        switch self {
        case let .outputInsideInput(output, input):
            return "\(output): output must not be the input directory or inside it (\(input))"
        case let .outputContainsInput(output, input):
            return "\(output): output must not contain the input (\(input)): replacing it would delete the input"
        case let .outputContainsWorkingDirectory(output, cwd):
            return "\(output): output must not be the current directory or contain it (\(cwd))"
        case let .parentMissing(output, parent):
            return "\(output): cannot create output: parent directory \(parent) does not exist"
        case let .symbolicLink(output):
            return "\(output): output is a symbolic link; name the real path"
        case let .notReplaceable(output, holds):
            return "\(output): --force replaces only a previous dsconvert output (with dsconvert.json) or an empty directory, and this holds \(holds)"
        case let .resultNotAFile(output, holds):
            return "\(output): the output is a file, and this is \(holds) (--force replaces only a file)"
        case let .workDirectoryNotOwn(path):
            return "\(path): a work directory under this name is a symbolic link or belongs to another user; remove it yourself if it is safe"
        case let .anotherConversion(output, pid):
            return "\(output): cannot create output: another conversion (pid \(pid)) is writing this output"
        case let .keepsChanging(path, attempts):
            return "\(path): changed under a work directory's removal \(attempts) times in a row (something else is writing there); left as it is"
        }
    }
}

/// The rules of where a command may write, checked before anything is written.
///
/// Paths are compared after the kernel resolves symbolic links (`realpath`), so `out/../in` or a
/// link to the input is seen for what it is. The output's last component is kept as given, so a
/// symbolic link there is refused rather than followed.
public enum OutputLocation {
    /// The output's absolute path: its parent resolved, its last component as given.
    public static func resolve(_ output: URL) throws -> URL {
        let standardized = output.standardizedFileURL
        let parent = standardized.deletingLastPathComponent().path
        guard let resolvedParent = FilePath.resolved(parent), FileEntry.following(resolvedParent)?.kind == .directory else {
            throw OutputSafetyError.parentMissing(output: standardized.path, parent: parent)
        }
        let name = standardized.lastPathComponent
        if standardized.path == "/" { return URL(fileURLWithPath: "/") }
        return URL(fileURLWithPath: resolvedParent).appendingPathComponent(name)
    }

    /// Resolves `output` and refuses it when it is inside an input, contains one, or is (or
    /// contains) the working directory: replacing such a path would destroy what it contains.
    public static func check(output: URL, inputs: [URL]) throws -> URL {
        let resolved = try resolve(output)
        let path = resolved.path
        for input in inputs {
            let inputPath = FilePath.resolved(input.path) ?? input.standardizedFileURL.path
            if FilePath.isWithin(path, inputPath) {
                throw OutputSafetyError.outputInsideInput(output: path, input: inputPath)
            }
            if FilePath.isWithin(inputPath, path) {
                throw OutputSafetyError.outputContainsInput(output: path, input: inputPath)
            }
        }
        if let cwd = FilePath.resolved(FileManager.default.currentDirectoryPath), FilePath.isWithin(cwd, path) {
            throw OutputSafetyError.outputContainsWorkingDirectory(output: path, workingDirectory: cwd)
        }
        return resolved
    }

    /// Checks a single result file (`forward --output`, `validate --json`): outside every input,
    /// and an existing entry is replaced only with `force` and only when it is a regular file.
    public static func checkResultFile(_ output: URL, inputs: [URL], force: Bool) throws -> URL {
        let resolved = try check(output: output, inputs: inputs)
        guard let entry = FileEntry.lstat(resolved.path) else { return resolved }
        // Only a file can be replaced, so only a file's refusal mentions --force (found by an audit:
        // a directory was told to pass --force, then that --force replaces "an empty directory").
        switch entry.kind {
        case .regular:
            guard force else { throw SafeTensorsError.outputExists(path: resolved.path) }
            return resolved
        case .symbolicLink: throw OutputSafetyError.symbolicLink(output: resolved.path)
        case .directory: throw OutputSafetyError.resultNotAFile(output: resolved.path, holds: "a directory")
        case .other: throw OutputSafetyError.resultNotAFile(output: resolved.path, holds: "a special file")
        }
    }
}

/// Notes a library has to tell the user (a work directory left alone, a resume that starts over).
/// Commands install their terminal; the default writes the line to stderr.
public enum Diagnostics {
    private static let sink = Mutex<@Sendable (String) -> Void>({ line in
        let text = line + "\n"
        _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    })

    public static func install(_ note: @escaping @Sendable (String) -> Void) { sink.withLock { $0 = note } }

    public static func note(_ text: String) {
        let note = sink.withLock { $0 }
        note(text)
    }
}
