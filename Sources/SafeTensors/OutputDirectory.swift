import CMappingGuard
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An output directory that appears under its final name only when complete.
///
/// Work goes into a hidden sibling `.dsconvert-partial-NAME-PID` (same filesystem, so the final
/// `rename` is atomic); an interrupted run leaves at most that hidden directory, never something
/// that looks finished. What it will touch, and nothing else:
/// - the output itself, only when it does not exist, or with `force` when it is a previous
///   dsconvert output (it holds `marker`) or an empty directory — never a symbolic link;
/// - hidden work directories under the output's name that are real directories owned by this user
///   and whose recorded process (PID, start time, boot id) is gone: removed, or adopted by `resume`;
/// - the aside directory of a commit that was killed between its two renames: finished or rolled back.
public final class AtomicOutputDirectory {
    public let finalURL: URL
    public let temporaryURL: URL
    /// True when the work directory of an interrupted run was adopted (`--resume`).
    public private(set) var resumed = false
    private let force: Bool
    private let marker: String
    private var settled = false
    /// The dead run's directory name this run took over with `--resume`.
    private var adoptedFrom: URL?

    /// Prefix of the hidden work directories, so they can be recognized (and cleaned) later.
    public static let workPrefix = ".dsconvert-partial-"
    /// Prefix of a replaced output moved aside during a commit.
    public static let replacedPrefix = ".dsconvert-replaced-"
    /// The record of the process writing a work directory (removed when the commit starts).
    public static let ownerFileName = ".dsconvert-owner.json"

