import CSystemCalls
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which call, on which path, and errno (the message is made once, here).
public struct SystemCallError: LocalizedError, Equatable, Sendable {
    public let call: String
    public let path: String
    public let code: Int32

    public var errorDescription: String? { "\(path): \(call) failed: \(reason)" }

    /// What errno `code` means (strerror's text).
    public var reason: String { Self.reason(of: code) }

    /// What an errno value means: the one place errno becomes text.
    public static func reason(of code: Int32) -> String { String(cString: strerror(code)) }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR (as swift-nio's
/// `syscall` does), and throws a typed error naming the call and the path otherwise.
@discardableResult
public func systemCall<T: BinaryInteger>(_ call: String, path: String, _ body: () -> T) throws -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        if errno == EINTR { continue }
        throw SystemCallError(call: call, path: path, code: errno)
    }
}

/// What `lstat` says of a path: the entry itself, never what a symbolic link points to.
public struct FileEntry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable { case regular, directory, symbolicLink, other }
    public let kind: Kind
    public let owner: uid_t
    public let size: Int
    public let device: UInt64
    public let inode: UInt64
    /// Modification and status-change times in nanoseconds: a write to the file moves both, and
    /// the status-change time cannot be set back by a user (`touch -d` only sets the first).
    public let modified: Int64
    public let changed: Int64

    /// The entry at `path` without following a final symbolic link; nil when nothing is there.
    public static func lstat(_ path: String) -> FileEntry? {
        var info = Glibc.stat()
        guard Glibc.lstat(path, &info) == 0 else { return nil }
        return FileEntry(info)
    }

    /// The entry a path resolves to (symbolic links followed); nil when nothing is there.
    public static func following(_ path: String) -> FileEntry? {
        var info = Glibc.stat()
        guard statFollowingLinks(path, &info) == 0 else { return nil }
        return FileEntry(info)
    }

    init(_ info: Glibc.stat) {
        switch info.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symbolicLink
        default: kind = .other
        }
        owner = info.st_uid
        size = Int(info.st_size)
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        changed = Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec)
    }

    /// True for a real directory (not a link to one) owned by the user running this process: the
    /// only kind of work directory a command may adopt, rename or remove.
    public var isOwnDirectory: Bool { kind == .directory && owner == geteuid() }
}

/// stat(2); at file scope, where the name resolves to the function rather than the struct.
private func statFollowingLinks(_ path: String, _ info: inout Glibc.stat) -> Int32 { stat(path, &info) }

/// Path helpers that never guess: symbolic links are resolved by the kernel (`realpath`).
public enum FilePath {
    /// The absolute path with every symbolic link resolved; nil when it does not exist.
    public static func resolved(_ path: String) -> String? {
        guard let pointer = realpath(path, nil) else { return nil }
        defer { free(pointer) }
        return String(cString: pointer)
    }

    /// True when `path` is `ancestor` or lies below it (both absolute and resolved).
    public static func isWithin(_ path: String, _ ancestor: String) -> Bool {
        ancestor == "/" || path == ancestor || path.hasPrefix(ancestor + "/")
    }

    /// The contents of a small regular file. Opened with O_NONBLOCK so a FIFO or device planted under
    /// the name cannot hang the command, and refused unless it is a regular file (after links).
    public static func readRegularFile(_ path: String) throws -> Data {
        let fd = try openRegularFile(path).descriptor
        defer { close(fd) }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = try buffer.withUnsafeMutableBytes { raw in
                try systemCall("read", path: path) { read(fd, raw.baseAddress, raw.count) }
            }
            if count == 0 { return data }
            data.append(contentsOf: buffer[0..<count])
        }
    }

    /// Opens `path` read-only without blocking on a FIFO and checks it is a regular file.
    public static func openRegularFile(_ path: String) throws -> (descriptor: Int32, entry: FileEntry) {
        let fd = try systemCall("open", path: path) { open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        var info = stat()
        do {
            try systemCall("fstat", path: path) { fstat(fd, &info) }
        } catch {
            close(fd)
            throw error
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw SafeTensorsError.cannotOpen(file: path, reason: "not a regular file")
        }
        return (fd, FileEntry(info))
    }
}

extension FilePath {
    /// Copies the regular file at `source` to a new file `destination` (which must not exist; it is
    /// created with O_EXCL|O_NOFOLLOW), streaming in the kernel (`copy_file_range`) or by reads, so
    /// a large side file costs no memory. `allowedRoot`, when given, is checked against the file
    /// actually opened (`/proc/self/fd`), so a link swapped after an earlier check cannot redirect it.
    /// Returns the path the opened file resolves to.
    @discardableResult
    public static func copyRegularFile(from source: String, to destination: String, allowedRoot: String? = nil) throws -> String {
        let (input, entry) = try openRegularFile(source)
        defer { close(input) }
        let opened = resolved("/proc/self/fd/\(input)") ?? source
        if let allowedRoot, !isWithin(opened, allowedRoot) {
            throw SafeTensorsError.cannotOpen(file: source, reason: "links outside the input (to \(opened))")
        }
        let output = try systemCall("open", path: destination) { open(destination, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644) }
        defer { close(output) }
        let (done, unsupported) = try copyInKernel(from: input, at: nil, to: output, at: nil, count: entry.size, path: destination)
        if unsupported {
            try copyByReading(input, to: output, path: destination)
            return opened
        }
        guard done == entry.size else { throw SafeTensorsError.inputChanged(file: source, openedSize: entry.size, size: done) }
        try systemCall("fsync", path: destination) { fsync(output) }
        return opened
    }

