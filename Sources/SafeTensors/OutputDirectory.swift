import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An output directory that appears under its final name only when complete.
///
/// Work goes into a hidden sibling (same filesystem, so the final `rename` is atomic); an
/// interrupted run leaves at most that hidden directory, never something that looks finished.
public final class AtomicOutputDirectory: @unchecked Sendable {
    public let finalURL: URL
    public let temporaryURL: URL
    /// True when the work directory of an interrupted run was adopted (`--resume`).
    public private(set) var resumed = false
    private let force: Bool
    private var settled = false

    /// Prefix of the hidden work directories, so they can be recognized (and cleaned) later.
    public static let workPrefix = ".dsconvert-partial-"

    public init(final: URL, force: Bool, resume: Bool = false) throws {
        finalURL = final.standardizedFileURL
        self.force = force
        let fm = FileManager.default
        if fm.fileExists(atPath: finalURL.path), !force {
            throw SafeTensorsError.outputExists(path: finalURL.path)
        }
        let parent = finalURL.deletingLastPathComponent()
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: parent.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: "parent directory \(parent.path) does not exist")
        }
        temporaryURL = parent.appendingPathComponent("\(Self.workPrefix)\(finalURL.lastPathComponent)-\(getpid())")
        try? fm.removeItem(at: temporaryURL)
        // Work directories left by runs that died (SIGKILL, power loss): adopt one with --resume,
        // remove the rest. One whose process still runs is another conversion into the same output.
        let stalePrefix = "\(Self.workPrefix)\(finalURL.lastPathComponent)-"
        for name in ((try? fm.contentsOfDirectory(atPath: parent.path)) ?? []).sorted() where name.hasPrefix(stalePrefix) {
            guard let pid = Int32(name.dropFirst(stalePrefix.count)), pid != getpid() else { continue }
            if kill(pid, 0) == 0 || errno == EPERM {
                throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: "another conversion (pid \(pid)) is writing this output")
            }
            let stale = parent.appendingPathComponent(name)
            if resume, !resumed, rename(stale.path, temporaryURL.path) == 0 {
                resumed = true
            } else {
                try? fm.removeItem(at: stale)
            }
        }
        guard resumed || mkdir(temporaryURL.path, 0o755) == 0 else {
            throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: String(cString: strerror(errno)))
        }
    }

    deinit { if !settled { discard() } }

    /// Moves the finished work into place (replacing an existing output only under `force`).
    public func commit() throws {
        let fm = FileManager.default
        var old: URL?
        if fm.fileExists(atPath: finalURL.path) {
            guard force else { throw SafeTensorsError.outputExists(path: finalURL.path) }
            let aside = finalURL.deletingLastPathComponent().appendingPathComponent(".dsconvert-replaced-\(finalURL.lastPathComponent)-\(getpid())")
            try? fm.removeItem(at: aside)
            guard rename(finalURL.path, aside.path) == 0 else {
                throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: "cannot move the old output aside: \(String(cString: strerror(errno)))")
            }
            old = aside
        }
        guard rename(temporaryURL.path, finalURL.path) == 0 else {
            let reason = String(cString: strerror(errno))
            if let old { rename(old.path, finalURL.path) }
            throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: reason)
        }
        settled = true
        if let old { try? fm.removeItem(at: old) }
        let parentFD = open(finalURL.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY)
        if parentFD >= 0 { fsync(parentFD); close(parentFD) }
    }

    /// Removes the unfinished work.
    public func discard() {
        settled = true
        try? FileManager.default.removeItem(at: temporaryURL)
    }
}