    /// - Parameters:
    ///   - inputs: what the command reads; the output may not be, contain or lie inside any of them.
    ///   - marker: the file that marks a directory as a previous output of this tool (the manifest).
    public init(final: URL, inputs: [URL], marker: String, force: Bool, resume: Bool = false) throws {
        finalURL = try OutputLocation.check(output: final, inputs: inputs)
        self.force = force
        self.marker = marker
        let parent = finalURL.deletingLastPathComponent()
        let name = finalURL.lastPathComponent
        temporaryURL = parent.appendingPathComponent("\(Self.workPrefix)\(name)-\(getpid())")
        try Self.finishInterruptedCommits(parent: parent, name: name)
        try checkReplaceable()
        do {
            try adoptOrRemoveStaleWork(parent: parent, name: name, resume: resume)
            if resumed {
                try Self.removeLinksAndSpecialFiles(under: temporaryURL)
            } else {
                // The scan above removed a stale directory of an earlier process with our PID; anything
                // still here is not ours to touch.
                if FileEntry.lstat(temporaryURL.path) != nil { throw OutputSafetyError.workDirectoryNotOwn(path: temporaryURL.path) }
                do {
                    try systemCall("mkdir", path: temporaryURL.path) { mkdir(temporaryURL.path, 0o755) }
                } catch let error as SystemCallError {
                    throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: error.reason)
                }
            }
            try writeOwnerRecord()
        } catch {
            // The run the user asked to continue is never removed because this one could not start
            // (a full disk for the owner record, a subdirectory it may not clear): it goes back under
            // its old name for the next --resume, instead of being discarded with this run.
            if let adoptedFrom {
                settled = true
                _ = rename(temporaryURL.path, adoptedFrom.path)
            }
            throw error
        }
        // A SIGBUS from an input truncated mid-run removes this directory before the process exits.
        dsconvert_guard_set_work_directory(temporaryURL.path)
    }

    deinit { if !settled { discard() } }

    /// Refuses an existing output unless `force` is given and it is ours to replace.
    private func checkReplaceable() throws {
        guard let entry = FileEntry.lstat(finalURL.path) else { return }
        guard force else { throw SafeTensorsError.outputExists(path: finalURL.path) }
        switch entry.kind {
        case .symbolicLink: throw OutputSafetyError.symbolicLink(output: finalURL.path)
        case .regular: throw OutputSafetyError.notReplaceable(output: finalURL.path, holds: "a file, not a directory")
        case .other: throw OutputSafetyError.notReplaceable(output: finalURL.path, holds: "a special file")
        case .directory:
            guard entry.owner == geteuid() else { throw OutputSafetyError.notReplaceable(output: finalURL.path, holds: "a directory of another user") }
            let names = try FileManager.default.contentsOfDirectory(atPath: finalURL.path).sorted()
            if names.isEmpty || FileEntry.lstat(finalURL.appendingPathComponent(marker).path)?.kind == .regular { return }
            let shown = names.prefix(3).map { "'\($0)'" }.joined(separator: ", ")
            throw OutputSafetyError.notReplaceable(output: finalURL.path, holds: "\(shown)\(names.count > 3 ? " and \(names.count - 3) more" : "") but no \(marker)")
        }
    }

    /// Work directories of runs that died: the first adopted with `resume`, the rest removed. One
    /// whose process still runs is another conversion into the same output; one that is a link or
    /// belongs to someone else is left alone (and said so).
    private func adoptOrRemoveStaleWork(parent: URL, name: String, resume: Bool) throws {
        let prefix = "\(Self.workPrefix)\(name)-"
        let fm = FileManager.default
        for entryName in ((try? fm.contentsOfDirectory(atPath: parent.path)) ?? []).sorted() where entryName.hasPrefix(prefix) {
            guard let pid = Self.pid(entryName.dropFirst(prefix.count)) else { continue }
            let stale = parent.appendingPathComponent(entryName)
            guard let entry = FileEntry.lstat(stale.path), entry.isOwnDirectory else {
                Diagnostics.note("note: leaving \(stale.path) alone: it is a symbolic link or belongs to another user")
                continue
            }
            if Self.isLive(workDirectory: stale, pid: pid) {
                throw OutputSafetyError.anotherConversion(output: finalURL.path, pid: pid)
            }
            if resume, !resumed {
                // The run the user asked to continue: never removed because it could not be moved.
                try systemCall("rename", path: stale.path) { rename(stale.path, temporaryURL.path) }
                // Checked again after the rename: the entry we moved must be the directory we vetted.
                guard let moved = FileEntry.lstat(temporaryURL.path), moved.isOwnDirectory, moved.inode == entry.inode, moved.device == entry.device else {
                    throw OutputSafetyError.workDirectoryNotOwn(path: stale.path)
                }
                adoptedFrom = stale
                resumed = true
            } else {
                try? DirectoryTree.remove(stale)
            }
        }
    }

    /// Removes every entry of `directory` (an adopted work directory or one below it) except `keep`:
    /// what an interrupted run left that this run will not write again, files and directories alike.
    /// `directory` is opened once without following a link in its place, and a link met inside is
    /// unlinked, never entered (links and special files were already removed on adoption).
    public static func removeEntries(of directory: URL, except keep: Set<String>) throws {
        try DirectoryTree.removeEntries(of: directory, except: keep)
    }

    /// Clears an adopted work directory of everything a run of ours never writes there: symbolic
    /// links and special files, at any depth, are removed (the link itself, never what it names), so
    /// a link planted where a shard, a GGUF file or a device directory will be written cannot send
    /// the run's bytes outside the directory. A subdirectory of another user is refused.
    static func removeLinksAndSpecialFiles(under directory: URL) throws {
        try DirectoryTree.removeLinksAndSpecialFiles(under: directory, refuse: { OutputSafetyError.workDirectoryNotOwn(path: $0) }) { path, isLink in
            Diagnostics.note("note: removed \(path) from the work directory being resumed: \(isLink ? "a symbolic link" : "a special file"), which no run writes")
        }
    }

    /// True when the process that wrote `workDirectory` may still run. The owner record tells it
    /// exactly on this host and PID namespace (and a record from another one counts as live: it
    /// cannot be checked from here). Without a record of `pid` (a run killed right after `mkdir`, or a
    /// resume killed after taking over a dead run's directory and before recording itself, which
    /// leaves the dead run's record under the new name) a live PID counts as live, except our own: we
    /// have not created ours yet.
    static func isLive(workDirectory: URL, pid: Int32) -> Bool {
        let record = workDirectory.appendingPathComponent(ownerFileName).path
        if let data = try? FilePath.readRegularFile(record), let owner = try? JSONDecoder().decode(ProcessIdentity.self, from: data) {
            if owner.pid == pid { return owner.isRunning }
            guard owner.host == ProcessIdentity.host, owner.pidNamespace == ProcessIdentity.pidNamespace else { return true }
        }
        return pid != getpid() && (kill(pid, 0) == 0 || errno == EPERM)
    }

    /// The PID at the end of a work or aside directory's name: ASCII digits only, above 0 (so the
    /// work directory of an output named `out-` is not read as PID -1234 of output `out`).
    static func pid(_ text: Substring) -> Int32? {
        guard !text.isEmpty, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let pid = Int32(text), pid > 0 else { return nil }
        return pid
    }

    private func writeOwnerRecord() throws {
        guard let identity = ProcessIdentity.current else { return }
        let url = temporaryURL.appendingPathComponent(Self.ownerFileName)
        try? FileManager.default.removeItem(at: url)
        try AtomicFile.write(try JSONEncoder().encode(identity), to: url)
    }

    /// A commit killed between its renames leaves `.dsconvert-replaced-NAME-PID` (the old output)
    /// and maybe the finished work directory of the same PID: rolled forward when the work directory
    /// had started committing (its owner record gone), back otherwise; the aside is then removed.
    static func finishInterruptedCommits(parent: URL, name: String) throws {
        let prefix = "\(replacedPrefix)\(name)-"
        let fm = FileManager.default
        let final = parent.appendingPathComponent(name)
        for entryName in ((try? fm.contentsOfDirectory(atPath: parent.path)) ?? []).sorted() where entryName.hasPrefix(prefix) {
            guard let pid = pid(entryName.dropFirst(prefix.count)), pid != getpid() else { continue }
            let aside = parent.appendingPathComponent(entryName)
            // The aside is an old output (no owner record), so its writer's PID is what tells.
            guard FileEntry.lstat(aside.path)?.isOwnDirectory == true, !isLive(workDirectory: aside, pid: pid) else { continue }
            if FileEntry.lstat(final.path) == nil {
                let work = parent.appendingPathComponent("\(workPrefix)\(name)-\(pid)")
                let committing = FileEntry.lstat(work.path)?.isOwnDirectory == true
                    && FileEntry.lstat(work.appendingPathComponent(ownerFileName).path) == nil
                let source = committing ? work : aside
                try systemCall("rename", path: source.path) { rename(source.path, final.path) }
                Diagnostics.note("note: \(final.path): finished a replacement that was interrupted (\(committing ? "new output kept" : "old output restored"))")
            }
            try? DirectoryTree.remove(aside)
        }
    }

    /// Moves the finished work into place (replacing an existing output only under `force`).
    public func commit() throws {
        let fm = FileManager.default
        try checkReplaceable()
        // From here the work directory is complete: without its owner record, a run that finds it
        // next to the aside of this commit knows to finish the commit rather than undo it.
        try? fm.removeItem(at: temporaryURL.appendingPathComponent(Self.ownerFileName))
        var old: URL?
        if FileEntry.lstat(finalURL.path) != nil {
            let aside = finalURL.deletingLastPathComponent().appendingPathComponent("\(Self.replacedPrefix)\(finalURL.lastPathComponent)-\(getpid())")
            if let entry = FileEntry.lstat(aside.path) {
                guard entry.isOwnDirectory else { throw OutputSafetyError.workDirectoryNotOwn(path: aside.path) }
                try DirectoryTree.remove(aside)
            }
            do {
                try systemCall("rename", path: finalURL.path) { rename(finalURL.path, aside.path) }
            } catch let error as SystemCallError {
                throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: "cannot move the old output aside: \(error.reason)")
            }
            old = aside
        }
        CommitHooks.afterMovingAside()
        do {
            try systemCall("rename", path: temporaryURL.path) { rename(temporaryURL.path, finalURL.path) }
        } catch let error as SystemCallError {
            if let old { rename(old.path, finalURL.path) }
            throw SafeTensorsError.cannotCreateOutput(path: finalURL.path, reason: error.reason)
        }
        settled = true
        dsconvert_guard_set_work_directory(nil)
        let parentFD = open(finalURL.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY)
        if parentFD >= 0 { fsync(parentFD); close(parentFD) }
        if let old { try? DirectoryTree.remove(old) }
    }

    /// Removes the unfinished work.
    public func discard() {
        settled = true
        // A failed run's writers may still be finishing shards in the background (BackgroundWrites).
        BackgroundWrites.waitForAll()
        dsconvert_guard_set_work_directory(nil)
        guard FileEntry.lstat(temporaryURL.path)?.isOwnDirectory == true else { return }
        try? DirectoryTree.remove(temporaryURL)
    }
}

/// A seam for the interruption tests: `DSCONVERT_TEST_PAUSE_IN_COMMIT=SECONDS` sleeps between the
/// two renames of a replacing commit, so a SIGKILL can land exactly there.
enum CommitHooks {
    static func afterMovingAside() {
        guard let text = ProcessInfo.processInfo.environment["DSCONVERT_TEST_PAUSE_IN_COMMIT"], let seconds = Double(text), seconds > 0 else { return }
        usleep(useconds_t(min(seconds, 60) * 1e6))
    }
}
