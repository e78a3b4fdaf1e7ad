import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Walks and removes the work directories of runs through descriptors (`openat`, `fstatat`,
/// `unlinkat`), never by re-resolving a path below the directory it starts from.
///
/// A walk by path checks an entry with `lstat` and then enters it by name: if the entry is swapped
/// for a symbolic link in between, the walk continues in whatever the link names. Here every
/// directory is opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY` and
/// checked to be the one `fstatat` described (same device and inode), so a link is never entered:
/// an entry that stopped being that directory is examined again (a link is then unlinked), up to a
/// few times before the walk gives up on it with an error.
enum DirectoryTree {
    /// A seam for the race test: called with a subdirectory's path between `fstatat` and `openat`.
    static let beforeOpeningSubdirectory = Mutex<(@Sendable (String) -> Void)?>(nil)

    /// Removes `url` and everything under it; symbolic links inside are unlinked, never followed.
    /// A missing `url` is not an error.
    static func remove(_ url: URL) throws {
        let parent = url.deletingLastPathComponent().path, name = url.lastPathComponent
        let parentFD = try openDirectory(parent)
        defer { close(parentFD) }
        try removeEntry(name, in: parentFD, path: url.path)
    }

    /// Removes every entry of the directory `url` except the names in `keep`, each as `remove` does,
    /// through one descriptor of `url` (opened without following a link in its place).
    static func removeEntries(of url: URL, except keep: Set<String>) throws {
        let fd = try openDirectory(url.path)
        defer { close(fd) }
        for name in try entries(of: fd, path: url.path) where !keep.contains(name) {
            try removeEntry(name, in: fd, path: url.path + "/" + name)
        }
    }

    /// Removes every symbolic link and special file under `url`, at any depth (the link itself,
    /// never what it names), calling `removed` with each one's path and whether it was a link.
    /// A subdirectory of another user is refused with `refuse(path)`.
    static func removeLinksAndSpecialFiles(under url: URL, refuse: (String) -> Error, removed: (String, Bool) -> Void) throws {
        let fd = try openDirectory(url.path)
        defer { close(fd) }
        try removeLinksAndSpecialFiles(in: fd, path: url.path, refuse: refuse, removed: removed)
    }

    private static func removeLinksAndSpecialFiles(in fd: Int32, path: String, refuse: (String) -> Error, removed: (String, Bool) -> Void) throws {
        for name in try entries(of: fd, path: path) {
            let child = path + "/" + name
            try examined(name, in: fd, path: child) { entry in
                switch entry.kind {
                case .regular:
                    return true
                case .directory:
                    guard entry.owner == geteuid() else { throw refuse(child) }
                    guard let childFD = try openDirectory(name, in: fd, path: child, expected: entry) else { return false }
                    defer { close(childFD) }
                    try removeLinksAndSpecialFiles(in: childFD, path: child, refuse: refuse, removed: removed)
                case .symbolicLink, .other:
                    try systemCall("unlink", path: child) { unlinkat(fd, name, 0) }
                    removed(child, entry.kind == .symbolicLink)
                }
                return true
            }
        }
    }

    private static func removeEntry(_ name: String, in parentFD: Int32, path: String) throws {
        try examined(name, in: parentFD, path: path) { entry in
            if entry.kind == .directory {
                guard let fd = try openDirectory(name, in: parentFD, path: path, expected: entry) else { return false }
                defer { close(fd) }
                for child in try entries(of: fd, path: path) { try removeEntry(child, in: fd, path: path + "/" + child) }
                try systemCall("rmdir", path: path) { unlinkat(parentFD, name, AT_REMOVEDIR) }
            } else {
                try systemCall("unlink", path: path) { unlinkat(parentFD, name, 0) }
            }
            return true
        }
    }

    /// Runs `act` on what `name` is now; `act` returns false when the entry changed under it (a
    /// directory swapped for a link or another directory), and it is examined again, at most
    /// `attempts` times. Nothing there (any more) is not an error.
    private static func examined(_ name: String, in fd: Int32, path: String, attempts: Int = 4, _ act: (FileEntry) throws -> Bool) throws {
        for _ in 0..<attempts {
            guard let entry = try entry(name, in: fd, path: path) else { return }
            if try act(entry) { return }
        }
        throw OutputSafetyError.keepsChanging(path: path, attempts: attempts)
    }

    /// The entry `name` of the directory `fd` itself (a link is described, not followed); nil when gone.
    private static func entry(_ name: String, in fd: Int32, path: String) throws -> FileEntry? {
        var info = Glibc.stat()
        do {
            try systemCall("fstatat", path: path) { fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) }
        } catch let error as SystemCallError where error.code == ENOENT {
            return nil
        }
        return FileEntry(info)
    }

    private static func openDirectory(_ path: String) throws -> Int32 {
        try systemCall("open", path: path) { open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
    }

    /// Opens the subdirectory `name` of `parentFD` if it is still the directory `expected` described;
    /// nil when it is not (a link or a file in its place fails with ENOTDIR — Linux reports a link
    /// under O_DIRECTORY | O_NOFOLLOW so; ELOOP is handled alike — another directory fails the inode
    /// check) or is gone.
    private static func openDirectory(_ name: String, in parentFD: Int32, path: String, expected: FileEntry) throws -> Int32? {
        if let hook = beforeOpeningSubdirectory.withLock({ $0 }) { hook(path) }
        let fd: Int32
        do {
            fd = try systemCall("open", path: path) { openat(parentFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        } catch let error as SystemCallError where [ELOOP, ENOTDIR, ENOENT].contains(error.code) {
            return nil
        }
        var info = Glibc.stat()
        guard fstat(fd, &info) == 0, UInt64(info.st_dev) == expected.device, UInt64(info.st_ino) == expected.inode else {
            close(fd)
            return nil
        }
        return fd
    }

    /// The names in the directory `fd` (not "." and ".."), sorted so a walk's notes come in one order.
    private static func entries(of fd: Int32, path: String) throws -> [String] {
        // fdopendir takes the descriptor over; a duplicate keeps `fd` open for the *at calls.
        let copy = try systemCall("dup", path: path) { dup(fd) }
        guard let stream = fdopendir(copy) else {
            let code = errno
            close(copy)
            throw SystemCallError(call: "opendir", path: path, code: code)
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [String] = []
        while true {
            errno = 0
            guard let record = readdir(stream) else {
                if errno != 0 { throw SystemCallError(call: "readdir", path: path, code: errno) }
                break
            }
            let name = withUnsafePointer(to: &record.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}