    /// Copies up to `count` bytes in the kernel (`copy_file_range`, as `cp` does) until they are all
    /// copied, the input ends, or the kernel cannot copy between these two files (EXDEV, ENOSYS,
    /// EINVAL, EOPNOTSUPP: `unsupported`, and the caller reads and writes the rest). Nil offsets use
    /// and advance the files' own positions. Any other error throws, naming `path`.
    static func copyInKernel(from input: Int32, at inOffset: UnsafeMutablePointer<Int64>?, to output: Int32, at outOffset: UnsafeMutablePointer<Int64>?,
                             count: Int, path: String) throws -> (copied: Int, unsupported: Bool) {
        var done = 0
        while done < count {
            let n: Int
            do {
                n = try systemCall("copy_file_range", path: path) { dsconvert_copy_file_range(input, inOffset, output, outOffset, count - done) }
            } catch let error as SystemCallError where [EXDEV, ENOSYS, EINVAL, EOPNOTSUPP].contains(error.code) {
                return (done, true)
            }
            if n == 0 { break }
            done += n
        }
        return (done, false)
    }

    /// The fallback where the kernel cannot copy between the two files (from the current offsets on).
    private static func copyByReading(_ input: Int32, to output: Int32, path: String) throws {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = try buffer.withUnsafeMutableBytes { raw in try systemCall("read", path: path) { read(input, raw.baseAddress, raw.count) } }
            if count == 0 { break }
            try buffer.withUnsafeBytes { try writeAll(output, UnsafeRawBufferPointer(rebasing: $0[0..<count]), path: path) }
        }
        try systemCall("fsync", path: path) { fsync(output) }
    }

    /// Writes all of `bytes` at the descriptor's position, retrying short writes (and EINTR); a
    /// write that makes no progress is EIO.
    static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var written = 0
        while written < bytes.count {
            let n = try systemCall("write", path: path) { write(descriptor, bytes.baseAddress! + written, bytes.count - written) }
            guard n > 0 else { throw SystemCallError(call: "write", path: path, code: EIO) }
            written += n
        }
    }
}

/// Who a process is, beyond its PID: PIDs are reused, so a work directory records the PID with the
/// process's start time (`/proc/PID/stat` field 22, clock ticks since boot) and the boot id.
/// The host and PID namespace are recorded too: a record written elsewhere (another machine on a
/// shared disk, another container) cannot be checked from here, so its process counts as running.
public struct ProcessIdentity: Codable, Equatable, Sendable {
    public let pid: Int32
    public let startTime: UInt64
    public let bootID: String
    public var host: String = ProcessIdentity.host
    public var pidNamespace: UInt64 = ProcessIdentity.pidNamespace

    enum CodingKeys: String, CodingKey {
        case pid
        case startTime = "start_time"
        case bootID = "boot_id"
        case host
        case pidNamespace = "pid_namespace"
    }

    static let host: String = {
        var name = [CChar](repeating: 0, count: 256)
        return gethostname(&name, name.count - 1) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    }()

    /// The inode of `/proc/self/ns/pid`: equal for processes that see the same PIDs.
    static let pidNamespace: UInt64 = FileEntry.following("/proc/self/ns/pid")?.inode ?? 0

    /// This process.
    public static var current: ProcessIdentity? { of(getpid()) }

    /// The process now running as `pid`, if any.
    public static func of(_ pid: Int32) -> ProcessIdentity? {
        guard let stat = try? FilePath.readRegularFile("/proc/\(pid)/stat"),
              let start = startTime(stat: String(decoding: stat, as: UTF8.self)) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start, bootID: bootID)
    }

    /// Field 22 of `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold
    /// spaces or parentheses itself, so fields are counted after the last ')'.
    static func startTime(stat: String) -> UInt64? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    static let bootID: String = {
        let data = (try? FilePath.readRegularFile("/proc/sys/kernel/random/boot_id")) ?? Data()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    /// True when the process this identity recorded may still be running: the same process (same
    /// boot, same start time) runs, or the record comes from another host or PID namespace.
    public var isRunning: Bool {
        guard host == Self.host, pidNamespace == Self.pidNamespace else { return true }
        guard bootID == Self.bootID, let now = Self.of(pid) else { return false }
        return now.startTime == startTime
    }
}
